/*
 * Celeriac tasks in C.
 *
 * A task is a function taking the call and returning a result:
 *
 *     #include "celeriac.h"
 *
 *     static celeriac_result add(celeriac_call *c) {
 *         int64_t a = celeriac_arg_int(c, "a");
 *         int64_t b = celeriac_arg_int(c, "b");
 *         return celeriac_ok_int(a + b);
 *     }
 *
 *     CELERIAC_TASKS(
 *         CELERIAC_TASK(add, "a", "b"),
 *     )
 *
 * Parameters are named in CELERIAC_TASK; arguments bind from the JSON args
 * array by position and from the kwargs object by name. A missing or
 * mistyped argument makes the getter return a zero value and the call an
 * invalid-input failure naming the argument, so tasks need not check;
 * such messages quote at most 64 characters of what the caller sent.
 * `celeriac build DIR` compiles every .c file in DIR with this SDK.
 */
#ifndef CELERIAC_H
#define CELERIAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- JSON values (read-only views into the parsed arguments) ---- */

typedef enum {
    CELERIAC_NULL,
    CELERIAC_BOOL,
    CELERIAC_NUMBER,
    CELERIAC_STRING,
    CELERIAC_ARRAY,
    CELERIAC_OBJECT,
} celeriac_type;

typedef struct celeriac_value celeriac_value;

celeriac_type celeriac_type_of(const celeriac_value *v);
bool celeriac_bool_of(const celeriac_value *v);
double celeriac_number_of(const celeriac_value *v);
/* NUL-terminated UTF-8; *len (if given) gets the byte length. */
const char *celeriac_string_of(const celeriac_value *v, size_t *len);
size_t celeriac_len(const celeriac_value *v); /* array items or object members */
const celeriac_value *celeriac_item(const celeriac_value *v, size_t i);
const celeriac_value *celeriac_member(const celeriac_value *v, const char *key);

/* ---- arguments ---- */

typedef struct celeriac_call celeriac_call;

bool celeriac_has_arg(celeriac_call *c, const char *name);
const celeriac_value *celeriac_arg(celeriac_call *c, const char *name);
const char *celeriac_arg_str(celeriac_call *c, const char *name, size_t *len);
int64_t celeriac_arg_int(celeriac_call *c, const char *name);
double celeriac_arg_num(celeriac_call *c, const char *name);
bool celeriac_arg_bool(celeriac_call *c, const char *name);

/* ---- results ---- */

typedef struct {
    int kind; /* 0 ok, else CELERIAC_RETRY / CELERIAC_FATAL / CELERIAC_INVALID */
    char *text; /* JSON on success, the message otherwise (malloc'd) */
    bool has_retry_after;
    uint64_t retry_after_ms;
} celeriac_result;

#define CELERIAC_RETRY 1
#define CELERIAC_FATAL 2
#define CELERIAC_INVALID 3

celeriac_result celeriac_ok_json(const char *json);
celeriac_result celeriac_ok_jsonf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
celeriac_result celeriac_ok_str(const char *s, size_t len);
celeriac_result celeriac_ok_int(int64_t v);
celeriac_result celeriac_ok_num(double v);
celeriac_result celeriac_ok_bool(bool v);
celeriac_result celeriac_ok_null(void);
celeriac_result celeriac_retry(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
celeriac_result celeriac_retry_after(uint64_t ms, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
celeriac_result celeriac_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
celeriac_result celeriac_invalid(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Append `s` to a malloc'd buffer as a JSON string literal (for building
 * objects with celeriac_ok_jsonf and friends). Returns the new buffer. */
char *celeriac_json_quote(const char *s, size_t len);

/* ---- capabilities: what the component's signed manifest grants ----
 *
 * Each call returns true on success. On failure it returns false and sets
 * *failure to the result the task should return (fatal for a key or
 * capability not granted, retry when the store is unreachable). */

/* The worker's configuration value for `key` (celeriac sign --config KEY):
 * *value gets a malloc'd NUL-terminated copy (free it), or NULL if the
 * worker has none. */
bool celeriac_config_get(const char *key, char **value, celeriac_result *failure);

/* The module's key-value state (celeriac sign --kv). Values are bytes;
 * ttl_ms 0 means no expiry. */
bool celeriac_kv_get(const char *key, char **value, size_t *len, celeriac_result *failure);
bool celeriac_kv_set(const char *key, const void *value, size_t len, uint64_t ttl_ms,
                     celeriac_result *failure);
bool celeriac_kv_set_if_absent(const char *key, const void *value, size_t len, uint64_t ttl_ms,
                               bool *stored, celeriac_result *failure);
bool celeriac_kv_delete(const char *key, bool *existed, celeriac_result *failure);
bool celeriac_kv_increment(const char *key, int64_t delta, int64_t *value, celeriac_result *failure);

/* ---- the host ---- */

enum { CELERIAC_TRACE, CELERIAC_DEBUG, CELERIAC_INFO, CELERIAC_WARN, CELERIAC_ERROR };
void celeriac_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool celeriac_should_stop(void);
void celeriac_progress(uint64_t done, uint64_t total);

typedef struct {
    char *id, *module, *name;
    uint32_t retries, max_retries;
} celeriac_info;
celeriac_info celeriac_task_info(void);
void celeriac_task_info_free(celeriac_info *info);

/* ---- registration ---- */

typedef celeriac_result (*celeriac_task_fn)(celeriac_call *);

typedef struct {
    const char *name;
    celeriac_task_fn fn;
    const char *const *params;
} celeriac_task_def;

#define CELERIAC_TASK(fn, ...) { #fn, fn, (const char *const[]){ __VA_ARGS__, NULL } }
#define CELERIAC_TASK0(fn) { #fn, fn, (const char *const[]){ NULL } }
#define CELERIAC_TASKS(...) \
    const celeriac_task_def celeriac_tasks[] = { __VA_ARGS__ { NULL, NULL, NULL } };

extern const celeriac_task_def celeriac_tasks[];

#ifdef __cplusplus
}
#endif
#endif
