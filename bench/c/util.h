/* Small helpers shared by the benchmark tools: the clock, latency
 * statistics, option parsing and JSON string output. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* CLOCK_MONOTONIC in nanoseconds: the clock Node's process.hrtime.bigint()
 * reads on Linux, so timestamps compare across processes. */
uint64_t now_ns(void);

/* A growable list of samples (nanoseconds). */
typedef struct {
    uint64_t *v;
    size_t n;
    size_t cap;
} samples_t;

int samples_init(samples_t *s, size_t cap);
int samples_push(samples_t *s, uint64_t value);
void samples_free(samples_t *s);

typedef struct {
    size_t n;
    double p50_us, p90_us, p99_us, mean_us, min_us, max_us;
} latency_stats_t;

/* Sorts the samples in place and fills in nearest-rank percentiles. */
void samples_stats(samples_t *s, latency_stats_t *out);

/* Strict decimal parsing: the whole string must be a number in range. */
int parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out);
int parse_double(const char *text, double min, double max, double *out);

/* Writes text as a JSON string literal, quotes included. */
void json_string(FILE *f, const char *text);

/* Writes "name":{"n":..,"p50_us":..,...} (without a leading comma). */
void json_latency(FILE *f, const char *name, const latency_stats_t *st);
