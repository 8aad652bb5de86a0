/* bridge._fields: read the top-level fields the bridge needs from a record that simdjson
 * has already found to be valid JSON (bridge/fields.py holds the whole rule; bridge/_scan.h
 * the walk). Reader.read gives cls(*values) when every wanted field is plain or absent,
 * else None, and the caller asks msgspec, which reads every form.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_scan.h"

typedef struct {
    PyObject_HEAD
    PyObject *cls;   /* called with the field values, in order */
    int n;           /* number of fields */
    PyObject *names; /* tuple of bytes: the field names, UTF-8 */
    const char *name[SCAN_MAX_FIELDS];
    Py_ssize_t len[SCAN_MAX_FIELDS];
} Reader;

static PyObject *Reader_read(Reader *self, PyObject *record) {
    char *data;
    Py_ssize_t size;
    Span spans[SCAN_MAX_FIELDS];
    PyObject *found[SCAN_MAX_FIELDS] = {NULL};
    PyObject *result = NULL;
    int i;
    if (self->cls == NULL) {
        PyErr_SetString(PyExc_ValueError, "the reader was never initialised");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(record, &data, &size) < 0) return NULL;
    if (!scan_object((const unsigned char *)data, size, self->name, self->len, self->n, spans))
        Py_RETURN_NONE;
    for (i = 0; i < self->n; i++) {
        found[i] = span_object(&spans[i]);
        if (found[i] == NULL) break;
    }
    if (i == self->n) {
        result = PyObject_Vectorcall(self->cls, found, (size_t)self->n, NULL);
    } else if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear(); /* never after simdjson; without it, simply not plain */
        result = Py_NewRef(Py_None);
    }
    for (i = 0; i < self->n; i++) Py_XDECREF(found[i]);
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
    if (n > SCAN_MAX_FIELDS) {
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
    Py_XSETREF(self->names, encoded); /* keeps the bytes name[] points into */
    for (Py_ssize_t i = 0; i < n; i++) {
        self->name[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(encoded, i));
        self->len[i] = PyBytes_GET_SIZE(PyTuple_GET_ITEM(encoded, i));
    }
    Py_XSETREF(self->cls, Py_NewRef(cls));
    self->n = (int)n;
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
