/* report.html: the page is built in memory, then written to path.tmp, fsync'ed and
 * renamed, so a reader (or a browser left open on it) never sees half a report. */
#include "cli/report.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <png.h>

#include "core/alloc.h"
#include "core/error.h"

/* ---- a growing string ------------------------------------------------------ */

typedef struct sbuf {
    char *data;
    size_t len, cap;
    int oom; /* an allocation failed: later appends are dropped */
} sbuf;

static int sb_reserve(sbuf *b, size_t extra)
{
    if (b->oom)
        return 0;
    if (b->len + extra + 1 <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->oom = 1;
            return 0;
        }
        cap *= 2;
    }
    char *grown = graft__realloc(b->data, cap);
    if (!grown) {
        b->oom = 1;
        return 0;
    }
    b->data = grown;
    b->cap = cap;
    return 1;
}

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) GRAFT__PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        sb_put(b, small, (size_t)n);
        return;
    }
    if (!sb_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Text for element content and quoted attribute values alike. C0 control
 * characters (other than tab and newline) are dropped: HTML does not allow them. */
static void sb_escape(sbuf *b, const char *s)
{
    if (!s)
        return;
    for (const char *run = s;; ++s) {
        const unsigned char c = (unsigned char)*s;
        const char *rep = NULL;
        switch (c) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#39;"; break;
        default:
            if (c == 0 || (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f)
                rep = "";
        }
        if (!rep)
            continue;
        sb_put(b, run, (size_t)(s - run));
        if (c == 0)
            return;
        sb_puts(b, rep);
        run = s + 1;
    }
}

static void sb_base64(sbuf *b, const unsigned char *p, size_t n)
{
    static const char digits[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!sb_reserve(b, (n + 2) / 3 * 4))
        return;
    char *o = b->data + b->len;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        const uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = digits[v >> 18];
        *o++ = digits[(v >> 12) & 63];
        *o++ = digits[(v >> 6) & 63];
        *o++ = digits[v & 63];
    }
    if (i < n) {
        const uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = digits[v >> 18];
        *o++ = digits[(v >> 12) & 63];
        *o++ = i + 1 < n ? digits[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

/* ---- metrics ------------------------------------------------------------------ */

void report_class_metrics(const int64_t *confusion, int64_t n_classes, double *precision,
                          double *recall, double *f1, int64_t *support)
{
    for (int64_t c = 0; c < n_classes; ++c) {
        int64_t row = 0, column = 0;
        for (int64_t k = 0; k < n_classes; ++k) {
            row += confusion[c * n_classes + k];
            column += confusion[k * n_classes + c];
        }
        const double hit = (double)confusion[c * n_classes + c];
        const double p = column > 0 ? hit / (double)column : 0.0;
        const double r = row > 0 ? hit / (double)row : 0.0;
        precision[c] = p;
        recall[c] = r;
        f1[c] = p + r > 0 ? 2 * p * r / (p + r) : 0.0;
        support[c] = row;
    }
}

/* ---- the stylesheet --------------------------------------------------------------- */

static const char style[] =
    ":root{color-scheme:light;--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--card:#fff;"
    "--bg:#f4f5f7}\n"
    "*{box-sizing:border-box}\n"
    "body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"
    "'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}\n"
    "main{max-width:1120px;margin:0 auto;padding:24px 20px 40px}\n"
    "header h1{margin:0 0 2px;font-size:22px;font-weight:650;word-break:break-word}\n"
    "header p{margin:0 0 16px;color:var(--muted)}\n"
    "section{background:var(--card);border:1px solid var(--line);border-radius:8px;"
    "padding:16px 20px;margin:0 0 18px}\n"
    "h2{margin:0 0 12px;font-size:16px;font-weight:650}\n"
    "p.note{margin:8px 0 0;color:var(--muted);font-size:12.5px}\n"
    "table{border-collapse:collapse;font-variant-numeric:tabular-nums}\n"
    "table.summary{width:100%}\n"
    "table.summary th{text-align:left;font-weight:500;color:var(--muted);width:30%;"
    "padding:4px 12px 4px 0;vertical-align:top}\n"
    "table.summary td{padding:4px 0;word-break:break-word}\n"
    "table.summary tr+tr>*{border-top:1px solid var(--line)}\n"
    ".charts{display:flex;flex-wrap:wrap;gap:16px}\n"
    ".charts svg{flex:1 1 480px;max-width:100%;height:auto}\n"
    "svg text{font-family:inherit;font-size:11px;fill:var(--muted)}\n"
    "svg text.title{font-size:13px;font-weight:600;fill:var(--ink)}\n"
    "svg .grid{stroke:#eceef1}\n"
    "svg .axis{stroke:#9ca3af}\n"
    "svg .phase-marker line{stroke:#4b5563;stroke-dasharray:5 4}\n"
    "svg .phase-marker text{fill:#374151}\n"
    ".cm-wrap{overflow-x:auto}\n"
    "table.cm{font-size:12px}\n"
    "table.cm td{min-width:34px;height:30px;padding:2px 6px;text-align:center;"
    "border:1px solid #fff}\n"
    "table.cm td.zero{color:#c4c8cf}\n"
    "table.cm th{font-weight:500;color:var(--ink)}\n"
    "table.cm th.row{text-align:right;padding:0 8px 0 0;max-width:14em;overflow:hidden;"
    "text-overflow:ellipsis;white-space:nowrap}\n"
    "table.cm th.col{padding:0 2px 6px;vertical-align:bottom;max-width:9em;overflow:hidden;"
    "text-overflow:ellipsis;white-space:nowrap}\n"
    "table.cm th.axis{color:var(--muted);font-weight:600;font-size:11px;letter-spacing:.04em;"
    "text-transform:uppercase;padding:4px}\n"
    "table.cm th.axis.true span{writing-mode:vertical-rl;transform:rotate(180deg)}\n"
    "table.cm:not(.rot) th.col{width:6em;min-width:6em;max-width:6em;white-space:normal;"
    "overflow-wrap:break-word;line-height:1.25}\n"
    "table.cm:not(.rot) td{height:44px}\n"
    "table.cm.rot th.col{max-width:none}\n"
    "table.cm.rot th.col span{display:inline-block;writing-mode:vertical-rl;"
    "transform:rotate(180deg);max-height:10em;overflow:hidden;text-overflow:ellipsis}\n"
    "table.cm.small{font-size:10.5px}\n"
    "table.cm.small td{min-width:22px;height:22px;padding:1px 2px}\n"
    "table.cm.tiny{font-size:9px}\n"
    "table.cm.tiny td{min-width:17px;height:17px;padding:0 1px}\n"
    "div.legend{display:flex;flex-wrap:wrap;gap:18px;margin-top:10px;color:var(--muted);"
    "font-size:12px;align-items:center}\n"
    "div.legend span.bar{display:inline-block;width:110px;height:10px;border-radius:2px;"
    "vertical-align:middle;margin:0 6px}\n"
    "table.metrics{min-width:60%}\n"
    "table.metrics th,table.metrics td{padding:4px 14px;text-align:right;"
    "border-bottom:1px solid var(--line)}\n"
    "table.metrics th:first-child,table.metrics td:first-child{text-align:left;padding-left:0;"
    "word-break:break-word}\n"
    "table.metrics.compact{font-size:13px}\n"
    "table.metrics.compact th,table.metrics.compact td{padding-top:1px;padding-bottom:1px}\n"
    "table.metrics thead th{font-weight:600;border-bottom:2px solid #d1d5db}\n"
    "table.metrics tr.avg td{background:#f9fafb}\n"
    "table.metrics tr.avg:first-of-type td,table.metrics tbody.totals tr:first-child td"
    "{border-top:2px solid #d1d5db}\n"
    "table.metrics td.low{color:#b91c1c}\n"
    ".wrong{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:14px}\n"
    ".wrong figure{margin:0;border:1px solid var(--line);border-radius:6px;overflow:hidden;"
    "background:#fafafa}\n"
    ".wrong img{display:block;width:100%;height:auto;aspect-ratio:1;object-fit:contain;"
    "background:#eef0f3}\n"
    ".wrong figcaption{padding:6px 8px;font-size:12px;line-height:1.35}\n"
    ".wrong figcaption .name{display:block;color:var(--muted);font-size:11px;overflow:hidden;"
    "text-overflow:ellipsis;white-space:nowrap}\n"
    "footer{color:var(--muted);font-size:12px;text-align:center}\n"
    "@media print{body{background:#fff}section{break-inside:avoid;border-color:#ccc}}\n";

/* ---- class names -------------------------------------------------------------------- */

static void put_class(sbuf *b, const report_input *in, int64_t c)
{
    const char *name = in->class_names ? in->class_names[c] : NULL;
    if (name && *name)
        sb_escape(b, name);
    else
        sb_printf(b, "class %" PRId64, c);
}

static size_t class_name_length(const report_input *in, int64_t c)
{
    const char *name = in->class_names ? in->class_names[c] : NULL;
    return name && *name ? strlen(name) : 8;
}

/* ---- learning curves ------------------------------------------------------------------ */

enum { CHART_W = 540, CHART_H = 320, PAD_L = 58, PAD_R = 18, PAD_T = 44, PAD_B = 46 };

typedef struct chart_spec {
    const char *title, *y_label;
    int percent;      /* values are fractions shown as percentages */
    size_t train_off, val_off; /* offsets of the doubles in graft_epoch_metrics */
} chart_spec;

static double metric(const graft_epoch_metrics *m, size_t off)
{
    double v;
    memcpy(&v, (const char *)m + off, sizeof v);
    return v;
}

/* 1, 2, 2.5 or 5 times a power of ten, near span / target. */
static double nice_step(double span, int target)
{
    const double raw = span / target;
    const double mag = pow(10, floor(log10(raw)));
    const double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * mag;
}

static void format_tick(char *out, size_t size, double v, double step, int percent)
{
    if (percent)
        v *= 100, step *= 100;
    int decimals = 0;
    for (double s = step; decimals < 6 && fabs(s - round(s)) > 1e-6 * step; s *= 10)
        ++decimals;
    if (fabs(v) < step * 1e-6)
        v = 0; /* no "-0" */
    snprintf(out, size, "%.*f%s", decimals, v, percent ? "%" : "");
}

#define TRAIN_COLOUR "#2563eb"
#define VAL_COLOUR "#ea580c"

/* The next of 1, 2, 5, 10, 20, 50, ... */
static int next_round(int step)
{
    int mag = 1;
    while (step >= 10 * mag)
        mag *= 10;
    const int m = step / mag;
    return (m == 1 ? 2 : m == 2 ? 5 : 10) * mag;
}

static void chart(sbuf *b, const report_input *in, const chart_spec *spec)
{
    const int n = in->n_epochs;
    const double plot_w = CHART_W - PAD_L - PAD_R, plot_h = CHART_H - PAD_T - PAD_B;
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; ++i) {
        const double v[2] = {metric(&in->history[i], spec->train_off),
                             metric(&in->history[i], spec->val_off)};
        for (int k = 0; k < 2; ++k) {
            if (isfinite(v[k])) {
                lo = fmin(lo, v[k]);
                hi = fmax(hi, v[k]);
            }
        }
    }
    const int empty = !(lo <= hi);
    if (empty)
        lo = 0, hi = 1;
    /* fractions stay within 0..100% unless a value is outside it */
    const int clamp_lo = spec->percent && lo >= 0, clamp_hi = spec->percent && hi <= 1;
    if (!spec->percent)
        lo = fmin(lo, 0); /* losses from zero: the phase-2 drop reads at its true size */
    if (hi - lo < 1e-12) {
        const double pad = fabs(hi) > 1e-12 ? fabs(hi) * 0.1 : 0.5;
        lo -= pad, hi += pad;
    }
    double step = nice_step(hi - lo, 5);
    lo = floor(lo / step + 1e-9) * step;
    hi = ceil(hi / step - 1e-9) * step;
    if (clamp_lo)
        lo = fmax(lo, 0);
    if (clamp_hi)
        hi = fmin(hi, 1);
    if (hi <= lo)
        lo = 0, hi = 1, step = 0.2;
    const int last = n > 1 ? n : 2;
#define X(e) (PAD_L + ((double)(e) - 1) / (last - 1) * plot_w)
#define Y(v) (PAD_T + (hi - (v)) / (hi - lo) * plot_h)

    sb_printf(b,
              "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"curve\" width=\"%d\" "
              "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\" aria-label=\"",
              CHART_W, CHART_H, CHART_W, CHART_H);
    sb_escape(b, spec->title);
    sb_puts(b, " per epoch\">\n");
    sb_printf(b, "<text class=\"title\" x=\"%d\" y=\"20\">", PAD_L);
    sb_escape(b, spec->title);
    sb_puts(b, "</text>\n");

    /* legend, top right */
    const double lx = CHART_W - PAD_R - 170;
    sb_printf(b,
              "<g class=\"key\"><line x1=\"%.1f\" y1=\"16\" x2=\"%.1f\" y2=\"16\" "
              "stroke=\"" TRAIN_COLOUR "\" stroke-width=\"2.5\"/>"
              "<text x=\"%.1f\" y=\"20\">train</text>"
              "<line x1=\"%.1f\" y1=\"16\" x2=\"%.1f\" y2=\"16\" stroke=\"" VAL_COLOUR "\" "
              "stroke-width=\"2.5\" stroke-dasharray=\"6 3\"/>"
              "<text x=\"%.1f\" y=\"20\">validation</text></g>\n",
              lx, lx + 22, lx + 27, lx + 70, lx + 92, lx + 97);

    /* y grid, ticks and labels */
    char label[32];
    for (int k = 0;; ++k) {
        const double v = lo + k * step;
        if (v > hi + step * 1e-6 || k > 50)
            break;
        const double y = Y(v);
        sb_printf(b,
                  "<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                  "<line class=\"axis\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>",
                  PAD_L, y, PAD_L + plot_w, y, PAD_L - 5, y, PAD_L, y);
        format_tick(label, sizeof label, v, step, spec->percent);
        sb_printf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", PAD_L - 8,
                  y + 4, label);
    }
    /* x ticks: every epoch, or multiples of a round step (and the first epoch) */
    int xstep = 1;
    while ((last - 1) / xstep > 12)
        xstep = next_round(xstep);
    for (int e = 1; e <= last; ++e) {
        if (e > n && n > 0)
            break;
        if (xstep > 1 && e % xstep != 0 && !(e == 1 && xstep >= 5))
            continue;
        const double x = X(e);
        sb_printf(b,
                  "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n",
                  x, PAD_T + plot_h, x, PAD_T + plot_h + 5, x, PAD_T + plot_h + 18, e);
    }
    sb_printf(b,
              "<line class=\"axis\" x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%.1f\"/>"
              "<line class=\"axis\" x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n",
              PAD_L, PAD_T, PAD_L, PAD_T + plot_h, PAD_L, PAD_T + plot_h, PAD_L + plot_w,
              PAD_T + plot_h);
    sb_printf(b, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">epoch</text>\n",
              PAD_L + plot_w / 2, CHART_H - 8);
    sb_printf(b,
              "<text x=\"14\" y=\"%.1f\" text-anchor=\"middle\" transform=\"rotate(-90 14 %.1f)\">",
              PAD_T + plot_h / 2, PAD_T + plot_h / 2);
    sb_escape(b, spec->y_label);
    sb_puts(b, "</text>\n");

    /* the phase-2 boundary, halfway between its neighbouring epochs */
    const int p2 = in->phase2_first_epoch;
    if (p2 > 0 && p2 < n) {
        const double x = X(p2 + 0.5);
        sb_printf(b,
                  "<g class=\"phase-marker\"><line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.1f\"/>"
                  "<text x=\"%.1f\" y=\"%d\" text-anchor=\"end\">phase 1</text>"
                  "<text x=\"%.1f\" y=\"%d\">phase 2 (fine-tuning)</text></g>\n",
                  x, PAD_T - 4, x, PAD_T + plot_h, x - 5, PAD_T - 8, x + 5, PAD_T - 8);
    }

    if (empty) {
        sb_printf(b, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no data</text>\n",
                  PAD_L + plot_w / 2, PAD_T + plot_h / 2);
    }
    /* the series: a path broken at missing values, and a dot (with a tooltip) per epoch */
    for (int s = 0; s < 2; ++s) {
        const size_t off = s ? spec->val_off : spec->train_off;
        const char *colour = s ? VAL_COLOUR : TRAIN_COLOUR;
        sb_printf(b, "<path class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" "
                     "stroke-linejoin=\"round\"%s d=\"",
                  s ? "val" : "train", colour, s ? " stroke-dasharray=\"6 3\"" : "");
        int pen = 0;
        for (int i = 0; i < n; ++i) {
            const double v = metric(&in->history[i], off);
            if (!isfinite(v)) {
                pen = 0;
                continue;
            }
            sb_printf(b, "%s%.1f %.1f", pen ? " L" : " M", X(i + 1), Y(v));
            pen = 1;
        }
        sb_puts(b, "\"/>\n");
        if (n > 200)
            continue;
        /* beyond 30 epochs the dots would crowd the line: they stay, unpainted, for
         * their tooltips */
        const char *dot = n > 30 ? "r=\"4\" fill-opacity=\"0\"" : "r=\"2.8\"";
        for (int i = 0; i < n; ++i) {
            const double v = metric(&in->history[i], off);
            if (!isfinite(v))
                continue;
            sb_printf(b, "<circle cx=\"%.1f\" cy=\"%.1f\" %s fill=\"%s\"><title>epoch %d, %s %s: ",
                      X(i + 1), Y(v), dot, colour, i + 1, s ? "validation" : "train",
                      spec->percent ? "accuracy" : "loss");
            if (spec->percent)
                sb_printf(b, "%.2f%%", v * 100);
            else
                sb_printf(b, "%.4g", v);
            sb_puts(b, "</title></circle>\n");
        }
    }
    sb_puts(b, "</svg>\n");
#undef X
#undef Y
}

/* ---- confusion matrix ------------------------------------------------------------------ */

/* White towards `to` by t in [0,1], as #rrggbb. */
static void mix(char out[8], const int to[3], double t)
{
    int c[3];
    for (int k = 0; k < 3; ++k)
        c[k] = (int)lround(255 + (to[k] - 255) * t);
    snprintf(out, 8, "#%02x%02x%02x", c[0], c[1], c[2]);
}

static const int correct_rgb[3] = {29, 78, 216}, confused_rgb[3] = {220, 38, 38};

static void confusion_matrix(sbuf *b, const report_input *in)
{
    const int64_t n = in->n_classes;
    size_t longest = 0, longest_word = 0;
    for (int64_t c = 0; c < n; ++c) {
        const size_t len = class_name_length(in, c);
        longest = len > longest ? len : longest;
        const char *name = in->class_names ? in->class_names[c] : NULL;
        for (size_t k = 0, word = 0; name && k <= len; ++k) {
            word = k < len && name[k] != ' ' ? word + 1 : 0;
            longest_word = word > longest_word ? word : longest_word;
        }
    }
    /* Few classes: names wrap at spaces within 6em. Many classes, or a name that
     * would not wrap well, stand upright. */
    const int rotate = n > 8 || longest > 28 || longest_word > 10;
    sb_printf(b, "<div class=\"cm-wrap\"><table class=\"cm%s%s\">\n", rotate ? " rot" : "",
              n > 36 ? " tiny" : n > 18 ? " small" : "");
    sb_printf(b,
              "<thead><tr><th colspan=\"2\"></th><th class=\"axis\" colspan=\"%" PRId64
              "\">predicted</th></tr>\n<tr><th colspan=\"2\"></th>",
              n);
    for (int64_t c = 0; c < n; ++c) {
        sb_puts(b, "<th class=\"col\" title=\"");
        put_class(b, in, c);
        sb_puts(b, "\"><span>");
        put_class(b, in, c);
        sb_puts(b, "</span></th>");
    }
    sb_puts(b, "</tr></thead>\n<tbody>\n");
    for (int64_t t = 0; t < n; ++t) {
        int64_t row = 0;
        for (int64_t p = 0; p < n; ++p)
            row += in->confusion[t * n + p];
        sb_puts(b, "<tr>");
        if (t == 0)
            sb_printf(b, "<th class=\"axis true\" rowspan=\"%" PRId64 "\"><span>true</span></th>",
                      n);
        sb_puts(b, "<th class=\"row\" title=\"");
        put_class(b, in, t);
        sb_puts(b, "\">");
        put_class(b, in, t);
        sb_puts(b, "</th>");
        for (int64_t p = 0; p < n; ++p) {
            const int64_t count = in->confusion[t * n + p];
            const double share = row > 0 ? (double)count / (double)row : 0.0;
            /* sqrt lifts small shares: a 5% confusion still shows */
            const double t_colour = sqrt(share);
            char bg[8];
            mix(bg, t == p ? correct_rgb : confused_rgb, t_colour);
            sb_printf(b, "<td%s style=\"background:%s%s\" title=\"true ",
                      count ? "" : " class=\"zero\"", bg, t_colour > 0.62 ? ";color:#fff" : "");
            put_class(b, in, t);
            sb_puts(b, ", predicted ");
            put_class(b, in, p);
            sb_printf(b, ": %" PRId64 " (%.1f%% of the class)\">%" PRId64 "</td>", count,
                      share * 100, count);
        }
        sb_puts(b, "</tr>\n");
    }
    char c0[8], c1[8], e0[8], e1[8];
    mix(c0, correct_rgb, 0);
    mix(c1, correct_rgb, 1);
    mix(e0, confused_rgb, 0);
    mix(e1, confused_rgb, 1);
    sb_printf(b,
              "</tbody></table></div>\n<div class=\"legend\"><span>correct <span class=\"bar\" "
              "style=\"background:linear-gradient(90deg,%s,%s)\"></span></span><span>confused "
              "<span class=\"bar\" style=\"background:linear-gradient(90deg,%s,%s)\"></span>"
              "</span></div>\n"
              "<p class=\"note\">Rows are the true classes, columns the predictions. Each cell "
              "holds a count; its colour is the share of its row (0 to 100%% of the true class, "
              "on a square-root scale so that small confusions show).</p>\n",
              c0, c1, e0, e1);
}

/* ---- per-class metrics --------------------------------------------------------------- */

static graft_status class_table(sbuf *b, const report_input *in)
{
    const int64_t n = in->n_classes;
    double *values = graft__calloc((size_t)n * 3, sizeof(double));
    int64_t *support = graft__calloc((size_t)n, sizeof(int64_t));
    if (!values || !support) {
        graft__free(values);
        graft__free(support);
        return graft__fail(GRAFT_E_NOMEM, "report: no memory for %" PRId64 " classes", n);
    }
    double *precision = values, *recall = values + n, *f1 = values + 2 * n;
    report_class_metrics(in->confusion, n, precision, recall, f1, support);
    sb_printf(b, "<table class=\"metrics%s\"><thead>", n > 16 ? " compact" : "");
    sb_puts(b, "<tr><th>class</th><th>precision</th>"
               "<th>recall</th><th>F1</th><th>support</th></tr></thead>\n<tbody>\n");
    int64_t total = 0, hits = 0;
    double macro[3] = {0}, weighted[3] = {0};
    for (int64_t c = 0; c < n; ++c) {
        const double v[3] = {precision[c], recall[c], f1[c]};
        sb_puts(b, "<tr><td>");
        put_class(b, in, c);
        sb_puts(b, "</td>");
        for (int k = 0; k < 3; ++k) {
            sb_printf(b, "<td%s>%.3f</td>", v[k] < 0.5 && support[c] > 0 ? " class=\"low\"" : "",
                      v[k]);
            macro[k] += v[k];
            weighted[k] += v[k] * (double)support[c];
        }
        sb_printf(b, "<td>%" PRId64 "</td></tr>\n", support[c]);
        total += support[c];
        hits += in->confusion[c * n + c];
    }
    sb_puts(b, "</tbody>\n<tbody class=\"totals\">\n");
    const char *names[2] = {"macro average", "weighted average"};
    for (int r = 0; r < 2; ++r) {
        sb_printf(b, "<tr class=\"avg\"><td>%s</td>", names[r]);
        for (int k = 0; k < 3; ++k) {
            const double v = r == 0 ? macro[k] / (double)n
                                    : total > 0 ? weighted[k] / (double)total : 0.0;
            sb_printf(b, "<td>%.3f</td>", v);
        }
        sb_printf(b, "<td>%" PRId64 "</td></tr>\n", total);
    }
    sb_printf(b,
              "<tr class=\"avg\"><td>accuracy</td><td></td><td></td><td>%.3f</td><td>%" PRId64
              "</td></tr>\n</tbody></table>\n",
              total > 0 ? (double)hits / (double)total : 0.0, total);
    sb_puts(b, "<p class=\"note\">Precision: of the images predicted as the class, the share that "
               "are; recall: of the images of the class, the share found; F1: their harmonic "
               "mean; support: images of the class. A class never predicted has precision 0. "
               "The macro average weighs classes alike, the weighted one by support.</p>\n");
    graft__free(values);
    graft__free(support);
    return GRAFT_OK;
}

/* ---- thumbnails ----------------------------------------------------------------------- */

/* The example as 8-bit RGB, box-filtered down to REPORT_THUMB_MAX on its long side. */
static unsigned char *thumbnail(const report_example *e, int *tw, int *th)
{
    const int64_t h = e->height, w = e->width;
    const int64_t longest = h > w ? h : w;
    int64_t oh = h, ow = w;
    if (longest > REPORT_THUMB_MAX) {
        oh = (h * REPORT_THUMB_MAX + longest / 2) / longest;
        ow = (w * REPORT_THUMB_MAX + longest / 2) / longest;
        oh = oh < 1 ? 1 : oh;
        ow = ow < 1 ? 1 : ow;
    }
    unsigned char *out = graft__malloc((size_t)(oh * ow * 3));
    if (!out)
        return NULL;
    for (int64_t y = 0; y < oh; ++y) {
        const int64_t y0 = y * h / oh, y1 = (y + 1) * h / oh;
        for (int64_t x = 0; x < ow; ++x) {
            const int64_t x0 = x * w / ow, x1 = (x + 1) * w / ow;
            for (int k = 0; k < 3; ++k) {
                double sum = 0;
                for (int64_t sy = y0; sy < y1; ++sy)
                    for (int64_t sx = x0; sx < x1; ++sx) {
                        const float v = e->rgb[(sy * w + sx) * 3 + k];
                        sum += isfinite(v) ? v : 0;
                    }
                const double mean = sum / (double)((y1 - y0) * (x1 - x0));
                out[(y * ow + x) * 3 + k] =
                    (unsigned char)lround(mean < 0 ? 0 : mean > 255 ? 255 : mean);
            }
        }
    }
    *tw = (int)ow;
    *th = (int)oh;
    return out;
}

static graft_status put_png(sbuf *b, const report_example *e, int index)
{
    int w, h;
    unsigned char *pixels = thumbnail(e, &w, &h);
    if (!pixels)
        return graft__fail(GRAFT_E_NOMEM, "report: no memory for thumbnail %d", index);
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = (png_uint_32)w;
    image.height = (png_uint_32)h;
    image.format = PNG_FORMAT_RGB;
    png_alloc_size_t size = 0;
    unsigned char *png = NULL;
    int ok = png_image_write_to_memory(&image, NULL, &size, 0, pixels, 0, NULL);
    if (ok && !(png = graft__malloc(size))) {
        graft__free(pixels);
        return graft__fail(GRAFT_E_NOMEM, "report: no memory for thumbnail %d", index);
    }
    if (ok)
        ok = png_image_write_to_memory(&image, png, &size, 0, pixels, 0, NULL);
    graft__free(pixels);
    if (!ok) {
        graft__free(png);
        return graft__fail(GRAFT_E_FORMAT, "report: thumbnail %d: PNG encoding failed: %s", index,
                           image.message);
    }
    sb_printf(b, "<img width=\"%d\" height=\"%d\" src=\"data:image/png;base64,", w, h);
    sb_base64(b, png, size);
    sb_puts(b, "\" alt=\"");
    sb_escape(b, e->name ? e->name : "validation image");
    sb_puts(b, "\">");
    graft__free(png);
    return GRAFT_OK;
}

static graft_status wrong_grid(sbuf *b, const report_input *in)
{
    if (in->n_wrong == 0) {
        sb_puts(b, "<p class=\"note\">No validation image was misclassified.</p>\n");
        return GRAFT_OK;
    }
    sb_puts(b, "<div class=\"wrong\">\n");
    for (int i = 0; i < in->n_wrong; ++i) {
        const report_example *e = &in->wrong[i];
        sb_puts(b, "<figure>");
        graft_status rc = put_png(b, e, i);
        if (rc != GRAFT_OK)
            return rc;
        sb_puts(b, "<figcaption>true: ");
        put_class(b, in, e->true_class);
        sb_puts(b, " / predicted: ");
        put_class(b, in, e->predicted_class);
        if (isfinite(e->probability))
            sb_printf(b, " (p=%.2f)", e->probability);
        if (e->name) {
            /* the file and its folder (often the class) show; the whole path hovers */
            const char *shown = e->name + strlen(e->name);
            for (int slashes = 0; shown > e->name; --shown)
                if (shown[-1] == '/' && ++slashes == 2)
                    break;
            sb_puts(b, "<span class=\"name\" title=\"");
            sb_escape(b, e->name);
            sb_puts(b, "\">");
            sb_escape(b, shown);
            sb_puts(b, "</span>");
        }
        sb_puts(b, "</figcaption></figure>\n");
    }
    sb_puts(b, "</div>\n<p class=\"note\">The validation images predicted wrong with the highest "
               "probability, most confident first.</p>\n");
    return GRAFT_OK;
}

/* ---- the page ---------------------------------------------------------------------------- */

static graft_status check_input(const report_input *in, const char *path)
{
    if (!in)
        return graft__fail(GRAFT_E_INVALID_ARG, "report: no input");
    if (!path || !*path)
        return graft__fail(GRAFT_E_INVALID_ARG, "report: no path to write to");
    if (in->n_classes < 1 || in->n_classes > 10000)
        return graft__fail(GRAFT_E_INVALID_ARG, "report: %" PRId64 " classes", in->n_classes);
    if (!in->confusion)
        return graft__fail(GRAFT_E_INVALID_ARG, "report: no confusion matrix");
    if (in->n_epochs < 0 || (in->n_epochs > 0 && !in->history))
        return graft__fail(GRAFT_E_INVALID_ARG, "report: %d epochs of history", in->n_epochs);
    if (in->n_summary < 0 || (in->n_summary > 0 && (!in->summary_keys || !in->summary_values)))
        return graft__fail(GRAFT_E_INVALID_ARG, "report: %d summary entries", in->n_summary);
    if (in->n_wrong < 0 || (in->n_wrong > 0 && !in->wrong))
        return graft__fail(GRAFT_E_INVALID_ARG, "report: %d wrong examples", in->n_wrong);
    for (int64_t k = 0; k < in->n_classes * in->n_classes; ++k)
        if (in->confusion[k] < 0)
            return graft__fail(GRAFT_E_INVALID_ARG, "report: negative count in confusion matrix");
    for (int i = 0; i < in->n_wrong; ++i) {
        const report_example *e = &in->wrong[i];
        if (!e->rgb || e->height < 1 || e->width < 1 || e->height > 32768 || e->width > 32768)
            return graft__fail(GRAFT_E_INVALID_ARG, "report: example %d is %" PRId64 "x%" PRId64
                                                    "%s",
                               i, e->height, e->width, e->rgb ? "" : " without pixels");
        if (e->true_class < 0 || e->true_class >= in->n_classes || e->predicted_class < 0 ||
            e->predicted_class >= in->n_classes)
            return graft__fail(GRAFT_E_INVALID_ARG,
                               "report: example %d has classes %d and %d, not below %" PRId64, i,
                               (int)e->true_class, (int)e->predicted_class, in->n_classes);
    }
    return GRAFT_OK;
}

static graft_status build(sbuf *b, const report_input *in)
{
    const char *title = in->title && *in->title ? in->title : "graft training report";
    sb_puts(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
               "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<title>");
    sb_escape(b, title);
    sb_printf(b, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<main>\n<header><h1>", style);
    sb_escape(b, title);
    sb_puts(b, "</h1><p>graft training report</p></header>\n");

    if (in->n_summary > 0) {
        sb_puts(b, "<section class=\"summary\"><h2>Summary</h2>\n<table class=\"summary\">\n");
        for (int i = 0; i < in->n_summary; ++i) {
            sb_puts(b, "<tr><th>");
            sb_escape(b, in->summary_keys[i]);
            sb_puts(b, "</th><td>");
            sb_escape(b, in->summary_values[i]);
            sb_puts(b, "</td></tr>\n");
        }
        sb_puts(b, "</table></section>\n");
    }

    sb_puts(b, "<section class=\"curves\"><h2>Learning curves</h2>\n<div class=\"charts\">\n");
    const chart_spec loss = {"Loss", "cross-entropy loss", 0,
                             offsetof(graft_epoch_metrics, train_loss),
                             offsetof(graft_epoch_metrics, val_loss)};
    const chart_spec accuracy = {"Accuracy", "accuracy", 1,
                                 offsetof(graft_epoch_metrics, train_accuracy),
                                 offsetof(graft_epoch_metrics, val_accuracy)};
    chart(b, in, &loss);
    chart(b, in, &accuracy);
    sb_puts(b, "</div>\n");
    int has_val = 0;
    for (int i = 0; i < in->n_epochs; ++i)
        has_val |= isfinite(in->history[i].val_loss) || isfinite(in->history[i].val_accuracy);
    if (in->n_epochs > 0 && !has_val)
        sb_puts(b, "<p class=\"note\">No validation data: only the training curves are "
                   "drawn.</p>\n");
    sb_puts(b, "</section>\n");

    sb_puts(b, "<section class=\"confusion\"><h2>Confusion matrix (validation)</h2>\n");
    confusion_matrix(b, in);
    sb_puts(b, "</section>\n");

    sb_puts(b, "<section class=\"per-class\"><h2>Per-class metrics (validation)</h2>\n");
    graft_status rc = class_table(b, in);
    if (rc != GRAFT_OK)
        return rc;
    sb_puts(b, "</section>\n");

    sb_puts(b, "<section class=\"wrong-images\"><h2>Most confidently wrong validation "
               "images</h2>\n");
    rc = wrong_grid(b, in);
    if (rc != GRAFT_OK)
        return rc;
    sb_printf(b, "</section>\n<footer>graft %d.%d.%d</footer>\n</main>\n</body>\n</html>\n",
              GRAFT_VERSION_MAJOR, GRAFT_VERSION_MINOR, GRAFT_VERSION_PATCH);
    return b->oom ? graft__fail(GRAFT_E_NOMEM, "report: no memory for the page") : GRAFT_OK;
}

graft_status report_write_html(const report_input *in, const char *path)
{
    graft_status rc = check_input(in, path);
    if (rc != GRAFT_OK)
        return rc;
    sbuf b = {0};
    rc = build(&b, in);
    if (rc != GRAFT_OK) {
        graft__free(b.data);
        return rc;
    }
    const size_t plen = strlen(path);
    char *tmp = graft__malloc(plen + 5);
    if (!tmp) {
        graft__free(b.data);
        return graft__fail(GRAFT_E_NOMEM, "report: no memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = graft__fail(GRAFT_E_IO, "%s: %s", tmp, strerror(errno));
    } else {
        int ok = fwrite(b.data, 1, b.len, f) == b.len, err = errno;
        if (fflush(f) != 0 || fsync(fileno(f)) != 0)
            ok = ok ? (err = errno, 0) : 0;
        if (fclose(f) != 0)
            ok = ok ? (err = errno, 0) : 0;
        if (ok && rename(tmp, path) != 0)
            ok = 0, err = errno;
        if (!ok) {
            unlink(tmp);
            rc = graft__fail(GRAFT_E_IO, "%s: cannot write report: %s", path, strerror(err));
        }
    }
    graft__free(tmp);
    graft__free(b.data);
    return rc;
}
