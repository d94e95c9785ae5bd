/* The data pipeline's numbers for the data issue:
 *  1. a 4000x3000 JPEG loaded at 224x224 with libjpeg-turbo's DCT scaling vs a
 *     full-size decode then resize (time ratio and mean pixel difference);
 *  2. throughput of decode + resize + augment + preprocess on 1000 JPEG photos
 *     of 1024x768 (graft_dataset_load, cache off), with the configured threads;
 *  3. phase-1 training (frozen MobileNetV2 at 96x96, new head) from the feature
 *     cache vs recomputing the base every epoch;
 *  4. phase-2-style training (MobileNetV2 at 224x224 fine-tuned from the block
 *     the recipe picks, BatchNorm frozen, no feature cache) on JPEG photos and on
 *     Fashion-MNIST's IDX file, images/s with the next batch prefetched by a
 *     background thread vs filled synchronously (graft_train_config.prefetch).
 * The images are synthetic (smooth gradients plus texture), written to a
 * temporary folder.
 *
 *   build/bench_data [--threads 2] [--models models] [--only decode|pipeline|cache|prefetch]
 *                    [--prefetch-images 96] [--prefetch-reps 3] [--prefetch-size 224]
 *                    [--prefetch-batch 16] [--prefetch-data jpeg,cached,idx]
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
/* jpeglib.h needs size_t and FILE declared first. */
#include <jpeglib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/image.h"
#include "graft.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void write_photo(const char *path, int w, int h, int seed)
{
    unsigned char *rgb = malloc((size_t)w * h * 3);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *p = rgb + 3 * ((size_t)y * w + x);
            double u = (double)x / w, v = (double)y / h;
            p[0] = (unsigned char)(128 + 100 * sin(6.0 * u + seed) * cos(4.0 * v));
            p[1] = (unsigned char)(255 * v);
            p[2] = (unsigned char)(128 + 60 * sin(0.05 * (x + 3 * y) + seed) + 40 * u);
        }
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    FILE *f = fopen(path, "wb");
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = rgb + 3 * (size_t)c.next_scanline * w;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
    free(rgb);
}

static void scaled_decoding(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/big.jpg", dir);
    write_photo(path, 4000, 3000, 1);
    float *scaled = malloc(sizeof(float) * 224 * 224 * 3), *full = malloc(sizeof(float) * 224 * 224 * 3);
    double best_scaled = 1e9, best_full = 1e9;
    for (int r = 0; r < 5; r++) {
        double t = now();
        graft_image_load(path, 224, 224, GRAFT_RESIZE_STRETCH, GRAFT_PREPROCESS_NONE, scaled);
        best_scaled = fmin(best_scaled, now() - t);
        t = now();
        graft__image img;
        graft__image_decode(path, 0, 0, &img);
        graft__image_fit(&img, 224, 224, GRAFT_RESIZE_STRETCH, full);
        graft__image_free(&img);
        best_full = fmin(best_full, now() - t);
    }
    double err = 0.0, worst = 0.0;
    for (int i = 0; i < 224 * 224 * 3; i++) {
        err += fabs(scaled[i] - full[i]);
        worst = fmax(worst, fabs(scaled[i] - full[i]));
    }
    printf("4000x3000 JPEG to 224x224: DCT-scaled %.1f ms, full decode + resize %.1f ms: %.1fx "
           "faster; mean |difference| %.3f, max %.1f (0..255 scale)\n",
           1e3 * best_scaled, 1e3 * best_full, best_full / best_scaled, err / (224 * 224 * 3), worst);
    free(scaled);
    free(full);
}

static void pipeline_throughput(const char *dir)
{
    char root[512], cls[600], path[700];
    snprintf(root, sizeof root, "%s/photos", dir);
    mkdir(root, 0755);
    for (int c = 0; c < 2; c++) {
        snprintf(cls, sizeof cls, "%s/class%d", root, c);
        mkdir(cls, 0755);
        for (int i = 0; i < 500; i++) {
            snprintf(path, sizeof path, "%s/%03d.jpg", cls, i);
            write_photo(path, 1024, 768, i + 1000 * c);
        }
    }
    graft_dataset_options o;
    graft_dataset_options_defaults(&o);
    o.cache_bytes = 0;
    graft_dataset *ds = NULL;
    double t = now();
    if (graft_dataset_open(root, &o, &ds) != GRAFT_OK) {
        printf("dataset: %s\n", graft_last_error());
        return;
    }
    double open_s = now() - t;
    graft_augment aug = {.flip_horizontal = 1, .rotation = 0.05, .zoom = 0.1, .brightness = 0.1};
    int64_t n = graft_dataset_count(ds), idx[64];
    float *x = malloc(sizeof(float) * 64 * 224 * 224 * 3);
    t = now();
    for (int64_t first = 0; first < n; first += 64) {
        int64_t k = n - first < 64 ? n - first : 64;
        for (int64_t i = 0; i < k; i++)
            idx[i] = first + i;
        graft_dataset_load(ds, idx, k, &aug, 1, x, NULL);
    }
    double s = now() - t;
    printf("pipeline, %lld JPEG photos 1024x768 -> 224x224 (decode, resize, flip/rotate/zoom/"
           "brightness, preprocess), %d threads: %.0f images/s (open with full check %.1f s)\n",
           (long long)n, graft_threads(), (double)n / s, open_s);
    free(x);
    graft_dataset_free(ds);
}

typedef struct memory_source {
    int64_t n, sample;
    float *x;
    int32_t *y;
} memory_source;

static graft_status fill(void *user, const int64_t *idx, int64_t n, int epoch, float *x, int32_t *y)
{
    memory_source *m = user;
    for (int64_t i = 0; i < n; i++) {
        memcpy(x + i * m->sample, m->x + idx[i] * m->sample, sizeof(float) * (size_t)m->sample);
        y[i] = m->y[idx[i]];
    }
    return GRAFT_OK;
}

static double phase1_seconds(const char *models, memory_source *ms, int cache)
{
    char base[512];
    snprintf(base, sizeof base, "%s/mobilenet_v2", models);
    graft_model *m = NULL;
    if (graft_model_load(base, &m) || graft_model_cut(m, "out_relu") ||
        graft_model_set_input_size(m, 96, 96) || graft_model_add_classifier(m, 10, 0.2, 1) ||
        graft_model_unfreeze_from(m, "global_average_pooling2d")) {
        printf("phase 1: %s\n", graft_last_error());
        return 0.0;
    }
    graft_batch_source src = {ms->n, fill, ms};
    graft_train_config c;
    graft_train_config_defaults(&c);
    c.epochs = 10;
    c.cache_views = cache;
    double t = now();
    graft_train(m, &src, NULL, &c, NULL);
    double s = now() - t;
    graft_model_free(m);
    return s;
}

static void cache_speedup(const char *models)
{
    memory_source ms = {1000, 96 * 96 * 3, NULL, NULL};
    ms.x = malloc(sizeof(float) * (size_t)(ms.n * ms.sample));
    ms.y = malloc(sizeof(int32_t) * (size_t)ms.n);
    for (int64_t i = 0; i < ms.n * ms.sample; i++)
        ms.x[i] = sinf((float)i * 0.001f);
    for (int64_t i = 0; i < ms.n; i++)
        ms.y[i] = (int32_t)(i % 10);
    double cached = phase1_seconds(models, &ms, 1), plain = phase1_seconds(models, &ms, 0);
    printf("phase 1 (MobileNetV2 96x96 frozen to out_relu, new head, 1000 images, 10 epochs): "
           "%.1f s from the feature cache, %.1f s recomputing: %.1fx\n",
           cached, plain, plain / cached);
    free(ms.x);
    free(ms.y);
}

/* ---- 4. prefetch ------------------------------------------------------------------ */

typedef struct prefetch_setup {
    int64_t size, batch, images;
    int reps;
    const char *data; /* which of jpeg, cached, idx to run (a list) */
} prefetch_setup;

typedef struct prefetch_run {
    double seconds; /* of the epochs after the first */
} prefetch_run;

static int timed_epochs(const graft_epoch_metrics *e, void *user)
{
    if (e->epoch > 1)
        ((prefetch_run *)user)->seconds += e->seconds;
    return 0;
}

/* One phase-2-style run: three epochs, the last two timed (the first warms the
 * allocator, the plans and, with a RAM budget, the decoded-image cache). */
static double phase2_images_per_s(const char *models, graft_dataset *ds, const prefetch_setup *p,
                                  int prefetch)
{
    char base[512], at[128];
    snprintf(base, sizeof base, "%s/mobilenet_v2", models);
    graft_model *m = NULL;
    if (graft_model_load(base, &m) || graft_model_cut(m, "out_relu") ||
        graft_model_add_classifier(m, graft_dataset_class_count(ds), 0.2, 1) ||
        graft_recipe_default_fine_tune_at(m, at, sizeof at) || graft_model_unfreeze_from(m, at)) {
        printf("prefetch: %s\n", graft_last_error());
        graft_model_free(m);
        return 0.0;
    }
    graft_augment aug = {.flip_horizontal = 1, .rotation = 0.05, .zoom = 0.1};
    graft_batch_source src = graft_dataset_source(ds, &aug);
    graft_train_config c;
    graft_train_config_defaults(&c);
    c.epochs = 3;
    c.batch_size = p->batch;
    c.learning_rate = 1e-4;
    c.bn_inference = 1;
    c.prefetch = prefetch;
    prefetch_run run = {0};
    c.on_epoch = timed_epochs;
    c.user = &run;
    graft_status rc = graft_train(m, &src, NULL, &c, NULL);
    graft_model_free(m);
    if (rc) {
        printf("prefetch: %s\n", graft_last_error());
        return 0.0;
    }
    return 2.0 * (double)graft_dataset_count(ds) / run.seconds;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void print_median(const char *label, double *v, int reps, double baseline)
{
    qsort(v, (size_t)reps, sizeof(double), compare_doubles);
    printf("  %-44s %5.2f images/s (min..max %.2f..%.2f)", label, v[reps / 2], v[0],
           v[reps - 1]);
    if (baseline > 0)
        printf(" %+.0f%%", 100.0 * (v[reps / 2] / baseline - 1.0));
    printf("\n");
}

/* Median images/s of sync vs prefetch, the runs interleaved so that load from
 * elsewhere on the machine falls on each alike. `narrow` (may be NULL) is the
 * same data opened with 1 decoding thread: the prefetch thread then decodes
 * alone instead of with a team of graft_threads(). */
static void prefetch_compare(const char *models, const char *what, graft_dataset *ds,
                             graft_dataset *narrow, const prefetch_setup *p)
{
    double sync[16], ahead[16], ahead_narrow[16];
    int reps = p->reps < 1 ? 1 : p->reps > 16 ? 16 : p->reps;
    printf("phase-2-style training at %lldx%lld, %s, %lld images, batch %lld, %d threads, "
           "median of %d:\n", (long long)p->size, (long long)p->size, what,
           (long long)graft_dataset_count(ds), (long long)p->batch, graft_threads(), reps);
    for (int r = 0; r < reps; r++) {
        sync[r] = phase2_images_per_s(models, ds, p, 0);
        ahead[r] = phase2_images_per_s(models, ds, p, 1);
        ahead_narrow[r] = narrow ? phase2_images_per_s(models, narrow, p, 1) : 0.0;
        printf("    run %d: synchronous %.2f, prefetch %.2f", r + 1, sync[r], ahead[r]);
        if (narrow)
            printf(", prefetch decoding on 1 thread %.2f", ahead_narrow[r]);
        printf(" images/s\n");
        fflush(stdout);
    }
    print_median("synchronous (prefetch 0)", sync, reps, 0);
    double base = sync[reps / 2];
    print_median("prefetch 1", ahead, reps, base);
    if (narrow)
        print_median("prefetch 1, dataset threads = 1", ahead_narrow, reps, base);
    fflush(stdout);
}

static void prefetch_speedup(const char *dir, const char *models, const prefetch_setup *p)
{
    const int64_t images = p->images;
    char root[512], cls[600], path[700];
    snprintf(root, sizeof root, "%s/prefetch", dir);
    mkdir(root, 0755);
    for (int c = 0; c < 2; c++) {
        snprintf(cls, sizeof cls, "%s/class%d", root, c);
        mkdir(cls, 0755);
        for (int64_t i = 0; i < images / 2; i++) {
            snprintf(path, sizeof path, "%s/%03lld.jpg", cls, (long long)i);
            write_photo(path, 1024, 768, (int)i + 1000 * c);
        }
    }
    graft_dataset_options o;
    graft_dataset_options_defaults(&o);
    o.height = o.width = p->size;
    for (int cached = 0; cached < 2; cached++) {
        if (!strstr(p->data, cached ? "cached" : "jpeg"))
            continue;
        o.cache_bytes = cached ? (size_t)1 << 30 : 0;
        graft_dataset *ds = NULL, *narrow = NULL;
        graft_dataset_options narrow_o = o;
        narrow_o.threads = 1;
        if (graft_dataset_open(root, &o, &ds) != GRAFT_OK ||
            (!cached && graft_dataset_open(root, &narrow_o, &narrow) != GRAFT_OK)) {
            printf("prefetch: %s\n", graft_last_error());
            graft_dataset_free(ds);
            return;
        }
        prefetch_compare(models, cached ? "JPEG 1024x768, decoded images cached in RAM"
                                        : "JPEG 1024x768 decoded every epoch", ds, narrow, p);
        graft_dataset_free(ds);
        graft_dataset_free(narrow);
    }
    graft_dataset *all = NULL, *some = NULL;
    o.cache_bytes = 0;
    if (!strstr(p->data, "idx"))
        return;
    const char *idx = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
    if (graft_dataset_open(idx, &o, &all) != GRAFT_OK ||
        graft_dataset_sample_per_class(all, images / 10, 1, &some) != GRAFT_OK) {
        printf("prefetch: %s (skipped)\n", graft_last_error());
    } else {
        prefetch_compare(models, "Fashion-MNIST IDX 28x28 resized every epoch", some, NULL, p);
    }
    graft_dataset_free(some);
    graft_dataset_free(all);
}

int main(int argc, char **argv)
{
    long threads = 2;
    prefetch_setup p = {224, 16, 96, 3, "jpeg,cached,idx"};
    const char *models = "models", *only = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--models"))
            models = argv[i + 1];
        else if (!strcmp(argv[i], "--only"))
            only = argv[i + 1];
        else if (!strcmp(argv[i], "--prefetch-images"))
            p.images = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefetch-reps"))
            p.reps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefetch-size"))
            p.size = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefetch-batch"))
            p.batch = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--prefetch-data"))
            p.data = argv[i + 1];
    }
    graft_set_threads((int)threads);
    char dir[] = "/tmp/graft-bench-data-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    if (!only || !strcmp(only, "decode"))
        scaled_decoding(dir);
    if (!only || !strcmp(only, "pipeline"))
        pipeline_throughput(dir);
    if (!only || !strcmp(only, "cache"))
        cache_speedup(models);
    if (!only || !strcmp(only, "prefetch"))
        prefetch_speedup(dir, models, &p);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
