/* `graft predict` on a JPEG and a PNG written by the test gives the same top-1
 * class as TF.js computes from the same preprocessed pixels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <jpeglib.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graft.h"

enum { W = 320, H = 240 };

/* A picture with structure at several scales, so the classes are not a tie. */
static void make_pixels(unsigned char *rgb, int variant)
{
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            unsigned char *p = rgb + 3 * (y * W + x);
            double r = hypot(x - W / 2.0, y - H / 2.0);
            p[0] = (unsigned char)(127 + 120 * sin(r / (variant ? 7.0 : 19.0)));
            p[1] = (unsigned char)((x * 255) / W);
            p[2] = (unsigned char)(((x / 16 + y / 16) % 2) * (variant ? 200 : 90) + 30);
        }
}

static void write_jpeg(const char *path, const unsigned char *rgb)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = W;
    c.image_height = H;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 92, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + 3 * W * c.next_scanline);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
}

static void write_png(const char *path, const unsigned char *rgb)
{
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = W;
    img.height = H;
    img.format = PNG_FORMAT_RGB;
    assert_true(png_image_write_to_file(&img, path, 0, rgb, 0, NULL));
}

static void predict_matches_tfjs_top1(void **state)
{
    char dir[] = "/tmp/graft-predict-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char jpg[256], png[256], input[256], cmd[4096], model[1024];
    snprintf(jpg, sizeof jpg, "%s/photo.jpg", dir);
    snprintf(png, sizeof png, "%s/drawing.png", dir);
    snprintf(input, sizeof input, "%s/input.bin", dir);
    snprintf(model, sizeof model, "%s/models/mobilenet_v2", GRAFT_SOURCE_DIR);
    unsigned char *rgb = malloc(3 * W * H);
    make_pixels(rgb, 0);
    write_jpeg(jpg, rgb);
    make_pixels(rgb, 1);
    write_png(png, rgb);
    free(rgb);

    /* The pixels graft feeds the network, handed to TF.js unchanged. */
    float *pixels = malloc(sizeof(float) * 2 * 224 * 224 * 3);
    assert_int_equal(graft_image_load(jpg, 224, 224, GRAFT_RESIZE_STRETCH,
                                      GRAFT_PREPROCESS_MOBILENET, pixels), GRAFT_OK);
    assert_int_equal(graft_image_load(png, 224, 224, GRAFT_RESIZE_STRETCH,
                                      GRAFT_PREPROCESS_MOBILENET, pixels + 224 * 224 * 3), GRAFT_OK);
    FILE *f = fopen(input, "wb");
    assert_int_equal(fwrite(pixels, sizeof(float), 2 * 224 * 224 * 3, f), 2 * 224 * 224 * 3);
    fclose(f);
    free(pixels);

    snprintf(cmd, sizeof cmd,
             "node '%s/tests/node/tfjs_reference.js' --model '%s' --input '%s' "
             "--input-shape 2,224,224,3 --top1 2>/dev/null",
             GRAFT_SOURCE_DIR, model, input);
    FILE *tf = popen(cmd, "r");
    snprintf(cmd, sizeof cmd, "'%s' predict '%s' '%s' '%s' --json --top 1", getenv("GRAFT_CLI"),
             model, jpg, png);
    FILE *gr = popen(cmd, "r");
    assert_non_null(tf);
    assert_non_null(gr);
    char tline[1024], gline[4096];
    for (int i = 0; i < 2; i++) {
        assert_non_null(fgets(tline, sizeof tline, tf));
        assert_non_null(fgets(gline, sizeof gline, gr));
        json_t *t = json_loads(tline, 0, NULL), *g = json_loads(gline, 0, NULL);
        assert_non_null(t);
        assert_non_null(g);
        json_t *top = json_array_get(json_object_get(g, "top"), 0);
        long long g_index = json_integer_value(json_object_get(top, "index"));
        long long t_index = json_integer_value(json_object_get(t, "top1"));
        double g_prob = json_real_value(json_object_get(top, "prob"));
        double t_prob = json_number_value(json_object_get(t, "prob"));
        printf("    %s: graft %lld (%s, %.6f)  tfjs %lld (%.6f)\n",
               json_string_value(json_object_get(g, "file")), g_index,
               json_string_value(json_object_get(top, "label")), g_prob, t_index, t_prob);
        assert_string_equal(json_string_value(json_object_get(g, "file")), i ? png : jpg);
        assert_int_equal(g_index, t_index);
        assert_true(fabs(g_prob - t_prob) < 1e-4);
        json_decref(t);
        json_decref(g);
    }
    assert_int_equal(pclose(tf), 0);
    assert_int_equal(pclose(gr), 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(predict_matches_tfjs_top1)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
