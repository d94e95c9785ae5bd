/* Forward throughput of a model: images/s at a batch size, after warm-up,
 * median of several rounds, and the process's peak RSS. The CPU time of the
 * process per round is printed beside the wall time: on a machine shared with
 * other work, one thread's CPU time is the steadier measure of a change.
 *
 *   build/bench_forward [--model models/mobilenet_v2] [--batch 32] [--threads 2] [--rounds 7]
 *   build/bench_forward --serve [--per-round 2] [--model ...] [--batch ...] [--threads ...]
 *
 * --serve is bench/compare's worker mode (bench/serve.h): each "round" on stdin
 * runs --per-round forward passes and prints their times.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "graft.h"
#include "serve.h"

static double now_seconds(void) { return serve_now(); }

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void cpu_name(char *buf, size_t size)
{
    snprintf(buf, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            snprintf(buf, size, "%s", colon ? colon + 2 : line);
            buf[strcspn(buf, "\n")] = '\0';
            break;
        }
    if (f)
        fclose(f);
}

static void serve_rounds(graft_model *model, const float *input, long batch, float *output,
                         long per_round)
{
    double *times = malloc(sizeof(double) * (size_t)per_round);
    char extra[64];
    snprintf(extra, sizeof extra, "\"threads\":%d", graft_threads());
    serve_ready(extra);
    while (serve_next_round()) {
        for (long r = 0; r < per_round; r++) {
            double s = now_seconds();
            graft_model_forward(model, input, batch, output);
            times[r] = now_seconds() - s;
        }
        serve_report(times, per_round);
    }
    free(times);
}

int main(int argc, char **argv)
{
    const char *model_path = "models/mobilenet_v2";
    long batch = 32, threads = 2, rounds = 7, per_round = 2;
    int serve = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--serve")) {
            serve = 1;
            continue;
        }
        if (i + 1 == argc) {
            fprintf(stderr, "bench_forward: '%s' needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--model"))
            model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rounds"))
            rounds = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--per-round"))
            per_round = atol(argv[i + 1]);
        else {
            fprintf(stderr, "bench_forward: unknown option '%s'\n", argv[i]);
            return 2;
        }
        i++;
    }
    if (batch < 1 || rounds < 1 || rounds > 1000 || per_round < 1 || per_round > 1000) {
        fprintf(stderr, "bench_forward: bad --batch, --rounds or --per-round\n");
        return 2;
    }
    graft_set_threads((int)threads);
    graft_model *model = NULL;
    double t0 = now_seconds();
    if (graft_model_load(model_path, &model) != GRAFT_OK) {
        fprintf(stderr, "bench_forward: %s\n", graft_last_error());
        return 1;
    }
    double load_s = now_seconds() - t0;
    int64_t h, w, c;
    graft_model_input_size(model, &h, &w, &c);
    size_t in_count = (size_t)(batch * h * w * c);
    float *input = malloc(sizeof(float) * in_count);
    float *output = malloc(sizeof(float) * (size_t)(batch * graft_model_output_size(model)));
    for (size_t i = 0; i < in_count; i++)
        input[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    graft_model_prepare(model, batch);
    graft_model_forward(model, input, batch, output); /* warm-up */
    if (serve) {
        serve_rounds(model, input, batch, output, per_round);
        free(input);
        free(output);
        graft_model_free(model);
        return 0;
    }
    double *times = malloc(sizeof(double) * 2 * (size_t)rounds), *cpu_times = times + rounds;
    for (long r = 0; r < rounds; r++) {
        double s = now_seconds(), cs = cpu_seconds();
        graft_model_forward(model, input, batch, output);
        times[r] = now_seconds() - s;
        cpu_times[r] = cpu_seconds() - cs;
    }
    qsort(times, (size_t)rounds, sizeof *times, compare_doubles);
    qsort(cpu_times, (size_t)rounds, sizeof *cpu_times, compare_doubles);
    double median = times[rounds / 2], cpu_median = cpu_times[rounds / 2];
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char cpu[512];
    cpu_name(cpu, sizeof cpu);
    printf("cpu: %s, threads %d\n", cpu, graft_threads());
    printf("model: %s (%lldx%lldx%lld), batch %ld, load %.3f s\n", model_path, (long long)h,
           (long long)w, (long long)c, batch, load_s);
    printf("forward: median %.1f ms per batch (min %.1f, max %.1f over %ld rounds), %.1f images/s\n",
           1e3 * median, 1e3 * times[0], 1e3 * times[rounds - 1], rounds, batch / median);
    printf("cpu time: median %.1f ms per batch (all threads)\n", 1e3 * cpu_median);
    printf("peak RSS: %.1f MB\n", ru.ru_maxrss / 1024.0);
    printf("{\"bench\":\"forward\",\"model\":\"%s\",\"batch\":%ld,\"threads\":%d,\"ms\":%.2f,"
           "\"images_per_s\":%.2f,\"cpu_ms\":%.2f,\"peak_rss_mb\":%.1f}\n",
           model_path, batch, graft_threads(), 1e3 * median, batch / median, 1e3 * cpu_median,
           ru.ru_maxrss / 1024.0);
    free(times);
    free(input);
    free(output);
    graft_model_free(model);
    return 0;
}
