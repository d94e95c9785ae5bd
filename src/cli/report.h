/* The report a person reads after `graft train`: one self-contained report.html
 * with the run's settings, learning curves, confusion matrix, per-class metrics
 * and the validation images the model got most confidently wrong.
 *
 * The page has no scripts and loads nothing: the stylesheet is inline, the charts
 * are inline SVG and the thumbnails are data: PNG URIs, so it can be mailed,
 * archived or opened offline as it is. */
#ifndef GRAFT_CLI_REPORT_H
#define GRAFT_CLI_REPORT_H

#include <stdint.h>

#include "graft.h"

/* Thumbnails larger than this on either side are box-filtered down to fit. */
#define REPORT_THUMB_MAX 160

typedef struct report_example {       /* a confidently wrong validation image */
    const float *rgb;                 /* (height, width, 3), values 0..255 */
    int64_t height, width;
    int32_t true_class, predicted_class;
    float probability;                /* of the predicted class */
    const char *name;                 /* file name or "file#index"; may be NULL */
} report_example;

typedef struct report_input {
    const char *title;                /* e.g. "graft train flowers -> out/" */
    int64_t n_classes;
    const char *const *class_names;   /* NULL (or a NULL entry): the class index is shown */
    const graft_epoch_metrics *history; int n_epochs;   /* both phases, in order */
    int phase2_first_epoch;           /* index into history where phase 2 begins; -1 if none */
    const int64_t *confusion;         /* (n_classes, n_classes): row = true, column = predicted */
    const report_example *wrong; int n_wrong;   /* already sorted, most confident first */
    /* settings, timings, accuracies shown at the top */
    const char *const *summary_keys; const char *const *summary_values; int n_summary;
} report_input;

/* Per-class precision, recall, F1 and support from a confusion matrix (0 when undefined).
 * precision[c] = confusion[c][c] / column c's sum, recall[c] = confusion[c][c] / row c's
 * sum, f1 their harmonic mean, support[c] = row c's sum. A class never predicted has
 * precision 0, a class absent from the data recall 0, and either way F1 is 0 when
 * precision + recall is 0 (scikit-learn's zero_division=0). */
void report_class_metrics(const int64_t *confusion, int64_t n_classes, double *precision,
                          double *recall, double *f1, int64_t *support);

/* Self-contained HTML (inline CSS and SVG, thumbnails as data: PNG URIs, no scripts
 * needed, no network), written to path.tmp then renamed. Learning curves take x as
 * the position in history (1-based, across both phases); NaN or infinite values are
 * skipped. Class indices of the examples must be within n_classes. */
graft_status report_write_html(const report_input *in, const char *path);

#endif
