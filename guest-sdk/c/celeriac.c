/*
 * The C SDK: JSON in and out, argument binding, and the `task` world's
 * exports on top of the wit-bindgen C bindings (task.h, generated at build).
 */
#include "celeriac.h"
#include "task.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* JSON                                                                */

struct celeriac_value {
    celeriac_type type;
    bool b;
    double n;
    char *s; /* string, NUL-terminated */
    size_t len; /* string bytes, or item / member count */
    celeriac_value *items; /* array items or object values */
    char **keys; /* object keys */
};

typedef struct {
    const char *p, *end;
    const char *error;
} parser;

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) abort(); /* out of memory: the host reports the memory limit */
    return q;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')) ps->p++;
}

static bool parse_value(parser *ps, celeriac_value *out, int depth);

static void put_utf8(char **buf, size_t *len, size_t *cap, uint32_t cp) {
    char tmp[4];
    size_t n;
    if (cp < 0x80) { tmp[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { tmp[0] = (char)(0xC0 | (cp >> 6)); tmp[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) { tmp[0] = (char)(0xE0 | (cp >> 12)); tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); tmp[2] = (char)(0x80 | (cp & 0x3F)); n = 3; }
    else { tmp[0] = (char)(0xF0 | (cp >> 18)); tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F)); tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); tmp[3] = (char)(0x80 | (cp & 0x3F)); n = 4; }
    if (*len + n + 1 > *cap) { *cap = (*cap + n + 1) * 2; *buf = xrealloc(*buf, *cap); }
    memcpy(*buf + *len, tmp, n);
    *len += n;
}

static int hex4(const char *p, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

static bool parse_string(parser *ps, char **out, size_t *out_len) {
    ps->p++; /* opening quote */
    size_t cap = 16, len = 0;
    char *buf = xrealloc(NULL, cap);
    while (ps->p < ps->end && *ps->p != '"') {
        unsigned char c = (unsigned char)*ps->p;
        if (c < 0x20) { ps->error = "control character in string"; free(buf); return false; }
        if (c != '\\') {
            if (len + 2 > cap) { cap *= 2; buf = xrealloc(buf, cap); }
            buf[len++] = (char)c;
            ps->p++;
            continue;
        }
        if (ps->end - ps->p < 2) break;
        char e = ps->p[1];
        ps->p += 2;
        uint32_t cp;
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (ps->end - ps->p < 4 || !hex4(ps->p, &cp)) { ps->error = "bad \\u escape"; free(buf); return false; }
            ps->p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                uint32_t lo;
                if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' || !hex4(ps->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    ps->error = "unpaired surrogate"; free(buf); return false;
                }
                ps->p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                ps->error = "unpaired surrogate"; free(buf); return false;
            }
            break;
        default: ps->error = "bad escape"; free(buf); return false;
        }
        put_utf8(&buf, &len, &cap, cp);
    }
    if (ps->p >= ps->end) { ps->error = "unterminated string"; free(buf); return false; }
    ps->p++; /* closing quote */
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return true;
}

static bool parse_value(parser *ps, celeriac_value *out, int depth) {
    memset(out, 0, sizeof *out);
    if (depth > 128) { ps->error = "nested too deeply"; return false; }
    skip_ws(ps);
    if (ps->p >= ps->end) { ps->error = "unexpected end of input"; return false; }
    char c = *ps->p;
    if (c == '"') {
        out->type = CELERIAC_STRING;
        return parse_string(ps, &out->s, &out->len);
    }
    if (c == '[' || c == '{') {
        bool obj = c == '{';
        out->type = obj ? CELERIAC_OBJECT : CELERIAC_ARRAY;
        ps->p++;
        size_t cap = 0;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) { ps->p++; return true; }
        for (;;) {
            if (out->len == cap) {
                cap = cap ? cap * 2 : 4;
                out->items = xrealloc(out->items, cap * sizeof *out->items);
                if (obj) out->keys = xrealloc(out->keys, cap * sizeof *out->keys);
            }
            if (obj) {
                skip_ws(ps);
                size_t klen;
                if (ps->p >= ps->end || *ps->p != '"') { ps->error = "expected a key"; return false; }
                if (!parse_string(ps, &out->keys[out->len], &klen)) return false;
                skip_ws(ps);
                if (ps->p >= ps->end || *ps->p != ':') { free(out->keys[out->len]); ps->error = "expected ':'"; return false; }
                ps->p++;
            }
            if (!parse_value(ps, &out->items[out->len], depth + 1)) {
                if (obj) free(out->keys[out->len]);
                return false;
            }
            out->len++;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') { ps->p++; continue; }
            if (ps->p < ps->end && *ps->p == (obj ? '}' : ']')) { ps->p++; return true; }
            ps->error = obj ? "expected ',' or '}'" : "expected ',' or ']'";
            return false;
        }
    }
    if (ps->end - ps->p >= 4 && !strncmp(ps->p, "true", 4)) { out->type = CELERIAC_BOOL; out->b = true; ps->p += 4; return true; }
    if (ps->end - ps->p >= 5 && !strncmp(ps->p, "false", 5)) { out->type = CELERIAC_BOOL; ps->p += 5; return true; }
    if (ps->end - ps->p >= 4 && !strncmp(ps->p, "null", 4)) { out->type = CELERIAC_NULL; ps->p += 4; return true; }
    if (c == '-' || (c >= '0' && c <= '9')) {
        char *endp;
        out->type = CELERIAC_NUMBER;
        out->n = strtod(ps->p, &endp); /* the input is NUL-terminated */
        if (endp == ps->p) { ps->error = "bad number"; return false; }
        ps->p = endp;
        return true;
    }
    ps->error = "unexpected character";
    return false;
}

static void free_value(celeriac_value *v) {
    if (v->type == CELERIAC_STRING) free(v->s);
    if (v->type == CELERIAC_ARRAY || v->type == CELERIAC_OBJECT) {
        for (size_t i = 0; i < v->len; i++) {
            free_value(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
    memset(v, 0, sizeof *v);
}

/* Parse `len` bytes; on error returns false and a message in *error. */
static bool parse_json(const uint8_t *text, size_t len, celeriac_value *out, const char **error) {
    char *copy = xrealloc(NULL, len + 1);
    memcpy(copy, text, len);
    copy[len] = 0;
    parser ps = { copy, copy + len, NULL };
    bool ok = parse_value(&ps, out, 0);
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end) { ok = false; ps.error = "trailing characters"; free_value(out); }
    } else {
        free_value(out);
    }
    free(copy);
    *error = ps.error;
    return ok;
}

celeriac_type celeriac_type_of(const celeriac_value *v) { return v ? v->type : CELERIAC_NULL; }
bool celeriac_bool_of(const celeriac_value *v) { return v && v->type == CELERIAC_BOOL && v->b; }
double celeriac_number_of(const celeriac_value *v) { return v && v->type == CELERIAC_NUMBER ? v->n : 0; }
const char *celeriac_string_of(const celeriac_value *v, size_t *len) {
    if (!v || v->type != CELERIAC_STRING) { if (len) *len = 0; return NULL; }
    if (len) *len = v->len;
    return v->s;
}
size_t celeriac_len(const celeriac_value *v) {
    return v && (v->type == CELERIAC_ARRAY || v->type == CELERIAC_OBJECT) ? v->len : 0;
}
const celeriac_value *celeriac_item(const celeriac_value *v, size_t i) {
    return v && (v->type == CELERIAC_ARRAY || v->type == CELERIAC_OBJECT) && i < v->len ? &v->items[i] : NULL;
}
const celeriac_value *celeriac_member(const celeriac_value *v, const char *key) {
    if (!v || v->type != CELERIAC_OBJECT) return NULL;
    for (size_t i = 0; i < v->len; i++)
        if (!strcmp(v->keys[i], key)) return &v->items[i];
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Results                                                             */

static char *vformat(const char *fmt, va_list ap) {
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    char *buf = xrealloc(NULL, (size_t)(n < 0 ? 0 : n) + 1);
    vsnprintf(buf, (size_t)(n < 0 ? 0 : n) + 1, fmt, ap);
    return buf;
}

static celeriac_result make(int kind, char *text) {
    celeriac_result r = { kind, text, false, 0 };
    return r;
}

celeriac_result celeriac_ok_json(const char *json) { return make(0, strdup(json)); }

celeriac_result celeriac_ok_jsonf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return make(0, s);
}

char *celeriac_json_quote(const char *s, size_t len) {
    size_t cap = len + len / 8 + 16, n = 0;
    char *out = xrealloc(NULL, cap);
    out[n++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (n + 8 > cap) { cap *= 2; out = xrealloc(out, cap); }
        if (c == '"' || c == '\\') { out[n++] = '\\'; out[n++] = (char)c; }
        else if (c == '\n') { out[n++] = '\\'; out[n++] = 'n'; }
        else if (c == '\r') { out[n++] = '\\'; out[n++] = 'r'; }
        else if (c == '\t') { out[n++] = '\\'; out[n++] = 't'; }
        else if (c < 0x20) { n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c); }
        else out[n++] = (char)c;
    }
    out[n++] = '"';
    out[n] = 0;
    return out;
}

celeriac_result celeriac_ok_str(const char *s, size_t len) { return make(0, celeriac_json_quote(s, len)); }
celeriac_result celeriac_ok_int(int64_t v) { return celeriac_ok_jsonf("%lld", (long long)v); }
celeriac_result celeriac_ok_num(double v) {
    if (!isfinite(v)) return celeriac_ok_null();
    if (v == floor(v) && fabs(v) < 1e15) return celeriac_ok_jsonf("%.1f", v);
    return celeriac_ok_jsonf("%.17g", v);
}
celeriac_result celeriac_ok_bool(bool v) { return celeriac_ok_json(v ? "true" : "false"); }
celeriac_result celeriac_ok_null(void) { return celeriac_ok_json("null"); }

#define FAILURE_FN(fn, kind)                      \
    celeriac_result fn(const char *fmt, ...) {    \
        va_list ap;                               \
        va_start(ap, fmt);                        \
        char *s = vformat(fmt, ap);               \
        va_end(ap);                               \
        return make(kind, s);                     \
    }
FAILURE_FN(celeriac_retry, CELERIAC_RETRY)
FAILURE_FN(celeriac_fatal, CELERIAC_FATAL)
FAILURE_FN(celeriac_invalid, CELERIAC_INVALID)

celeriac_result celeriac_retry_after(uint64_t ms, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    celeriac_result r = make(CELERIAC_RETRY, vformat(fmt, ap));
    va_end(ap);
    r.has_retry_after = true;
    r.retry_after_ms = ms;
    return r;
}

/* ------------------------------------------------------------------ */
/* Argument binding                                                    */

struct celeriac_call {
    const celeriac_task_def *task;
    celeriac_value args, kwargs;
    char *error; /* first argument error, reported instead of the result */
};

static void arg_error(celeriac_call *c, char *message) {
    if (c->error) free(message);
    else c->error = message;
}

static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

/* At most QUOTE_CHARS characters (UTF-8 code points) of an argument in a
 * message, then "…", as every SDK does: a 100 KB argument must not make a
 * 100 KB failure message. Returns a malloc'd string. */
#define QUOTE_CHARS 64
static char *bounded(const char *s) {
    size_t i = 0, chars = 0;
    while (s[i] && chars < QUOTE_CHARS) {
        i++;
        while (((unsigned char)s[i] & 0xC0) == 0x80) i++; /* continuation bytes */
        chars++;
    }
    bool cut = s[i] != 0;
    char *out = xrealloc(NULL, i + (cut ? 4 : 1));
    memcpy(out, s, i);
    if (cut) memcpy(out + i, "\xe2\x80\xa6", 3); /* … */
    out[i + (cut ? 3 : 0)] = 0;
    return out;
}

static long param_index(const celeriac_task_def *t, const char *name) {
    for (long i = 0; t->params[i]; i++)
        if (!strcmp(t->params[i], name)) return i;
    return -1;
}

static const celeriac_value *lookup(celeriac_call *c, const char *name) {
    long i = param_index(c->task, name);
    if (i < 0) {
        arg_error(c, format("%s() has no parameter `%s` (declare it in CELERIAC_TASK)", c->task->name, name));
        return NULL;
    }
    if ((size_t)i < c->args.len) return &c->args.items[i];
    return celeriac_member(&c->kwargs, name);
}

bool celeriac_has_arg(celeriac_call *c, const char *name) {
    const celeriac_value *v = lookup(c, name);
    return v && v->type != CELERIAC_NULL;
}

const celeriac_value *celeriac_arg(celeriac_call *c, const char *name) {
    const celeriac_value *v = lookup(c, name);
    if (!v) arg_error(c, format("%s() missing required argument `%s`", c->task->name, name));
    return v;
}

static const char *type_name(const celeriac_value *v) {
    switch (v->type) {
    case CELERIAC_NULL: return "null";
    case CELERIAC_BOOL: return "a boolean";
    case CELERIAC_NUMBER: return "a number";
    case CELERIAC_STRING: return "a string";
    case CELERIAC_ARRAY: return "an array";
    default: return "an object";
    }
}

static const celeriac_value *typed(celeriac_call *c, const char *name, celeriac_type want, const char *what) {
    const celeriac_value *v = celeriac_arg(c, name);
    if (v && v->type != want) {
        arg_error(c, format("argument `%s`: expected %s, got %s", name, what, type_name(v)));
        return NULL;
    }
    return v;
}

const char *celeriac_arg_str(celeriac_call *c, const char *name, size_t *len) {
    const celeriac_value *v = typed(c, name, CELERIAC_STRING, "a string");
    if (len) *len = v ? v->len : 0;
    return v ? v->s : "";
}

int64_t celeriac_arg_int(celeriac_call *c, const char *name) {
    const celeriac_value *v = typed(c, name, CELERIAC_NUMBER, "an integer");
    if (!v) return 0;
    if (v->n != floor(v->n) || v->n < -9.2233720368547758e18 || v->n >= 9.2233720368547758e18) {
        arg_error(c, format("argument `%s`: expected an integer, got %g", name, v->n));
        return 0;
    }
    return (int64_t)v->n;
}

double celeriac_arg_num(celeriac_call *c, const char *name) {
    const celeriac_value *v = typed(c, name, CELERIAC_NUMBER, "a number");
    return v ? v->n : 0;
}

bool celeriac_arg_bool(celeriac_call *c, const char *name) {
    const celeriac_value *v = typed(c, name, CELERIAC_BOOL, "a boolean");
    return v && v->b;
}

/* ------------------------------------------------------------------ */
/* The host                                                            */

void celeriac_log(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    task_string_t msg = { (uint8_t *)s, strlen(s) };
    celeriac_task_context_log((celeriac_task_context_level_t)level, &msg);
    free(s);
}

bool celeriac_should_stop(void) { return celeriac_task_context_should_stop(); }

/* ---- capabilities ---- */

static task_string_t borrow(const char *s) { return (task_string_t){ (uint8_t *)s, strlen(s) }; }

static celeriac_result kv_failure(celeriac_task_kv_error_t *e) {
    task_string_t *m = &e->val.denied; /* every case carries a message */
    celeriac_result r = e->tag == CELERIAC_TASK_KV_ERROR_UNAVAILABLE
                            ? celeriac_retry("%.*s", (int)m->len, (const char *)m->ptr)
                            : celeriac_fatal("%.*s", (int)m->len, (const char *)m->ptr);
    celeriac_task_kv_error_free(e);
    return r;
}

bool celeriac_config_get(const char *key, char **value, celeriac_result *failure) {
    task_string_t k = borrow(key);
    task_option_string_t ret;
    wasi_config_store_error_t err;
    *value = NULL;
    if (!wasi_config_store_get(&k, &ret, &err)) {
        task_string_t *m = &err.val.upstream;
        *failure = celeriac_fatal("%.*s", (int)m->len, (const char *)m->ptr);
        wasi_config_store_error_free(&err);
        return false;
    }
    if (ret.is_some) {
        *value = xrealloc(NULL, ret.val.len + 1);
        memcpy(*value, ret.val.ptr, ret.val.len);
        (*value)[ret.val.len] = 0;
        task_option_string_free(&ret);
    }
    return true;
}

bool celeriac_kv_get(const char *key, char **value, size_t *len, celeriac_result *failure) {
    task_string_t k = borrow(key);
    task_option_list_u8_t ret;
    celeriac_task_kv_error_t err;
    *value = NULL;
    if (len) *len = 0;
    if (!celeriac_task_kv_get(&k, &ret, &err)) {
        *failure = kv_failure(&err);
        return false;
    }
    if (ret.is_some) {
        *value = xrealloc(NULL, ret.val.len + 1);
        memcpy(*value, ret.val.ptr, ret.val.len);
        (*value)[ret.val.len] = 0;
        if (len) *len = ret.val.len;
        task_option_list_u8_free(&ret);
    }
    return true;
}

static bool kv_store(const char *key, const void *value, size_t len, uint64_t ttl_ms, bool only_if_absent,
                     bool *stored, celeriac_result *failure) {
    task_string_t k = borrow(key);
    task_list_u8_t v = { (uint8_t *)value, len };
    uint64_t ttl = ttl_ms;
    celeriac_task_kv_error_t err;
    bool ok = only_if_absent ? celeriac_task_kv_set_if_absent(&k, &v, ttl_ms ? &ttl : NULL, stored, &err)
                             : celeriac_task_kv_set(&k, &v, ttl_ms ? &ttl : NULL, &err);
    if (!ok) *failure = kv_failure(&err);
    return ok;
}

bool celeriac_kv_set(const char *key, const void *value, size_t len, uint64_t ttl_ms, celeriac_result *failure) {
    return kv_store(key, value, len, ttl_ms, false, NULL, failure);
}

bool celeriac_kv_set_if_absent(const char *key, const void *value, size_t len, uint64_t ttl_ms, bool *stored,
                               celeriac_result *failure) {
    return kv_store(key, value, len, ttl_ms, true, stored, failure);
}

bool celeriac_kv_delete(const char *key, bool *existed, celeriac_result *failure) {
    task_string_t k = borrow(key);
    celeriac_task_kv_error_t err;
    if (!celeriac_task_kv_delete(&k, existed, &err)) {
        *failure = kv_failure(&err);
        return false;
    }
    return true;
}

bool celeriac_kv_increment(const char *key, int64_t delta, int64_t *value, celeriac_result *failure) {
    task_string_t k = borrow(key);
    celeriac_task_kv_error_t err;
    if (!celeriac_task_kv_increment(&k, delta, value, &err)) {
        *failure = kv_failure(&err);
        return false;
    }
    return true;
}
void celeriac_progress(uint64_t done, uint64_t total) { celeriac_task_context_progress(done, total); }

static char *cstr(task_string_t *s) {
    char *out = xrealloc(NULL, s->len + 1);
    memcpy(out, s->ptr, s->len);
    out[s->len] = 0;
    return out;
}

celeriac_info celeriac_task_info(void) {
    celeriac_task_context_task_info_t raw;
    celeriac_task_context_info(&raw);
    celeriac_info info = { cstr(&raw.id), cstr(&raw.module), cstr(&raw.name), raw.retries, raw.max_retries };
    celeriac_task_context_task_info_free(&raw);
    return info;
}

void celeriac_task_info_free(celeriac_info *info) {
    free(info->id);
    free(info->module);
    free(info->name);
}

/* ------------------------------------------------------------------ */
/* The world's exports                                                 */

void exports_task_tasks(task_list_string_t *ret) {
    size_t n = 0;
    while (celeriac_tasks[n].name) n++;
    ret->len = n;
    ret->ptr = xrealloc(NULL, n * sizeof *ret->ptr);
    for (size_t i = 0; i < n; i++) task_string_dup(&ret->ptr[i], celeriac_tasks[i].name);
}

static bool fail(task_failure_t *err, int kind, char *message) {
    err->kind = kind == CELERIAC_RETRY ? CELERIAC_TASK_TYPES_FAILURE_KIND_RETRY
              : kind == CELERIAC_FATAL ? CELERIAC_TASK_TYPES_FAILURE_KIND_FATAL
              : CELERIAC_TASK_TYPES_FAILURE_KIND_INVALID_INPUT;
    err->message.ptr = (uint8_t *)message;
    err->message.len = strlen(message);
    err->retry_after_ms.is_some = false;
    return false;
}

/* Check the call's shape against the task's parameters, Python-style. */
static char *check_shape(celeriac_call *c) {
    const celeriac_task_def *t = c->task;
    size_t nparams = 0;
    while (t->params[nparams]) nparams++;
    if (c->args.len > nparams)
        return format("%s() takes %zu positional argument%s but %zu were given", t->name, nparams,
                      nparams == 1 ? "" : "s", c->args.len);
    for (size_t i = 0; i < c->kwargs.len; i++) {
        long p = param_index(t, c->kwargs.keys[i]);
        if (p >= 0 && (size_t)p >= c->args.len) continue;
        char *key = bounded(c->kwargs.keys[i]);
        char *message = p < 0 ? format("%s() got an unexpected keyword argument `%s`", t->name, key)
                              : format("%s() got multiple values for argument `%s`", t->name, key);
        free(key);
        return message;
    }
    return NULL;
}

bool exports_task_call(task_string_t *name, task_string_t *args, task_string_t *kwargs, task_string_t *ret,
                       task_failure_t *err) {
    char *task_name = cstr(name);
    celeriac_call call;
    memset(&call, 0, sizeof call);
    bool ok = false;
    const char *perr = NULL;

    for (size_t i = 0; celeriac_tasks[i].name; i++)
        if (!strcmp(celeriac_tasks[i].name, task_name)) call.task = &celeriac_tasks[i];

    if (!call.task) {
        size_t cap = 64, n = 0;
        char *known = xrealloc(NULL, cap);
        known[0] = 0;
        for (size_t i = 0; celeriac_tasks[i].name; i++) {
            size_t l = strlen(celeriac_tasks[i].name);
            if (n + l + 3 > cap) { cap = (n + l + 3) * 2; known = xrealloc(known, cap); }
            n += (size_t)sprintf(known + n, "%s%s", i ? ", " : "", celeriac_tasks[i].name);
        }
        char *shown = bounded(task_name);
        ok = fail(err, CELERIAC_INVALID, format("unknown task `%s`; this module serves: %s", shown, known));
        free(shown);
        free(known);
    } else if (!parse_json(args->ptr, args->len, &call.args, &perr)) {
        ok = fail(err, CELERIAC_INVALID, format("args is not valid JSON: %s", perr));
    } else if (call.args.type != CELERIAC_ARRAY) {
        ok = fail(err, CELERIAC_INVALID, format("%s: args must be a JSON array, got %s", task_name, type_name(&call.args)));
    } else if (!parse_json(kwargs->ptr, kwargs->len, &call.kwargs, &perr)) {
        ok = fail(err, CELERIAC_INVALID, format("kwargs is not valid JSON: %s", perr));
    } else if (call.kwargs.type != CELERIAC_OBJECT) {
        ok = fail(err, CELERIAC_INVALID, format("%s: kwargs must be a JSON object, got %s", task_name, type_name(&call.kwargs)));
    } else {
        char *shape = check_shape(&call);
        if (shape) {
            ok = fail(err, CELERIAC_INVALID, shape);
        } else {
            celeriac_result r = call.task->fn(&call);
            if (call.error) {
                free(r.text);
                ok = fail(err, CELERIAC_INVALID, call.error);
                call.error = NULL;
            } else if (r.kind == 0) {
                ret->ptr = (uint8_t *)r.text;
                ret->len = strlen(r.text);
                ok = true;
            } else {
                ok = fail(err, r.kind, r.text);
                if (r.has_retry_after) {
                    err->retry_after_ms.is_some = true;
                    err->retry_after_ms.val = r.retry_after_ms;
                }
            }
        }
    }
    free_value(&call.args);
    free_value(&call.kwargs);
    free(call.error);
    free(task_name);
    task_string_free(name);
    task_string_free(args);
    task_string_free(kwargs);
    return ok;
}
