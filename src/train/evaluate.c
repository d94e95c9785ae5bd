/* Predicting a whole dataset: accuracy, top-5, loss, confusion matrix, and each
 * example's prediction for reports. */
#include <math.h>
#include <string.h>

#include "core/alloc.h"
#include "core/error.h"
#include "model/model.h"

static void mirror(float *x, int64_t n, int64_t h, int64_t w)
{
    for (int64_t i = 0; i < n * h; i++) {
        float *row = x + i * w * 3;
        for (int64_t a = 0, b = w - 1; a < b; a++, b--)
            for (int c = 0; c < 3; c++) {
                float t = row[a * 3 + c];
                row[a * 3 + c] = row[b * 3 + c];
                row[b * 3 + c] = t;
            }
    }
}

static void score_row(graft_evaluation *e, int64_t i, const float *p, int32_t label, double *loss,
                      int64_t *top5)
{
    int32_t best = 0;
    int64_t higher = 0;
    for (int64_t c = 1; c < e->classes; c++)
        best = p[c] > p[best] ? (int32_t)c : best;
    for (int64_t c = 0; c < e->classes; c++)
        higher += p[c] > p[label];
    e->predicted[i] = best;
    e->probability[i] = p[best];
    e->true_probability[i] = p[label];
    e->confusion[(int64_t)label * e->classes + best]++;
    *loss -= log(fmax((double)p[label], 1e-12));
    *top5 += higher < 5;
}

static graft_status alloc_evaluation(graft_evaluation *e, int64_t count, int64_t classes)
{
    memset(e, 0, sizeof *e);
    e->count = count;
    e->classes = classes;
    e->predicted = graft__calloc((size_t)count, sizeof(int32_t));
    e->probability = graft__calloc((size_t)count, sizeof(float));
    e->true_probability = graft__calloc((size_t)count, sizeof(float));
    e->confusion = graft__calloc((size_t)(classes * classes), sizeof(int64_t));
    if (!e->predicted || !e->probability || !e->true_probability || !e->confusion) {
        graft_evaluation_free(e);
        return graft__fail(GRAFT_E_NOMEM, "out of memory for an evaluation");
    }
    return GRAFT_OK;
}

graft_status graft_evaluate(graft_model *m, graft_dataset *ds, int64_t batch, int tta,
                            graft_evaluation *e)
{
    int64_t h, w, ch, count = graft_dataset_count(ds), classes = graft_model_output_size(m);
    graft_status rc = graft_model_input_size(m, &h, &w, &ch);
    if (rc)
        return rc;
    if (graft_dataset_class_count(ds) > classes)
        return graft__fail(GRAFT_E_SHAPE, "the dataset has %lld classes, the model %lld",
                           (long long)graft_dataset_class_count(ds), (long long)classes);
    if (batch < 1 || batch > 4096)
        batch = 32;
    if ((rc = alloc_evaluation(e, count, classes)))
        return rc;
    float *x = graft__malloc_aligned(sizeof(float) * (size_t)(batch * h * w * ch));
    float *p = graft__malloc_aligned(sizeof(float) * (size_t)(batch * classes));
    float *q = graft__malloc_aligned(sizeof(float) * (size_t)(batch * classes));
    int32_t *labels = graft__calloc((size_t)batch, sizeof(int32_t));
    int64_t idx[4096], top5 = 0, correct = 0;
    double loss = 0.0;
    if (!x || !p || !q || !labels)
        rc = graft__fail(GRAFT_E_NOMEM, "out of memory");
    for (int64_t first = 0; !rc && first < count; first += batch) {
        int64_t n = count - first < batch ? count - first : batch;
        for (int64_t i = 0; i < n; i++)
            idx[i] = first + i;
        rc = graft_dataset_load(ds, idx, n, NULL, 0, x, labels);
        if (!rc)
            rc = graft_model_forward(m, x, n, p);
        if (!rc && tta) {
            mirror(x, n, h, w);
            rc = graft_model_forward(m, x, n, q);
            for (int64_t i = 0; !rc && i < n * classes; i++)
                p[i] = 0.5f * (p[i] + q[i]);
        }
        for (int64_t i = 0; !rc && i < n; i++)
            score_row(e, first + i, p + i * classes, labels[i], &loss, &top5);
    }
    for (int64_t i = 0; !rc && i < count; i++)
        correct += e->predicted[i] == graft_dataset_label(ds, i);
    if (!rc && count > 0) {
        e->accuracy = (double)correct / (double)count;
        e->top5_accuracy = (double)top5 / (double)count;
        e->loss = loss / (double)count;
    }
    graft__free_aligned(x);
    graft__free_aligned(p);
    graft__free_aligned(q);
    graft__free(labels);
    if (rc)
        graft_evaluation_free(e);
    return rc;
}

void graft_evaluation_free(graft_evaluation *e)
{
    if (!e)
        return;
    graft__free(e->predicted);
    graft__free(e->probability);
    graft__free(e->true_probability);
    graft__free(e->confusion);
    memset(e, 0, sizeof *e);
}
