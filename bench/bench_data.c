/* The data pipeline's numbers for the data issue:
 *  1. a 4000x3000 JPEG loaded at 224x224 with libjpeg-turbo's DCT scaling vs a
 *     full-size decode then resize (time ratio and mean pixel difference);
 *  2. throughput of decode + resize + augment + preprocess on 1000 JPEG photos
 *     of 1024x768 (graft_dataset_load, cache off), with the configured threads;
 *  3. phase-1 training (frozen MobileNetV2 at 96x96, new head) from the feature
 *     cache vs recomputing the base every epoch.
 * The images are synthetic (smooth gradients plus texture), written to a
 * temporary folder.
 *
 *   build/bench_data [--threads 2] [--models models]
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

int main(int argc, char **argv)
{
    long threads = 2;
    const char *models = "models";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--models"))
            models = argv[i + 1];
    }
    graft_set_threads((int)threads);
    char dir[] = "/tmp/graft-bench-data-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    scaled_decoding(dir);
    pipeline_throughput(dir);
    cache_speedup(models);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
