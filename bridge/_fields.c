/* bridge._fields: read the top-level fields the bridge needs from a record that simdjson
 * has already found to be valid JSON (bridge/fields.py holds the whole rule).
 *
 * Because the record is known to be valid (UTF-8 included), this is no parser: it walks
 * the top level, skipping each value it does not need by its brackets and quotes. It reads
 * a field only when its value is plain: a string without escapes (its bytes are its
 * text), an integer within 64 bits, true, false or null; those are exactly what orjson
 * gives. For anything else (an escape in a top-level key or a field's value, a fraction,
 * an exponent, "-0", a bigger integer, an object or array as a field's value) it returns
 * None and the caller asks msgspec, which reads every form. A repeated key counts by its
 * last occurrence, as in orjson.
 *
 * Given bytes that are not valid JSON the result is meaningless but memory-safe: every
 * read is bounded by the end of the record. The caller never does that.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_FIELDS 16

typedef struct {
    PyObject_HEAD
    PyObject *cls;   /* called with the field values, in order */
    Py_ssize_t n;    /* number of fields */
    PyObject *names; /* tuple of bytes: the field names, UTF-8 */
} Reader;

typedef struct {
    const unsigned char *p, *end;
} Cursor;

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* The first '"' or '\\' at or after p, or end. */
static inline const unsigned char *quote_or_escape(const unsigned char *p,
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

/* Past the string whose opening quote is at c->p; *escaped: it held an escape. */
static int skip_string(Cursor *c, int *escaped) {
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

static int literal(Cursor *c, const char *word, Py_ssize_t len) {
    if (c->end - c->p < len || memcmp(c->p, word, (size_t)len) != 0) return 0;
    c->p += len;
    return 1;
}

/* A field's plain value as the object orjson gives. NULL and no error: not plain (the
 * caller leaves the record to msgspec); NULL and an error: out of memory. */
static PyObject *plain(Cursor *c) {
    const unsigned char *start = c->p;
    int escaped;
    switch (*c->p) {
    case '"':
        if (!skip_string(c, &escaped) || escaped) return NULL;
        PyObject *text = PyUnicode_DecodeUTF8((const char *)start + 1, c->p - start - 2, "strict");
        if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
            PyErr_Clear(); /* never after simdjson; without it, simply not plain */
        return text;
    case 't':
        if (!literal(c, "true", 4)) return NULL;
        Py_RETURN_TRUE;
    case 'f':
        if (!literal(c, "false", 5)) return NULL;
        Py_RETURN_FALSE;
    case 'n':
        if (!literal(c, "null", 4)) return NULL;
        Py_RETURN_NONE;
    default: {
        const unsigned char *p = start, *end = c->end;
        int negative = p < end && *p == '-';
        p += negative;
        /* Digits only, no leading zero but "0" itself, and not "-0". */
        if (p >= end || *p < '0' || *p > '9' || (*p == '0' && negative)) return NULL;
        if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return NULL;
        uint64_t v = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            unsigned d = *p - '0';
            if (v > (UINT64_MAX - d) / 10) return NULL; /* beyond 64 bits */
            v = v * 10 + d;
        }
        if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL; /* not an int */
        c->p = p;
        if (!negative) return PyLong_FromUnsignedLongLong(v);
        if (v > (uint64_t)INT64_MAX + 1) return NULL;
        return PyLong_FromLongLong(v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v);
    }
    }
}

static Py_ssize_t field_of(Reader *self, const unsigned char *key, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *name = PyTuple_GET_ITEM(self->names, i);
        if (PyBytes_GET_SIZE(name) == len && memcmp(PyBytes_AS_STRING(name), key, (size_t)len) == 0)
            return i;
    }
    return -1;
}

static PyObject *Reader_read(Reader *self, PyObject *record) {
    char *data;
    Py_ssize_t size;
    int escaped;
    PyObject *found[MAX_FIELDS] = {NULL};
    PyObject *result = NULL;
    if (self->cls == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader was never initialised");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(record, &data, &size) < 0) return NULL;
    Cursor c = {(const unsigned char *)data, (const unsigned char *)data + size};
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') goto unsure;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') goto complete;
    for (;;) {
        const unsigned char *key = c.p + 1;
        if (c.p >= c.end || *c.p != '"' || !skip_string(&c, &escaped) || escaped) goto unsure;
        Py_ssize_t which = field_of(self, key, c.p - key - 1);
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':') goto unsure;
        c.p++;
        skip_ws(&c);
        if (c.p >= c.end) goto unsure;
        if (which >= 0) {
            PyObject *v = plain(&c);
            if (v == NULL) goto unsure;
            Py_XSETREF(found[which], v); /* a repeated key: the last one counts */
        } else if (!skip_value(&c)) {
            goto unsure;
        }
        skip_ws(&c);
        if (c.p >= c.end) goto unsure;
        if (*c.p == '}') break;
        if (*c.p != ',') goto unsure;
        c.p++;
        skip_ws(&c);
    }
complete:
    for (Py_ssize_t i = 0; i < self->n; i++) {
        if (found[i] == NULL) found[i] = Py_NewRef(Py_None);
    }
    result = PyObject_Vectorcall(self->cls, found, (size_t)self->n, NULL);
    goto done;
unsure:
    if (!PyErr_Occurred()) result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < self->n; i++) Py_XDECREF(found[i]);
    return result;
}

/* Reader(names, cls): names, a tuple of str, the fields to read; cls, what read() calls
 * with their values in that order (None for an absent field). */
static int Reader_init(Reader *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"names", "cls", NULL};
    PyObject *names, *cls;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O", kw, &PyTuple_Type, &names, &cls))
        return -1;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "too many fields");
        return -1;
    }
    PyObject *encoded = PyTuple_New(n);
    if (encoded == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyUnicode_AsUTF8String(PyTuple_GET_ITEM(names, i));
        if (b == NULL) {
            Py_DECREF(encoded);
            return -1;
        }
        PyTuple_SET_ITEM(encoded, i, b);
    }
    Py_XSETREF(self->names, encoded);
    Py_XSETREF(self->cls, Py_NewRef(cls));
    self->n = n;
    return 0;
}

static void Reader_dealloc(Reader *self) {
    Py_XDECREF(self->names);
    Py_XDECREF(self->cls);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_O,
     "cls(*values) of a valid JSON record's plain fields, or None (see the module doc)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bridge._fields.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reads the plain top-level fields of a record known to be valid JSON.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bridge._fields", "Top-level fields of a valid JSON record, in C.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fields(void) {
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
