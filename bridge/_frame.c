/* bridge._frame: the whole lines of a gunzipped piece, as bridge/decode.py frames them.
 *
 * split(piece, start, limit, oversized) looks at piece[start:] and returns (records, tail):
 * every line that ends in LF there, less its LF and one CR before it, empty lines left
 * out, each one bytes object made once; a line longer than ``limit`` becomes
 * ``oversized(its first limit bytes, its length)``. ``tail`` is what follows the last LF,
 * the start of a record still to come. In Python the same took a split (one copy per
 * record), a loop over the records and, for Live Stream's CRLF, a second copy to drop the
 * CR; tests/test_decode.py holds the decoder to the same framing on any input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *split(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t n) {
    char *data;
    Py_ssize_t size;
    if (n != 4) {
        PyErr_SetString(PyExc_TypeError, "split(piece, start, limit, oversized)");
        return NULL;
    }
    if (PyBytes_AsStringAndSize(args[0], &data, &size) < 0) return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (start < 0 || start > size || limit < 1) {
        PyErr_SetString(PyExc_ValueError, "start must be within the piece and limit positive");
        return NULL;
    }
    PyObject *oversized = args[3], *records = PyList_New(0);
    if (records == NULL) return NULL;
    const char *p = data + start, *end = data + size;
    const char *lf;
    while ((lf = memchr(p, '\n', (size_t)(end - p))) != NULL) {
        Py_ssize_t len = lf - p;
        if (len > 0 && p[len - 1] == '\r') len--;
        if (len > 0) {
            PyObject *record;
            if (len > limit) {
                PyObject *head = PyBytes_FromStringAndSize(p, limit), *size_obj = NULL;
                if (head != NULL) size_obj = PyLong_FromSsize_t(len);
                PyObject *call[2] = {head, size_obj};
                record = size_obj != NULL ? PyObject_Vectorcall(oversized, call, 2, NULL) : NULL;
                Py_XDECREF(head);
                Py_XDECREF(size_obj);
            } else {
                record = PyBytes_FromStringAndSize(p, len);
            }
            if (record == NULL || PyList_Append(records, record) < 0) {
                Py_XDECREF(record);
                Py_DECREF(records);
                return NULL;
            }
            Py_DECREF(record);
        }
        p = lf + 1;
    }
    PyObject *tail = PyBytes_FromStringAndSize(p, end - p);
    if (tail == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, records, tail);
    Py_DECREF(records);
    Py_DECREF(tail);
    return result;
}

static PyMethodDef methods[] = {
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "(records, tail) of piece[start:]: see the module doc."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bridge._frame", "Whole lines of a gunzipped piece, in C.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__frame(void) { return PyModule_Create(&module); }
