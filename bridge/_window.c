/* bridge._window: the dedupe window of bridge/dedupe.py in C.
 *
 * The same table, bucket choice, epochs and stash as the Python HitIdWindow (its module
 * docstring is the design; tests/test_dedupe.py holds both to the same answers), so the
 * memory bound and the exactness are the same; what changes is the cost per id: one call
 * with a few integer operations and two memchr, where the Python version pays for a dozen
 * 128-bit integer objects. Not thread-safe, like the Python one: one publisher owns it.
 * len() is the exception, read from a metrics scrape: two plain reads under the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <sys/mman.h>

#include "_window.h"

typedef unsigned __int128 u128;

#define MAX_EPOCHS 250
#define REST 15 /* bytes of a key kept besides its fingerprint byte */

typedef struct {
    PyObject_HEAD
    unsigned char *mem; /* one mapping: fp, rest, tags, free */
    size_t mem_len;
    unsigned char *fp, *rest, *tags, *free_;
    Py_ssize_t nb, w;
    long long capacity, epoch_size, in_epoch, live_ids, stashed_total;
    int epochs, tag, zero_tag, live_head, live_len;
    unsigned char live_tag[MAX_EPOCHS + 1];
    long long live_count[MAX_EPOCHS + 1];
    PyObject *stash; /* dict: key (int) -> tag (int), for ids whose buckets were both full */
} Window;

static const u128 C1 = ((u128)0x9E3779B97F4A7C15ULL << 64) | 0xF39CC0605CEDC835ULL;
static const unsigned long long M56 = (1ULL << 56) - 1;

static inline u128 mix(unsigned long long high, unsigned long long low) {
    u128 k = (((u128)high << 64) | low) * C1;
    return k ^ (k >> 64);
}

static inline void rest_bytes(u128 k, unsigned char out[REST]) {
    for (int i = 0; i < REST; i++) out[i] = (unsigned char)(k >> (8 * i)); /* little endian */
}

static int in_bucket(Window *self, unsigned char fp, const unsigned char rest[REST],
                     Py_ssize_t start) {
    const unsigned char *base = self->fp, *end = self->fp + start + self->w;
    const unsigned char *p = base + start;
    while ((p = memchr(p, fp, (size_t)(end - p))) != NULL) {
        if (memcmp(self->rest + (p - base) * REST, rest, REST) == 0) return 1;
        p++;
    }
    return 0;
}

static PyObject *key_object(u128 k) {
    unsigned char buf[16];
    for (int i = 0; i < 16; i++) buf[i] = (unsigned char)(k >> (8 * i));
    return _PyLong_FromByteArray(buf, 16, 1, 0);
}

static void buckets_of(Window *self, u128 k, Py_ssize_t *s1, Py_ssize_t *s2) {
    u128 nb = (u128)self->nb;
    *s1 = (Py_ssize_t)(((((u128)(unsigned long long)(k >> 64)) & M56) * nb) >> 56) * self->w;
    *s2 = (Py_ssize_t)(((((u128)(unsigned long long)k) & M56) * nb) >> 56) * self->w;
}

/* 1: in the table or the stash; 0: not; -1: error. */
static int lookup(Window *self, u128 k, Py_ssize_t s1, Py_ssize_t s2) {
    unsigned char rest[REST], fp = (unsigned char)(k >> 120);
    rest_bytes(k, rest);
    if (in_bucket(self, fp, rest, s1) || in_bucket(self, fp, rest, s2)) return 1;
    if (PyDict_GET_SIZE(self->stash) == 0) return 0;
    PyObject *key = key_object(k);
    if (key == NULL) return -1;
    int found = PyDict_Contains(self->stash, key);
    Py_DECREF(key);
    return found;
}

static int rotate(Window *self) {
    int slot = (self->live_head + self->live_len) % (MAX_EPOCHS + 1);
    self->live_tag[slot] = (unsigned char)self->tag;
    self->live_count[slot] = self->in_epoch;
    self->live_len++;
    self->live_ids += self->in_epoch;
    self->in_epoch = 0;
    self->tag = self->tag % 255 + 1;
    if (self->live_len <= self->epochs) return 0;
    unsigned char old = self->live_tag[self->live_head];
    self->live_ids -= self->live_count[self->live_head];
    self->live_head = (self->live_head + 1) % (MAX_EPOCHS + 1);
    self->live_len--;
    for (Py_ssize_t b = 0; b < self->nb; b++) {
        unsigned char *t = self->tags + b * self->w;
        int free_slots = 0;
        for (Py_ssize_t i = 0; i < self->w; i++) {
            if (t[i] == old) t[i] = 0;
            free_slots += t[i] == 0;
        }
        self->free_[b] = (unsigned char)free_slots;
    }
    if (PyDict_GET_SIZE(self->stash) > 0) {
        PyObject *drop = PyList_New(0), *key, *value;
        Py_ssize_t pos = 0;
        if (drop == NULL) return -1;
        while (PyDict_Next(self->stash, &pos, &key, &value)) {
            if (PyLong_AsLong(value) == old && PyList_Append(drop, key) < 0) {
                Py_DECREF(drop);
                return -1;
            }
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(drop); i++) {
            if (PyDict_DelItem(self->stash, PyList_GET_ITEM(drop, i)) < 0) {
                Py_DECREF(drop);
                return -1;
            }
        }
        Py_DECREF(drop);
    }
    if (self->zero_tag == old) self->zero_tag = 0;
    return 0;
}

/* 1: seen before; 0: new, now remembered; -1: error. */
static int seen_or_add(Window *self, unsigned long long high, unsigned long long low) {
    if (self->mem == NULL) {
        PyErr_SetString(PyExc_ValueError, "the window is closed");
        return -1;
    }
    u128 k = mix(high, low);
    if (k == 0) { /* id 0:0, whose key cannot be told from a free slot */
        if (self->zero_tag) return 1;
        self->zero_tag = self->tag;
    } else {
        Py_ssize_t s1, s2;
        buckets_of(self, k, &s1, &s2);
        int found = lookup(self, k, s1, s2);
        if (found != 0) return found;
        Py_ssize_t b1 = s1 / self->w, b2 = s2 / self->w;
        if (self->free_[b2] > self->free_[b1]) {
            b1 = b2;
            s1 = s2;
        }
        /* free_ counts the bucket's free slots, so the memchr finds one; checked anyway. */
        unsigned char *j = self->free_[b1] ? memchr(self->tags + s1, 0, (size_t)self->w) : NULL;
        if (j != NULL) {
            self->free_[b1]--;
            Py_ssize_t at = j - self->tags;
            *j = (unsigned char)self->tag;
            self->fp[at] = (unsigned char)(k >> 120);
            rest_bytes(k, self->rest + at * REST);
        } else {
            PyObject *key = key_object(k), *tag = PyLong_FromLong(self->tag);
            int bad = key == NULL || tag == NULL || PyDict_SetItem(self->stash, key, tag) < 0;
            Py_XDECREF(key);
            Py_XDECREF(tag);
            if (bad) return -1;
            self->stashed_total++;
        }
    }
    if (++self->in_epoch >= self->epoch_size && rotate(self) < 0) return -1;
    return 0;
}

static int api_seen_or_add(PyObject *window, unsigned long long high, unsigned long long low) {
    return seen_or_add((Window *)window, high, low);
}

static int u64_pair(PyObject *const *args, unsigned long long *high, unsigned long long *low) {
    *high = PyLong_AsUnsignedLongLong(args[0]);
    if (*high == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *low = PyLong_AsUnsignedLongLong(args[1]);
    if (*low == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    return 0;
}

static PyObject *Window_seen_or_add(Window *self, PyObject *const *args, Py_ssize_t n) {
    unsigned long long high, low;
    if (n != 2) {
        PyErr_SetString(PyExc_TypeError, "seen_or_add(high, low) takes two ints");
        return NULL;
    }
    if (u64_pair(args, &high, &low) < 0) return NULL;
    int r = seen_or_add(self, high, low);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Window_seed(Window *self, PyObject *ids) {
    PyObject *it = PyObject_GetIter(ids), *pair;
    long long added = 0;
    if (it == NULL) return NULL;
    while ((pair = PyIter_Next(it)) != NULL) {
        unsigned long long high, low;
        PyObject *items[2];
        int ok = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2;
        if (ok) {
            items[0] = PyTuple_GET_ITEM(pair, 0);
            items[1] = PyTuple_GET_ITEM(pair, 1);
        } else {
            PyErr_SetString(PyExc_TypeError, "seed() takes (high, low) pairs");
        }
        int r = ok && u64_pair(items, &high, &low) == 0 ? seen_or_add(self, high, low) : -1;
        Py_DECREF(pair);
        if (r < 0) {
            Py_DECREF(it);
            return NULL;
        }
        added += r == 0;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    return PyLong_FromLongLong(added);
}

static int Window_contains(Window *self, PyObject *hit_id) {
    unsigned long long high, low;
    if (!PyTuple_Check(hit_id) || PyTuple_GET_SIZE(hit_id) != 2 || self->mem == NULL) return 0;
    PyObject *items[2] = {PyTuple_GET_ITEM(hit_id, 0), PyTuple_GET_ITEM(hit_id, 1)};
    if (!PyLong_Check(items[0]) || !PyLong_Check(items[1])) return 0;
    if (u64_pair(items, &high, &low) < 0) {
        PyErr_Clear(); /* outside 0..2**64-1: never an id the window was given */
        return 0;
    }
    u128 k = mix(high, low);
    if (k == 0) return self->zero_tag != 0;
    Py_ssize_t s1, s2;
    buckets_of(self, k, &s1, &s2);
    return lookup(self, k, s1, s2);
}

static Py_ssize_t Window_len(Window *self) { return (Py_ssize_t)(self->in_epoch + self->live_ids); }

static void release(Window *self) {
    if (self->mem != NULL) {
        munmap(self->mem, self->mem_len);
        self->mem = NULL;
    }
}

static PyObject *Window_close(Window *self, PyObject *Py_UNUSED(ignored)) {
    release(self);
    Py_RETURN_NONE;
}

static PyObject *Window_stats(Window *self, PyObject *Py_UNUSED(ignored)) {
    if (self->stash == NULL) {
        PyErr_SetString(PyExc_ValueError, "the window was never initialised");
        return NULL;
    }
    return Py_BuildValue("{s:n,s:n,s:n,s:n,s:L}", "ids", Window_len(self), "slots",
                         self->nb * self->w, "bytes", self->nb * self->w * 17 + self->nb,
                         "stash", PyDict_GET_SIZE(self->stash), "stashed_total",
                         self->stashed_total);
}

static PyObject *Window_get_slots(Window *self, void *Py_UNUSED(c)) {
    return PyLong_FromSsize_t(self->nb * self->w);
}

static PyObject *Window_get_nbytes(Window *self, void *Py_UNUSED(c)) {
    return PyLong_FromSsize_t(self->nb * self->w * 17 + self->nb);
}

static PyObject *Window_get_capacity(Window *self, void *Py_UNUSED(c)) {
    return PyLong_FromLongLong(self->capacity);
}

/* Window(capacity, epochs, buckets, bucket): the sizes HitIdWindow computes. */
static int Window_init(Window *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"capacity", "epochs", "buckets", "bucket", NULL};
    long long capacity;
    int epochs;
    Py_ssize_t nb, w;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Linn", names, &capacity, &epochs, &nb, &w))
        return -1;
    if (capacity < 1 || epochs < 1 || epochs > MAX_EPOCHS || nb < 1 || w < 1 || w > 255) {
        PyErr_SetString(PyExc_ValueError, "capacity, epochs, buckets or bucket out of range");
        return -1;
    }
    release(self);
    Py_XSETREF(self->stash, PyDict_New());
    if (self->stash == NULL) return -1;
    size_t slots = (size_t)nb * (size_t)w;
    self->mem_len = slots * (2 + REST) + (size_t)nb;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE; /* faulted in now, not one id at a time (see bridge/dedupe.py) */
#endif
    void *mem = mmap(NULL, self->mem_len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (mem == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_MemoryError);
        return -1;
    }
    self->mem = mem;
    self->fp = self->mem;
    self->rest = self->fp + slots;
    self->tags = self->rest + slots * REST;
    self->free_ = self->tags + slots;
    memset(self->free_, (int)w, (size_t)nb);
    self->nb = nb;
    self->w = w;
    self->capacity = capacity;
    self->epochs = epochs;
    self->epoch_size = (capacity + epochs - 1) / epochs;
    self->in_epoch = self->live_ids = self->stashed_total = 0;
    self->tag = 1;
    self->zero_tag = self->live_head = self->live_len = 0;
    return 0;
}

static void Window_dealloc(Window *self) {
    release(self);
    Py_XDECREF(self->stash);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Window_methods[] = {
    {"seen_or_add", (PyCFunction)(void (*)(void))Window_seen_or_add, METH_FASTCALL,
     "True when high:low was seen before (a duplicate); otherwise remember it."},
    {"seed", (PyCFunction)Window_seed, METH_O,
     "Remember (high, low) pairs, oldest first; returns how many were new."},
    {"stats", (PyCFunction)Window_stats, METH_NOARGS, "Ids, slots, bytes and stash counts."},
    {"close", (PyCFunction)Window_close, METH_NOARGS, "Give the memory back now."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Window_getset[] = {
    {"slots", (getter)Window_get_slots, NULL, "slots in the table", NULL},
    {"nbytes", (getter)Window_get_nbytes, NULL, "bytes the table occupies", NULL},
    {"capacity", (getter)Window_get_capacity, NULL, "ids always remembered", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods Window_as_sequence = {
    .sq_length = (lenfunc)Window_len,
    .sq_contains = (objobjproc)Window_contains,
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bridge._window.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, /* bridge.dedupe sizes it */
    .tp_doc = "The dedupe window's table in C (see bridge/dedupe.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Window_init,
    .tp_dealloc = (destructor)Window_dealloc,
    .tp_methods = Window_methods,
    .tp_getset = Window_getset,
    .tp_as_sequence = &Window_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bridge._window", "The dedupe window in C.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__window(void) {
    if (PyType_Ready(&WindowType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    static WindowAPI api = {&WindowType, api_seen_or_add};
    PyObject *capsule = PyCapsule_New(&api, WINDOW_API, NULL);
    if (PyModule_AddObjectRef(m, "Window", (PyObject *)&WindowType) < 0 || capsule == NULL ||
        PyModule_AddObject(m, "_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
