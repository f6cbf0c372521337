#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

uint64_t now_ns(void)
{
    struct timespec ts;

    /* Cannot fail for CLOCK_MONOTONIC with a valid pointer. */
    (void)clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

int samples_init(samples_t *s, size_t cap)
{
    s->n = 0;
    s->cap = cap > 0 ? cap : 1024;
    s->v = malloc(s->cap * sizeof(*s->v));
    return s->v ? 0 : -ENOMEM;
}

int samples_push(samples_t *s, uint64_t value)
{
    if (s->n == s->cap) {
        size_t cap = s->cap * 2;
        uint64_t *v = realloc(s->v, cap * sizeof(*v));

        if (!v)
            return -ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = value;
    return 0;
}

void samples_free(samples_t *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least p% of samples <= it. */
static double percentile_us(const samples_t *s, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)s->n);

    if (rank < 1)
        rank = 1;
    return (double)s->v[rank - 1] / 1000.0;
}

void samples_stats(samples_t *s, latency_stats_t *out)
{
    long double sum = 0;

    *out = (latency_stats_t){ .n = s->n };
    if (s->n == 0)
        return;
    qsort(s->v, s->n, sizeof(*s->v), cmp_u64);
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    out->p50_us = percentile_us(s, 50);
    out->p90_us = percentile_us(s, 90);
    out->p99_us = percentile_us(s, 99);
    out->mean_us = (double)(sum / s->n / 1000.0L);
    out->min_us = (double)s->v[0] / 1000.0;
    out->max_us = (double)s->v[s->n - 1] / 1000.0;
}

int parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (!text || *text < '0' || *text > '9')
        return -EINVAL;
    errno = 0;
    v = strtoull(text, &end, 10);
    if (errno || *end || v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

int parse_double(const char *text, double min, double max, double *out)
{
    char *end;
    double v;

    if (!text || !*text)
        return -EINVAL;
    errno = 0;
    v = strtod(text, &end);
    if (errno || *end || !isfinite(v) || v < min || v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

void json_string(FILE *f, const char *text)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

void json_latency(FILE *f, const char *name, const latency_stats_t *st)
{
    json_string(f, name);
    fprintf(f, ":{\"n\":%zu,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
               "\"mean_us\":%.1f,\"min_us\":%.1f,\"max_us\":%.1f}",
            st->n, st->p50_us, st->p90_us, st->p99_us, st->mean_us,
            st->min_us, st->max_us);
}
