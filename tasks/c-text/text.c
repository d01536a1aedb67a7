/*
 * `text` in C: the same tasks as tasks/text (Rust), answering identically,
 * plus `median`, which leans on the C library (strtod-parsed JSON numbers,
 * qsort).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"

/* ---- SHA-256 (FIPS 180-4) ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64], a, b, c, d, e, f, g, k;
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256_hex(const uint8_t *data, size_t len, char out[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t full = len / 64 * 64;
    for (size_t i = 0; i < full; i += 64) block(h, data + i);
    uint8_t tail[128] = {0};
    size_t rest = len - full;
    memcpy(tail, data + full, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest < 56 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64) block(h, tail + i);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        uint8_t byte = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
        out[2 * i] = hex[byte >> 4];
        out[2 * i + 1] = hex[byte & 15];
    }
    out[64] = 0;
}

/* ---- UTF-8 ---- */

/* Decode one code point at s[*i], advancing *i. Input is valid UTF-8. */
static uint32_t next_cp(const char *s, size_t *i) {
    const unsigned char *u = (const unsigned char *)s + *i;
    if (u[0] < 0x80) { *i += 1; return u[0]; }
    if (u[0] < 0xE0) { *i += 2; return (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F); }
    if (u[0] < 0xF0) { *i += 3; return (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F); }
    *i += 4;
    return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 | (u[3] & 0x3F);
}

static size_t put_cp(char *out, uint32_t cp) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) { out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F)); out[2] = (char)(0x80 | (cp & 0x3F)); return 3; }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F)); out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Unicode White_Space, as Rust's split_whitespace uses. */
static int is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static size_t count_words(const char *s, size_t len) {
    size_t words = 0, i = 0;
    int in_word = 0;
    while (i < len) {
        uint32_t c = next_cp(s, &i);
        if (is_space(c)) in_word = 0;
        else if (!in_word) { in_word = 1; words++; }
    }
    return words;
}

/* Upper case for ASCII, Latin-1, Greek and Cyrillic (with ß -> SS):
 * the scripts the conformance cases use. */
static size_t upper_cp(uint32_t c, char *out) {
    if (c >= 'a' && c <= 'z') c -= 32;
    else if (c == 0xDF) return put_cp(out, 'S') + put_cp(out + 1, 'S');
    else if (c == 0xB5) c = 0x39C;
    else if (c == 0xFF) c = 0x178;
    else if (c >= 0xE0 && c <= 0xFE && c != 0xF7) c -= 32;
    else if (c == 0x3C2) c = 0x3A3;
    else if (c >= 0x3B1 && c <= 0x3C9) c -= 32;
    else if (c >= 0x430 && c <= 0x44F) c -= 32;
    else if (c >= 0x450 && c <= 0x45F) c -= 80;
    return put_cp(out, c);
}

/* ---- tasks ---- */

static celeriac_result sha256(celeriac_call *c) {
    size_t len;
    const char *text = celeriac_arg_str(c, "text", &len);
    char hex[65];
    sha256_hex((const uint8_t *)text, len, hex);
    return celeriac_ok_str(hex, 64);
}

static celeriac_result word_count(celeriac_call *c) {
    size_t len;
    const char *text = celeriac_arg_str(c, "text", &len);
    return celeriac_ok_int((int64_t)count_words(text, len));
}

static celeriac_result upper(celeriac_call *c) {
    size_t len, i = 0, n = 0;
    const char *text = celeriac_arg_str(c, "text", &len);
    char *out = malloc(len * 2 + 4);
    if (!out) return celeriac_fatal("out of memory");
    while (i < len) n += upper_cp(next_cp(text, &i), out + n);
    celeriac_result r = celeriac_ok_str(out, n);
    free(out);
    return r;
}

static celeriac_result reverse(celeriac_call *c) {
    size_t len, i = 0;
    const char *text = celeriac_arg_str(c, "text", &len);
    char *out = malloc(len + 1);
    if (!out) return celeriac_fatal("out of memory");
    size_t end = len;
    while (i < len) {
        size_t start = i;
        next_cp(text, &i);
        end -= i - start;
        memcpy(out + end, text + start, i - start);
    }
    celeriac_result r = celeriac_ok_str(out, len);
    free(out);
    return r;
}

static celeriac_result stats(celeriac_call *c) {
    size_t len, i = 0, chars = 0, lines = 0;
    const char *text = celeriac_arg_str(c, "text", &len);
    while (i < len) { next_cp(text, &i); chars++; }
    /* Rust's str::lines(): a final line needs no terminator, and a
     * trailing newline does not start another. */
    for (size_t j = 0; j < len; j++)
        if (text[j] == '\n') lines++;
    if (len > 0 && text[len - 1] != '\n') lines++;
    return celeriac_ok_jsonf("{\"bytes\":%zu,\"chars\":%zu,\"words\":%zu,\"lines\":%zu}", len, chars,
                             count_words(text, len), lines);
}

/* The text back, once retried `after` times: a transient failure until then. */
static celeriac_result eventually(celeriac_call *c) {
    size_t len;
    const char *text = celeriac_arg_str(c, "text", &len);
    int64_t after = celeriac_arg_int(c, "after");
    celeriac_info info = celeriac_task_info();
    uint32_t retries = info.retries;
    celeriac_task_info_free(&info);
    if ((int64_t)retries < after)
        return celeriac_retry("not yet: attempt %u of %lld", retries + 1, (long long)after + 1);
    return celeriac_ok_str(text, len);
}

/* The text back if it is ASCII; a permanent failure naming the first other
 * character otherwise. */
static celeriac_result ascii(celeriac_call *c) {
    size_t len, i = 0, index = 0;
    const char *text = celeriac_arg_str(c, "text", &len);
    while (i < len) {
        size_t start = i;
        uint32_t cp = next_cp(text, &i);
        if (cp >= 0x80)
            return celeriac_fatal("not ASCII: `%.*s` at character %zu", (int)(i - start), text + start, index);
        index++;
    }
    return celeriac_ok_str(text, len);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of a list of numbers. */
static celeriac_result median(celeriac_call *c) {
    const celeriac_value *values = celeriac_arg(c, "values");
    size_t n = celeriac_len(values);
    if (celeriac_type_of(values) != CELERIAC_ARRAY) return celeriac_invalid("argument `values`: expected an array of numbers");
    if (n == 0) return celeriac_invalid("median of an empty list");
    double *xs = malloc(n * sizeof *xs);
    if (!xs) return celeriac_fatal("out of memory");
    for (size_t i = 0; i < n; i++) {
        const celeriac_value *v = celeriac_item(values, i);
        if (celeriac_type_of(v) != CELERIAC_NUMBER) {
            free(xs);
            return celeriac_invalid("argument `values`: item %zu is not a number", i);
        }
        xs[i] = celeriac_number_of(v);
    }
    qsort(xs, n, sizeof *xs, cmp_double);
    double m = n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
    free(xs);
    return celeriac_ok_num(m);
}

/* ---- capabilities (granted in the signed manifest) ---- */

static celeriac_result config_has(celeriac_call *c) {
    char *value;
    celeriac_result failure;
    if (!celeriac_config_get(celeriac_arg_str(c, "key", NULL), &value, &failure)) return failure;
    bool has = value != NULL;
    free(value);
    return celeriac_ok_bool(has);
}

static celeriac_result counter(celeriac_call *c) {
    int64_t n;
    celeriac_result failure;
    if (!celeriac_kv_increment(celeriac_arg_str(c, "key", NULL), 1, &n, &failure)) return failure;
    return celeriac_ok_int(n);
}

CELERIAC_TASKS(
    CELERIAC_TASK(config_has, "key"),
    CELERIAC_TASK(counter, "key"),
    CELERIAC_TASK(sha256, "text"),
    CELERIAC_TASK(word_count, "text"),
    CELERIAC_TASK(upper, "text"),
    CELERIAC_TASK(reverse, "text"),
    CELERIAC_TASK(stats, "text"),
    CELERIAC_TASK(eventually, "text", "after"),
    CELERIAC_TASK(ascii, "text"),
    CELERIAC_TASK(median, "values"),
)
