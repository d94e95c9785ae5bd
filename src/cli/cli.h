/* Subcommands of the graft CLI. Each returns the process exit status:
 * 0 success, 1 bad input (a file, a model, an image), 2 bad usage. */
#ifndef GRAFT_CLI_CLI_H
#define GRAFT_CLI_CLI_H

enum { CLI_OK = 0, CLI_BAD_INPUT = 1, CLI_BAD_USAGE = 2 };

int cli_inspect(int argc, char **argv);
int cli_predict(int argc, char **argv);
int cli_train(int argc, char **argv);
int cli_evaluate(int argc, char **argv);
int cli_demo(int argc, char **argv);
int cli_probe(int argc, char **argv);

/* Prints "graft: <message>" once on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Parses a positive integer option value; prints a usage error and returns 0 when invalid. */
int cli_parse_positive(const char *option, const char *text, long *out);
/* Applies --threads N when given (0 = all cores). */
void cli_set_threads(long threads);

#endif
