/* Candidate cut layers and their pooled features, shared by graft probe and
 * the --auto recipe. */
#ifndef GRAFT_CLI_PROBE_H
#define GRAFT_CLI_PROBE_H

#include "graft.h"
#include "model/model.h"

enum { MAX_CANDIDATES = 64 };

typedef struct candidate {
    int node;
    const char *layer;
    int64_t dim;
    float *features;    /* (n, dim) */
    double logme, accuracy, l2, seconds;
    int has_accuracy;
} candidate;

/* "auto" or a comma list; returns the count, or -1 after printing an error. */
int probe_candidates(const graft_model *m, const char *layers, candidate *out);
/* Globally pooled outputs of the candidates over the whole dataset, one pass. */
graft_status probe_extract(graft_model *m, graft_dataset *ds, candidate *c, int nc,
                           int32_t *labels);

#endif
