/* report.html: per-class metrics by hand, the page's structure (escaping, curves,
 * thumbnails that decode back, nothing fetched, atomic write), allocation
 * failures, and a headless Chromium screenshot of the page. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <png.h>

#include "cli/report.h"
#include "graft.h"

/* ---- scratch files -------------------------------------------------------- */

static char scratch[256];

static const char *at(const char *name)
{
    static char paths[8][512];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, sizeof paths[0], "%s/%s", scratch, name);
    return p;
}

static int make_scratch(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/graft-report-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(scratch) ? 0 : -1;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path);
}

/* Recursive: Chromium leaves a whole profile folder behind. */
static int remove_scratch(void **state)
{
    (void)state;
    return nftw(scratch, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static char *read_text(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("%s: cannot open", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    data[n] = '\0';
    if (size)
        *size = (size_t)n;
    return data;
}

static void copy_file(const char *from, const char *to)
{
    size_t n;
    char *data = read_text(from, &n);
    FILE *f = fopen(to, "wb");
    if (f) {
        fwrite(data, 1, n, f);
        fclose(f);
    }
    free(data);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        ++n;
    return n;
}

/* ---- report_class_metrics -------------------------------------------------------- */

static void test_class_metrics(void **state)
{
    (void)state;
    /* rows true, columns predicted; class 2 is never predicted */
    const int64_t confusion[9] = {5, 1, 0,
                                  2, 3, 0,
                                  1, 3, 0};
    double p[3], r[3], f1[3];
    int64_t support[3];
    report_class_metrics(confusion, 3, p, r, f1, support);
    /* class 0: 5 of 8 predicted are right, 5 of 6 found: F1 = 2pr/(p+r) = 5/7 */
    assert_float_equal(p[0], 5.0 / 8, 1e-12);
    assert_float_equal(r[0], 5.0 / 6, 1e-12);
    assert_float_equal(f1[0], 5.0 / 7, 1e-12);
    /* class 1: 3 of 7 predicted, 3 of 5 found: F1 = (18/35) / (36/35) */
    assert_float_equal(p[1], 3.0 / 7, 1e-12);
    assert_float_equal(r[1], 3.0 / 5, 1e-12);
    assert_float_equal(f1[1], 0.5, 1e-12);
    /* class 2: never predicted, so precision is 0 by convention (0/0), as are recall and F1 */
    assert_float_equal(p[2], 0, 0);
    assert_float_equal(r[2], 0, 0);
    assert_float_equal(f1[2], 0, 0);
    assert_int_equal(support[0], 6);
    assert_int_equal(support[1], 5);
    assert_int_equal(support[2], 4);

    /* a class absent from the data and never predicted: everything 0, nothing NaN */
    const int64_t lonely[4] = {3, 0, 0, 0};
    report_class_metrics(lonely, 2, p, r, f1, support);
    assert_float_equal(p[0], 1, 1e-12);
    assert_float_equal(r[0], 1, 1e-12);
    assert_float_equal(f1[0], 1, 1e-12);
    assert_float_equal(p[1], 0, 0);
    assert_float_equal(r[1], 0, 0);
    assert_float_equal(f1[1], 0, 0);
    assert_int_equal(support[1], 0);
}

/* ---- a synthetic run --------------------------------------------------------------- */

enum { N_EPOCHS = 10, PHASE2 = 6, N_CLASSES = 4, N_WRONG = 3 };

static const char *const class_names[N_CLASSES] = {"daisy", "rose <&>\" thorn", "tulip",
                                                   "sunflower"};
static const char *const summary_keys[] = {"base model", "epochs", "validation accuracy"};
static const char *const summary_values[] = {"mobilenet_v2 (cut at out_relu)",
                                             "6 frozen + 4 fine-tuned", "91.3% (best, epoch 9)"};

typedef struct synthetic {
    graft_epoch_metrics history[N_EPOCHS];
    int64_t confusion[N_CLASSES * N_CLASSES];
    float *pixels[N_WRONG];
    report_example wrong[N_WRONG];
    report_input in;
} synthetic;

/* Image i: a colour gradient with a bright square, so a thumbnail shows something. */
static float *synthetic_image(int64_t h, int64_t w, int seed)
{
    float *rgb = malloc(sizeof(float) * (size_t)(h * w * 3));
    assert_non_null(rgb);
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
            float *px = rgb + (y * w + x) * 3;
            const int square = y > h / 4 && y < h / 2 && x > w / 3 && x < 2 * w / 3;
            px[0] = square ? 250.0f : (float)(255 * x / (w - 1));
            px[1] = square ? 240.0f : (float)(255 * y / (h - 1));
            px[2] = (float)(150 + seed * 50); /* bluish: no orange, which marks the curves */
        }
    return rgb;
}

static void make_synthetic(synthetic *s)
{
    memset(s, 0, sizeof *s);
    for (int i = 0; i < N_EPOCHS; ++i) {
        graft_epoch_metrics *m = &s->history[i];
        const int phase2 = i >= PHASE2;
        m->epoch = phase2 ? i - PHASE2 + 1 : i + 1;
        m->train_loss = 1.4 * exp(-0.35 * i) + 0.08;
        m->train_accuracy = 0.45 + 0.5 * (1 - exp(-0.4 * i));
        m->val_loss = 1.2 * exp(-0.25 * i) + 0.25 + (phase2 ? -0.05 : 0);
        m->val_accuracy = 0.5 + 0.4 * (1 - exp(-0.3 * i));
        m->learning_rate = phase2 ? 1e-5 : 1e-3;
        m->seconds = 4.0;
        m->images_per_second = 250;
    }
    /* an epoch without validation: the val curves skip it */
    s->history[3].val_loss = NAN;
    s->history[3].val_accuracy = NAN;
    const int64_t confusion[N_CLASSES * N_CLASSES] = {40, 3, 1, 0,
                                                      4, 33, 2, 1,
                                                      0, 2, 45, 3,
                                                      1, 0, 5, 38};
    memcpy(s->confusion, confusion, sizeof confusion);
    const int64_t sizes[N_WRONG][2] = {{24, 32}, {40, 40}, {200, 300}};
    const int32_t classes[N_WRONG][2] = {{1, 0}, {3, 2}, {0, 1}};
    const float probability[N_WRONG] = {0.93f, 0.81f, 0.6f};
    static const char *const names[N_WRONG] = {"rose/0042.jpg", "sunflower/x<y>.jpg",
                                               "val.bin#17"};
    for (int i = 0; i < N_WRONG; ++i) {
        s->pixels[i] = synthetic_image(sizes[i][0], sizes[i][1], i);
        s->wrong[i] = (report_example){s->pixels[i], sizes[i][0], sizes[i][1], classes[i][0],
                                       classes[i][1], probability[i], names[i]};
    }
    s->in = (report_input){
        .title = "graft train flowers -> out/",
        .n_classes = N_CLASSES,
        .class_names = class_names,
        .history = s->history,
        .n_epochs = N_EPOCHS,
        .phase2_first_epoch = PHASE2,
        .confusion = s->confusion,
        .wrong = s->wrong,
        .n_wrong = N_WRONG,
        .summary_keys = summary_keys,
        .summary_values = summary_values,
        .n_summary = 3,
    };
}

static void free_synthetic(synthetic *s)
{
    for (int i = 0; i < N_WRONG; ++i)
        free(s->pixels[i]);
}

/* ---- the page's structure ------------------------------------------------------------ */

static size_t base64_decode(const char *in, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (; *in && *in != '"'; ++in) {
        const char *digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        if (*in == '=')
            break;
        const char *d = strchr(digits, *in);
        if (!d)
            fail_msg("'%c' in base64", *in);
        acc = acc << 6 | (uint32_t)(d - digits);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

/* Decodes the PNG of the data: URI at uri (just after "base64,"); returns 8-bit RGB. */
static unsigned char *decode_thumbnail(const char *uri, int *w, int *h)
{
    const char *end = strchr(uri, '"');
    assert_non_null(end);
    unsigned char *png = malloc((size_t)(end - uri));
    assert_non_null(png);
    const size_t size = base64_decode(uri, png);
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&image, png, size))
        fail_msg("thumbnail PNG: %s", image.message);
    image.format = PNG_FORMAT_RGB;
    unsigned char *rgb = malloc(PNG_IMAGE_SIZE(image));
    assert_non_null(rgb);
    if (!png_image_finish_read(&image, NULL, rgb, 0, NULL))
        fail_msg("thumbnail PNG: %s", image.message);
    *w = (int)image.width;
    *h = (int)image.height;
    free(png);
    return rgb;
}

static void test_html_structure(void **state)
{
    (void)state;
    synthetic s;
    make_synthetic(&s);
    char path[512];
    snprintf(path, sizeof path, "%s", at("report.html"));
    assert_int_equal(report_write_html(&s.in, path), GRAFT_OK);
    assert_true(exists(path));
    assert_false(exists(at("report.html.tmp"))); /* written atomically, nothing left over */
    char *html = read_text(path, NULL);

    assert_int_equal(strncmp(html, "<!DOCTYPE html>", 15), 0);
    assert_non_null(strstr(html, "graft train flowers -&gt; out/"));
    /* the summary table, at the top */
    assert_non_null(strstr(html, "<th>validation accuracy</th><td>91.3% (best, epoch 9)</td>"));
    assert_true(strstr(html, "summary") < strstr(html, "<svg"));

    /* two learning curves, each with the phase-2 boundary; NaN values are skipped */
    assert_int_equal(count(html, "<svg"), 2);
    assert_int_equal(count(html, "class=\"phase-marker\""), 2);
    assert_non_null(strstr(html, "phase 2"));
    assert_non_null(strstr(html, ">Loss</text>"));
    assert_non_null(strstr(html, ">Accuracy</text>"));
    assert_non_null(strstr(html, ">epoch</text>"));
    assert_null(strstr(html, "nan"));
    assert_null(strstr(html, "NaN"));
    assert_null(strstr(html, "inf"));
    /* the val path restarts after the missing epoch: two M commands in each chart */
    const char *val = strstr(html, "class=\"val\"");
    assert_non_null(val);
    const char *d = strstr(val, " d=\"");
    assert_int_equal(count(d, " M") - count(strchr(d + 4, '"'), " M"), 2);

    /* class names escaped everywhere, never raw */
    assert_true(count(html, "rose &lt;&amp;&gt;&quot; thorn") >= 4);
    assert_null(strstr(html, "<&>\""));
    assert_null(strstr(html, "x<y>"));
    assert_non_null(strstr(html, "sunflower/x&lt;y&gt;.jpg"));

    /* confusion matrix: counts and a heat-map colour per cell, per-class table with averages */
    assert_non_null(strstr(html, "class=\"cm"));
    assert_int_equal(count(html, "% of the class)\">"), N_CLASSES * N_CLASSES);
    assert_non_null(strstr(html, "macro average"));
    assert_non_null(strstr(html, "weighted average"));
    /* accuracy (40+33+45+38)/178 */
    char accuracy[64];
    snprintf(accuracy, sizeof accuracy, "<td>%.3f</td><td>178</td>", 156.0 / 178);
    assert_non_null(strstr(html, accuracy));

    /* three thumbnails that decode back to the images, with their captions */
    assert_int_equal(count(html, "data:image/png;base64,"), 3);
    assert_non_null(strstr(html, "true: rose &lt;&amp;&gt;&quot; thorn / predicted: daisy "
                                 "(p=0.93)"));
    assert_non_null(strstr(html, "true: sunflower / predicted: tulip (p=0.81)"));
    const char *uri = strstr(html, "data:image/png;base64,") + 22;
    int w, h;
    unsigned char *rgb = decode_thumbnail(uri, &w, &h);
    assert_int_equal(w, 32);
    assert_int_equal(h, 24);
    for (int i = 0; i < 24 * 32 * 3; ++i)
        assert_int_equal(rgb[i], (int)lroundf(s.pixels[0][i]));
    free(rgb);
    /* the large one is box-filtered down to REPORT_THUMB_MAX on its long side */
    uri = strstr(strstr(strstr(html, "base64,") + 7, "base64,") + 7, "base64,") + 7;
    rgb = decode_thumbnail(uri, &w, &h);
    assert_int_equal(w, REPORT_THUMB_MAX);
    assert_int_equal(h, (200 * REPORT_THUMB_MAX + 150) / 300);
    free(rgb);

    /* self-contained: no scripts, nothing fetched; the only URL is the SVG namespace */
    assert_null(strstr(html, "<script"));
    assert_int_equal(count(html, "https://"), 0);
    assert_int_equal(count(html, "http://"), count(html, "xmlns=\"http://www.w3.org/2000/svg\""));
    assert_null(strstr(html, "url("));
    assert_null(strstr(html, "@import"));

    /* rewriting replaces the file in place */
    s.in.n_wrong = 0;
    assert_int_equal(report_write_html(&s.in, path), GRAFT_OK);
    free(html);
    html = read_text(path, NULL);
    assert_int_equal(count(html, "data:image/png;base64,"), 0);
    assert_false(exists(at("report.html.tmp")));
    free(html);
    free_synthetic(&s);
}

static void test_many_classes_and_no_phase2(void **state)
{
    (void)state;
    /* 50 classes, one phase, no validation at all: still two charts, no marker */
    enum { N = 50 };
    static int64_t confusion[N * N];
    char names[N][16];
    const char *name_ptrs[N];
    for (int t = 0; t < N; ++t) {
        snprintf(names[t], sizeof names[t], "class_%02d", t);
        name_ptrs[t] = names[t];
        for (int p = 0; p < N; ++p)
            confusion[t * N + p] = t == p ? 20 : (t + p) % 7 == 0;
    }
    graft_epoch_metrics history[3];
    for (int i = 0; i < 3; ++i)
        history[i] = (graft_epoch_metrics){.epoch = i + 1, .train_loss = 1.0 / (i + 1),
                                           .train_accuracy = 0.3 * (i + 1), .val_loss = NAN,
                                           .val_accuracy = NAN};
    report_input in = {.title = "fifty", .n_classes = N, .class_names = name_ptrs,
                       .history = history, .n_epochs = 3, .phase2_first_epoch = -1,
                       .confusion = confusion};
    assert_int_equal(report_write_html(&in, at("fifty.html")), GRAFT_OK);
    char *html = read_text(at("fifty.html"), NULL);
    assert_int_equal(count(html, "<svg"), 2);
    assert_null(strstr(html, "class=\"phase-marker\""));
    assert_non_null(strstr(html, "class=\"cm rot tiny\"")); /* rotated column labels */
    assert_int_equal(count(html, "% of the class)\">"), N * N);
    assert_non_null(strstr(html, "No validation image was misclassified"));
    assert_non_null(strstr(html, "No validation data"));
    assert_null(strstr(html, "nan"));
    free(html);

    /* no history at all and no class names: still a page */
    in.n_epochs = 0;
    in.class_names = NULL;
    assert_int_equal(report_write_html(&in, at("empty.html")), GRAFT_OK);
    html = read_text(at("empty.html"), NULL);
    assert_int_equal(count(html, "<svg"), 2);
    assert_non_null(strstr(html, "class 49"));
    free(html);
}

static void test_bad_input(void **state)
{
    (void)state;
    synthetic s;
    make_synthetic(&s);
    char path[512];
    snprintf(path, sizeof path, "%s", at("bad.html"));
    assert_int_equal(report_write_html(NULL, path), GRAFT_E_INVALID_ARG);
    assert_int_equal(report_write_html(&s.in, NULL), GRAFT_E_INVALID_ARG);
    report_input in = s.in;
    in.n_classes = 0;
    assert_int_equal(report_write_html(&in, path), GRAFT_E_INVALID_ARG);
    in = s.in;
    in.confusion = NULL;
    assert_int_equal(report_write_html(&in, path), GRAFT_E_INVALID_ARG);
    in = s.in;
    in.history = NULL;
    assert_int_equal(report_write_html(&in, path), GRAFT_E_INVALID_ARG);
    s.wrong[1].predicted_class = N_CLASSES;
    assert_int_equal(report_write_html(&s.in, path), GRAFT_E_INVALID_ARG);
    assert_non_null(strstr(graft_last_error(), "example 1"));
    s.wrong[1].predicted_class = 2;
    s.wrong[2].width = 0;
    assert_int_equal(report_write_html(&s.in, path), GRAFT_E_INVALID_ARG);
    s.wrong[2].width = 300;
    assert_false(exists(path));

    /* a folder that does not exist: an I/O error naming the file, nothing left behind */
    assert_int_equal(report_write_html(&s.in, at("no/such/report.html")), GRAFT_E_IO);
    assert_non_null(strstr(graft_last_error(), "report.html"));
    free_synthetic(&s);
}

/* ---- allocation failures ---------------------------------------------------------------- */

static long alloc_calls, fail_call = -1;
static int allowed(void) { return alloc_calls++ != fail_call; }
static void *counting_malloc(size_t bytes) { return allowed() ? malloc(bytes) : NULL; }
static void *counting_realloc(void *p, size_t bytes)
{
    return allowed() ? realloc(p, bytes) : NULL;
}
static const graft_allocator counting = {counting_malloc, counting_realloc, free};

/* Fails each allocation in turn: OK or GRAFT_E_NOMEM, and on failure no file and
 * no .tmp (under ASan, nothing leaked either). */
static void test_out_of_memory(void **state)
{
    (void)state;
    synthetic s;
    make_synthetic(&s);
    char path[512], tmp[520];
    snprintf(path, sizeof path, "%s", at("oom.html"));
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    for (fail_call = 0;; ++fail_call) {
        alloc_calls = 0;
        unlink(path);
        graft_set_allocator(&counting);
        graft_status rc = report_write_html(&s.in, path);
        graft_set_allocator(NULL);
        assert_false(exists(tmp));
        if (alloc_calls <= fail_call) {
            assert_int_equal(rc, GRAFT_OK);
            break;
        }
        if (rc != GRAFT_E_NOMEM || exists(path))
            fail_msg("allocation %ld failed: status %d, \"%s\"", fail_call, rc,
                     graft_last_error());
    }
    assert_true(fail_call >= 5);
    fail_call = -1;
    free_synthetic(&s);
}

/* ---- rendering in a browser ------------------------------------------------------------- */

#define CHROMIUM "/usr/bin/chromium"

/* Runs argv with stdout and stderr to log; returns the exit status (-1 if not run). */
static int run(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_renders_in_chromium(void **state)
{
    (void)state;
    if (access(CHROMIUM, X_OK) != 0)
        fail_msg(CHROMIUM " not found: the report's rendering test needs Chromium; "
                 "run scripts/setup --test-deps (CI does) or apt-get install chromium");
    synthetic s;
    make_synthetic(&s);
    assert_int_equal(report_write_html(&s.in, at("page.html")), GRAFT_OK);
    free_synthetic(&s);

    char profile[512], url[600], shot[520], shot_arg[560], profile_arg[560];
    snprintf(profile, sizeof profile, "%s", at("chromium-profile"));
    assert_int_equal(mkdir(profile, 0700), 0);
    snprintf(profile_arg, sizeof profile_arg, "--user-data-dir=%s", profile);
    snprintf(shot, sizeof shot, "%s", at("shot.png"));
    snprintf(shot_arg, sizeof shot_arg, "--screenshot=%s", shot);
    snprintf(url, sizeof url, "file://%s", at("page.html"));
    char *argv[] = {"/usr/bin/timeout", "60", CHROMIUM, "--headless", "--no-sandbox",
                    "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--hide-scrollbars", profile_arg, "--window-size=1200,2400",
                    shot_arg, url, NULL};
    const int rc = run(argv, at("chromium.log"));
    if (rc != 0 || !exists(shot)) {
        char *log = exists(at("chromium.log")) ? read_text(at("chromium.log"), NULL) : NULL;
        fail_msg("chromium exited with %d%s, screenshot %s; its output:\n%s", rc,
                 rc == 124 ? " (timed out after 60 s)" : "", exists(shot) ? "written" : "missing",
                 log ? log : "(none)");
    }
    /* GRAFT_REPORT_KEEP=DIR keeps the page and its screenshot, to look at */
    const char *keep = getenv("GRAFT_REPORT_KEEP");
    if (keep && *keep) {
        char to[1024];
        snprintf(to, sizeof to, "%s/report.html", keep);
        copy_file(at("page.html"), to);
        snprintf(to, sizeof to, "%s/report-shot.png", keep);
        copy_file(shot, to);
    }

    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&image, shot))
        fail_msg("screenshot: %s", image.message);
    image.format = PNG_FORMAT_RGB;
    const int w = (int)image.width, h = (int)image.height;
    unsigned char *rgb = malloc(PNG_IMAGE_SIZE(image));
    assert_non_null(rgb);
    if (!png_image_finish_read(&image, NULL, rgb, 0, NULL))
        fail_msg("screenshot: %s", image.message);
    if (abs(w - 1200) > 40 || abs(h - 2400) > 200)
        fail_msg("screenshot is %dx%d, want about 1200x2400", w, h);

    /* not blank: the luminance varies */
    double sum = 0, sum2 = 0;
    for (int i = 0; i < w * h; ++i) {
        const double y = 0.299 * rgb[i * 3] + 0.587 * rgb[i * 3 + 1] + 0.114 * rgb[i * 3 + 2];
        sum += y;
        sum2 += y * y;
    }
    const double mean = sum / (w * h), variance = sum2 / (w * h) - mean * mean;
    if (variance < 100)
        fail_msg("screenshot looks blank: luminance variance %.1f (mean %.1f)", variance, mean);

    /* the curves drew: the validation series' orange (only the charts use it) shows,
     * in the upper part of the page, in both halves (loss left, accuracy right), and
     * the chart area around it is not empty */
    int orange[2] = {0, 0}, top = h, bottom = 0;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const unsigned char *px = rgb + ((size_t)y * w + x) * 3;
            if (px[0] > 200 && px[1] > 60 && px[1] < 130 && px[2] < 70 && px[1] - px[2] > 40) {
                ++orange[x >= w / 2];
                top = y < top ? y : top;
                bottom = y > bottom ? y : bottom;
            }
        }
    if (orange[0] < 100 || orange[1] < 100)
        fail_msg("no validation curves in the screenshot (orange pixels: %d left, %d right)",
                 orange[0], orange[1]);
    if (bottom > h / 2)
        fail_msg("orange pixels down to row %d of %d: the charts should be near the top", bottom,
                 h);
    int ink = 0;
    for (int y = top; y <= bottom; ++y)
        for (int x = 40; x < w - 40; ++x) {
            const unsigned char *px = rgb + ((size_t)y * w + x) * 3;
            ink += px[0] < 160 && px[1] < 160 && px[2] < 160; /* axes, labels */
        }
    if (ink < 500)
        fail_msg("the chart rows %d-%d hold only %d dark pixels: no axes or labels?", top, bottom,
                 ink);
    free(rgb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_class_metrics),
        cmocka_unit_test(test_html_structure),
        cmocka_unit_test(test_many_classes_and_no_phase2),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_out_of_memory),
        cmocka_unit_test(test_renders_in_chromium),
    };
    return cmocka_run_group_tests(tests, make_scratch, remove_scratch);
}
