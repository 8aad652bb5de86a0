/* The top level of a record that simdjson has already found to be valid JSON, as spans of
 * its bytes: shared by bridge/_fields.c (the reader of bridge/fields.py) and bridge/_lane.c
 * (the publisher's native lane), so both see exactly the same fields.
 *
 * Because the record is known to be valid (UTF-8 included), this is no parser: it walks
 * the top level, skipping each value it does not need by its brackets and quotes. A field
 * is read only when its value is plain: a string without escapes (its bytes are its
 * text), an integer within 64 bits written without a fraction or exponent (not "-0"),
 * true, false or null; those are exactly the values whose orjson object the bytes alone
 * give. Anything else (an escape in a top-level key or a wanted field's value, any other
 * number, an object or array as a wanted field's value) makes the scan unsure, and the
 * caller asks a full parser. A repeated key counts by its last occurrence, as in orjson.
 *
 * Given bytes that are not valid JSON the result is meaningless but memory-safe: every
 * read is bounded by the end of the record. No caller does that.
 */
#ifndef BRIDGE_SCAN_H
#define BRIDGE_SCAN_H

#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define SCAN_MAX_FIELDS 16

typedef enum { ABSENT = 0, STRING, UINT, NEGATIVE, TRUE_, FALSE_, NULL_ } Kind;

/* A plain value: a string's bytes between its quotes, a number's text (a NEGATIVE's with
 * its '-'), a literal's word, nothing for ABSENT; ``u`` a number's magnitude. */
typedef struct {
    Kind kind;
    const unsigned char *p;
    Py_ssize_t len;
    uint64_t u;
} Span;

typedef struct {
    const unsigned char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* The first '"' or '\\' at or after p, or end. */
static inline __attribute__((always_inline)) const unsigned char *quote_or_escape(const unsigned char *p,
                                                   const unsigned char *end) {
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), slash = _mm_set1_epi8('\\');
    while (end - p >= 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)p);
        int mask = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, slash)));
        if (mask) return p + __builtin_ctz((unsigned)mask);
        p += 16;
    }
#endif
    while (p < end && *p != '"' && *p != '\\') p++;
    return p;
}

/* Past the string whose opening quote is at c->p; *escaped: it held an escape. Inlined:
 * most strings of a hit are a few bytes, where a call costs as much as the scan. */
static inline __attribute__((always_inline)) int skip_string(Cursor *c, int *escaped) {
    const unsigned char *p = c->p + 1, *end = c->end;
    *escaped = 0;
    for (;;) {
        p = quote_or_escape(p, end);
        if (p >= end) return 0;
        if (*p == '"') {
            c->p = p + 1;
            return 1;
        }
        *escaped = 1;
        p += 2; /* the backslash and the byte it escapes (\uXXXX: the rest is plain) */
    }
}

/* Past the value at c->p, whatever it is (the record is valid JSON). */
static int skip_value(Cursor *c) {
    int escaped;
    if (c->p >= c->end) return 0;
    if (*c->p == '"') return skip_string(c, &escaped);
    if (*c->p == '{' || *c->p == '[') {
        Py_ssize_t depth = 0;
        while (c->p < c->end) {
            unsigned char b = *c->p;
            if (b == '"') {
                if (!skip_string(c, &escaped)) return 0;
                continue;
            }
            if (b == '{' || b == '[') {
                depth++;
            } else if (b == '}' || b == ']') {
                if (--depth == 0) {
                    c->p++;
                    return 1;
                }
            }
            c->p++;
        }
        return 0;
    }
    /* A number, true, false or null: up to the next delimiter. */
    while (c->p < c->end && *c->p != ',' && *c->p != '}' && *c->p != ']' && *c->p != ' ' &&
           *c->p != '\n' && *c->p != '\r' && *c->p != '\t')
        c->p++;
    return 1;
}

static inline int literal(Cursor *c, const char *word, Py_ssize_t len) {
    if (c->end - c->p < len || memcmp(c->p, word, (size_t)len) != 0) return 0;
    c->p += len;
    return 1;
}

/* The plain value at c->p into *s; 0: not plain. */
static int scan_plain(Cursor *c, Span *s) {
    const unsigned char *start = c->p;
    int escaped;
    switch (*c->p) {
    case '"':
        if (!skip_string(c, &escaped) || escaped) return 0;
        s->kind = STRING;
        s->p = start + 1;
        s->len = c->p - start - 2;
        return 1;
    case 't':
        *s = (Span){TRUE_, start, 4, 0};
        return literal(c, "true", 4);
    case 'f':
        *s = (Span){FALSE_, start, 5, 0};
        return literal(c, "false", 5);
    case 'n':
        *s = (Span){NULL_, start, 4, 0};
        return literal(c, "null", 4);
    default: {
        const unsigned char *p = start, *end = c->end;
        int negative = p < end && *p == '-';
        p += negative;
        /* Digits only, no leading zero but "0" itself, and not "-0". */
        if (p >= end || *p < '0' || *p > '9' || (*p == '0' && negative)) return 0;
        if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return 0;
        uint64_t v = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            unsigned d = *p - '0';
            if (v > (UINT64_MAX - d) / 10) return 0; /* beyond 64 bits */
            v = v * 10 + d;
        }
        if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return 0; /* not an int */
        if (negative && v > (uint64_t)INT64_MAX + 1) return 0;
        c->p = p;
        s->kind = negative ? NEGATIVE : UINT;
        s->p = start;
        s->len = p - start;
        s->u = v;
        return 1;
    }
    }
}

/* The index among names[0..n) (lengths in lens) of the key at key..key+len, or -1. */
static inline int field_of(const char *const *names, const Py_ssize_t *lens, int n,
                           const unsigned char *key, Py_ssize_t len) {
    for (int i = 0; i < n; i++) {
        if (lens[i] == len && memcmp(names[i], key, (size_t)len) == 0) return i;
    }
    return -1;
}

/* The plain values of the wanted top-level fields into out[0..n) (ABSENT when a field is
 * not there). 1: read; 0: unsure (not an object, an escaped key, a field not plain). */
static int scan_object(const unsigned char *data, Py_ssize_t size, const char *const *names,
                       const Py_ssize_t *lens, int n, Span *out) {
    Cursor c = {data, data + size};
    int escaped;
    uint64_t lengths = 0; /* bit k < 64: a wanted name is k bytes long (most keys are not) */
    for (int i = 0; i < n; i++) {
        out[i] = (Span){ABSENT, data, 0, 0};
        if (lens[i] < 64) lengths |= 1ULL << lens[i];
    }
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return 0;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') return 1;
    for (;;) {
        const unsigned char *key = c.p + 1;
        if (c.p >= c.end || *c.p != '"' || !skip_string(&c, &escaped) || escaped) return 0;
        Py_ssize_t len = c.p - key - 1;
        int which = len >= 64 || (lengths >> len & 1) ? field_of(names, lens, n, key, len) : -1;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':') return 0;
        c.p++;
        skip_ws(&c);
        if (c.p >= c.end) return 0;
        if (which >= 0) {
            if (!scan_plain(&c, &out[which])) return 0; /* a repeated key: the last counts */
        } else if (!skip_value(&c)) {
            return 0;
        }
        skip_ws(&c);
        if (c.p >= c.end) return 0;
        if (*c.p == '}') return 1;
        if (*c.p != ',') return 0;
        c.p++;
        skip_ws(&c);
    }
}

/* The object orjson gives for a plain value; None for ABSENT. NULL: an error is set. */
static PyObject *span_object(const Span *s) {
    switch (s->kind) {
    case STRING:
        return PyUnicode_DecodeUTF8((const char *)s->p, s->len, "strict");
    case UINT:
        return PyLong_FromUnsignedLongLong(s->u);
    case NEGATIVE:
        return PyLong_FromLongLong(s->u == (uint64_t)INT64_MAX + 1 ? INT64_MIN
                                                                   : -(int64_t)s->u);
    case TRUE_:
        Py_RETURN_TRUE;
    case FALSE_:
        Py_RETURN_FALSE;
    default:
        Py_RETURN_NONE;
    }
}

#endif
