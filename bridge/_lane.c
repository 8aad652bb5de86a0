/* bridge._lane: the publisher's native lane, the hot loop of Publisher.publish_many in C.
 *
 * Lane.run takes records[start:] one by one, as publish_many's general path would, for the
 * form nearly every Live Stream hit has, and stops at the first record of any other form
 * without touching it; the general path (bridge/publish.py, the definition) takes that one
 * and hands the rest back. A record the lane takes:
 *
 *   - is a bytes object without a leading UTF-8 BOM that simdjson parses to an object (the
 *     whole validation of bridge/fields.py: UTF-8 included);
 *   - has plain top-level fields (bridge/_scan.h), its hit id either two strings of 1-19
 *     ASCII digits without a leading zero or two integers in 0..2**64-1, and, when keyed
 *     by visitor, visIdHigh and visIdLow each a non-empty string or an integer, or else
 *     one of them absent or null and mcVisIdHigh and mcVisIdLow each such a value; its
 *     reportSuite a string, or absent, null, false, "" or 0 (then the default suite);
 *   - is new to the dedupe window (a replay stops the lane: the general path counts it).
 *
 * Its message is the general path's, object for object: value the record itself, key
 * "visIdHigh:visIdLow" or "mcVisIdHigh:mcVisIdLow" (or None), headers {"hit-id",
 * ["report-suite",] "received-at"} in that order, and its stamp (receivedTimeGMT, else
 * timeGMT) kept for the freshness metrics; the first one taken of each read (each
 * received_at) asks for a delivery report, which observes the publish latency (every hit's
 * would cost a tenth of the lane). It is produced with produce() (its parameters by
 * position, see take()) and appended to the open transaction's kept, headers and stamps
 * lists.
 *
 * run() returns (index, status, taken_bytes, high, low):
 *   END      every record was taken (index: len(records));
 *   GENERAL  records[index] is for the general path; nothing of it was done;
 *   FULL     records[:index] were taken and the transaction is full (room_records or
 *            room_bytes used up): commit, then go on from index;
 *   UNTAKEN  records[index]'s id went into the window, but produce raised one of
 *            ``retriable`` (what the writer waits out or acts on): it was not taken. Its
 *            id is (high, low): the general path must not count it as a replay.
 * The caller checks the writer's state first: no Python of the writer runs in between.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "_scan.h"
#include "_window.h"

enum { END, GENERAL, FULL, UNTAKEN };
#define TAKEN END /* take(): this record was taken, go on */
enum { HIT_HIGH, HIT_LOW, VIS_HIGH, VIS_LOW, MC_HIGH, MC_LOW, SUITE, RECEIVED, TIME, N_FIELDS };

static const char *const NAMES[N_FIELDS] = {
    "hitIdHigh",  "hitIdLow",    "visIdHigh",       "visIdLow", "mcVisIdHigh",
    "mcVisIdLow", "reportSuite", "receivedTimeGMT", "timeGMT",
};
static Py_ssize_t LENS[N_FIELDS];

/* The object last made of a short plain value, and the value's span: hits of one second
 * share their stamp and hits of a suite its name, so most are the same again, which also
 * saves hashing new strings in the commit's count of stamps. */
typedef struct {
    PyObject *obj;
    Kind kind;
    Py_ssize_t len;
    unsigned char text[32];
} Memo;

typedef struct {
    PyObject_HEAD
    PyObject *parse;       /* simdjson's Parser.parse: the validation */
    PyObject *object_type; /* what parse returns for a JSON object */
    PyObject *window;      /* a bridge._window.Window, or NULL: no dedupe */
    PyObject *topic;       /* str */
    PyObject *suite;       /* the default report suite (non-empty str), or NULL */
    PyObject *retriable;   /* what produce may raise and the general path retries */
    int visitor_keyed;
    int sampled;       /* a hit of the read at sampled_at asked for a delivery report */
    double sampled_at;
    /* interned header names */
    PyObject *hit_id, *report_suite, *received_at;
    PyObject *any_partition, *now; /* produce()'s partition -1 (the partitioner's choice),
                                      timestamp 0 (the time of produce) */
    const WindowAPI *api;
    Memo stamps, suites; /* the last stamp and report suite made */
    /* {"hit-id": None, ["report-suite": suite,] "received-at": received_ms}: each message's
     * headers are a copy (cheaper than a new dict) with its hit-id set */
    PyObject *headers, *headers_suite, *headers_ms;
} Lane;

/* A string of 1..19 ASCII digits without a leading zero (always below 2**64): 1 and its
 * value in *out; else 0. */
static int digits_id(const Span *s, uint64_t *out) {
    if (s->kind != STRING || s->len < 1 || s->len > 19 || s->p[0] == '0') return 0;
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < s->len; i++) {
        unsigned d = s->p[i] - '0';
        if (d > 9) return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static int ascii(const Span *s) {
    for (Py_ssize_t i = 0; i < s->len; i++)
        if (s->p[i] & 0x80) return 0;
    return 1;
}

/* "a:b" from two spans' bytes (UTF-8), or NULL with an error. */
static PyObject *joined(const Span *a, const Span *b) {
    Py_ssize_t n = a->len + 1 + b->len;
    if (ascii(a) && ascii(b)) { /* ids nearly always: no decoding */
        PyObject *text = PyUnicode_New(n, 127);
        if (text == NULL) return NULL;
        char *out = (char *)PyUnicode_DATA(text);
        memcpy(out, a->p, (size_t)a->len);
        out[a->len] = ':';
        memcpy(out + a->len + 1, b->p, (size_t)b->len);
        return text;
    }
    char small[256], *buf = small;
    if (n > (Py_ssize_t)sizeof small && (buf = PyMem_Malloc((size_t)n)) == NULL)
        return PyErr_NoMemory();
    memcpy(buf, a->p, (size_t)a->len);
    buf[a->len] = ':';
    memcpy(buf + a->len + 1, b->p, (size_t)b->len);
    PyObject *text = PyUnicode_DecodeUTF8(buf, n, "strict");
    if (buf != small) PyMem_Free(buf);
    return text;
}

/* span_object(s), or the memo's object when s spells the same value. */
static PyObject *remembered(Memo *m, const Span *s) {
    if (m->obj != NULL && s->kind == m->kind && s->len == m->len &&
        memcmp(s->p, m->text, (size_t)s->len) == 0)
        return Py_NewRef(m->obj);
    PyObject *obj = span_object(s);
    if (obj != NULL && s->len <= (Py_ssize_t)sizeof m->text) {
        Py_XSETREF(m->obj, Py_NewRef(obj));
        m->kind = s->kind;
        m->len = s->len;
        memcpy(m->text, s->p, (size_t)s->len);
    }
    return obj;
}

static int keyable(const Span *s) {
    return (s->kind == STRING && s->len > 0) || s->kind == UINT || s->kind == NEGATIVE;
}

static int none(const Span *s) { return s->kind == ABSENT || s->kind == NULL_; }

static int truthy(const Span *s) {
    return (s->kind == STRING && s->len > 0) || (s->kind == UINT && s->u != 0) ||
           s->kind == NEGATIVE || s->kind == TRUE_;
}

/* The report-suite header of these fields: a new reference, NULL with no error for none,
 * NULL with an error set; *general: a form the lane leaves to the general path. */
static PyObject *suite_of(Lane *self, const Span *s, int *general) {
    if (s->kind == STRING && s->len > 0) return remembered(&self->suites, s);
    if (s->kind == ABSENT || s->kind == NULL_ || s->kind == FALSE_ || s->kind == STRING ||
        (s->kind == UINT && s->u == 0))
        return Py_XNewRef(self->suite);
    *general = 1; /* true or a non-zero number: the general path gives str() of it */
    return NULL;
}

/* A new headers dict for a hit of this suite (NULL: none) read at received_ms, hit-id None. */
static PyObject *headers_of(Lane *self, PyObject *suite, PyObject *received_ms) {
    if (self->headers == NULL || suite != self->headers_suite || received_ms != self->headers_ms) {
        PyObject *d = PyDict_New();
        if (d == NULL || PyDict_SetItem(d, self->hit_id, Py_None) < 0 ||
            (suite != NULL && PyDict_SetItem(d, self->report_suite, suite) < 0) ||
            PyDict_SetItem(d, self->received_at, received_ms) < 0) {
            Py_XDECREF(d);
            return NULL;
        }
        Py_XSETREF(self->headers, d);
        Py_XSETREF(self->headers_suite, Py_XNewRef(suite));
        Py_XSETREF(self->headers_ms, Py_NewRef(received_ms));
    }
    return PyDict_Copy(self->headers);
}

typedef struct {
    PyObject *produce, *kept, *headers, *stamps, *received_ms, *received_at, *report;
    Py_ssize_t room_records, room_bytes, taken, nbytes;
    uint64_t high, low;
    double at; /* received_at's value */
} Run;

/* One record: TAKEN, GENERAL, FULL (taken, and the transaction is full), UNTAKEN,
 * or -1 with an error set. */
static int take(Lane *self, Run *r, PyObject *record) {
    Span f[N_FIELDS];
    uint64_t high, low;
    PyObject *text = NULL, *key = NULL, *suite = NULL, *headers = NULL, *stamp = NULL;
    PyObject *cb = NULL, *kept = NULL;
    int status = -1, general = 0;

    if (!PyBytes_CheckExact(record)) return GENERAL; /* an OversizedRecord */
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(record);
    Py_ssize_t size = PyBytes_GET_SIZE(record);
    if (size >= 3 && data[0] == 0xEF && data[1] == 0xBB && data[2] == 0xBF) return GENERAL;
    PyObject *doc = PyObject_CallOneArg(self->parse, record);
    if (doc == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) return -1;
        PyErr_Clear(); /* not valid JSON: the general path has orjson say why */
        return GENERAL;
    }
    int object = Py_TYPE(doc) == (PyTypeObject *)self->object_type;
    Py_DECREF(doc); /* before the next parse, which would invalidate it */
    if (!object || !scan_object(data, size, NAMES, LENS, N_FIELDS, f)) return GENERAL;

    if (f[HIT_HIGH].kind == UINT && f[HIT_LOW].kind == UINT) {
        high = f[HIT_HIGH].u;
        low = f[HIT_LOW].u;
    } else if (!digits_id(&f[HIT_HIGH], &high) || !digits_id(&f[HIT_LOW], &low)) {
        return GENERAL;
    }
    const Span *visitor = NULL; /* the first of the visitor's ids, when keyed by visitor */
    if (self->visitor_keyed) {
        if (keyable(&f[VIS_HIGH]) && keyable(&f[VIS_LOW]))
            visitor = &f[VIS_HIGH];
        else if (none(&f[VIS_HIGH]) || none(&f[VIS_LOW])) /* no visitor id at all */
            visitor = keyable(&f[MC_HIGH]) && keyable(&f[MC_LOW]) ? &f[MC_HIGH] : NULL;
        if (visitor == NULL) return GENERAL;
    }
    suite = suite_of(self, &f[SUITE], &general);
    if (general) return GENERAL;
    if (suite == NULL && PyErr_Occurred()) goto done;
    if ((text = joined(&f[HIT_HIGH], &f[HIT_LOW])) == NULL) goto done;
    if (visitor != NULL && (key = joined(&visitor[0], &visitor[1])) == NULL) goto done;
    if ((headers = headers_of(self, suite, r->received_ms)) == NULL ||
        PyDict_SetItem(headers, self->hit_id, text) < 0)
        goto done;
    stamp = remembered(&self->stamps, truthy(&f[RECEIVED]) ? &f[RECEIVED] : &f[TIME]);
    if (stamp == NULL) goto done;
    if ((kept = PyTuple_Pack(4, self->topic, record, key ? key : Py_None, Py_None)) == NULL)
        goto done;
    PyObject_GC_UnTrack(kept); /* of strings, bytes and None: no cycle, nothing to scan */

    if (self->window != NULL) {
        int seen = self->api->seen_or_add(self->window, high, low);
        if (seen != 0) {
            status = seen < 0 ? -1 : GENERAL; /* a replay: the general path counts it */
            goto done;
        }
    }
    if ((!self->sampled || self->sampled_at != r->at) &&
        (cb = PyObject_CallOneArg(r->report, r->received_at)) == NULL)
        goto done;
    /* All eight of Producer.produce's parameters, in the order of its C keyword list
     * (topic, value, key, partition, callback, on_delivery, timestamp, headers): given by
     * keyword, each one not given costs a dict lookup by a C string, 0.5 us a call in all.
     * The tests that read the messages back from a broker pin the order. */
    PyObject *args[8] = {self->topic, record, key ? key : Py_None, self->any_partition,
                         cb ? cb : Py_None, Py_None, self->now, headers};
    PyObject *res = PyObject_Vectorcall(r->produce, args, 8, NULL);
    if (res == NULL) {
        if (PyErr_ExceptionMatches(self->retriable)) {
            PyErr_Clear();
            r->high = high;
            r->low = low;
            status = UNTAKEN;
        }
        goto done;
    }
    Py_DECREF(res);
    if (cb != NULL) {
        self->sampled = 1;
        self->sampled_at = r->at;
    }
    if (PyList_Append(r->kept, kept) < 0 || PyList_Append(r->headers, headers) < 0 ||
        PyList_Append(r->stamps, stamp) < 0)
        goto done;
    r->taken++;
    r->nbytes += size;
    status = r->taken >= r->room_records || r->nbytes >= r->room_bytes ? FULL : TAKEN;
done:
    Py_XDECREF(text);
    Py_XDECREF(key);
    Py_XDECREF(suite);
    Py_XDECREF(headers);
    Py_XDECREF(stamp);
    Py_XDECREF(cb);
    Py_XDECREF(kept);
    return status;
}

static PyObject *Lane_run(Lane *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError,
                        "run(records, start, produce, kept, headers, stamps, room_records, "
                        "room_bytes, received_ms, received_at, report)");
        return NULL;
    }
    if (self->parse == NULL) {
        PyErr_SetString(PyExc_ValueError, "the lane was never initialised");
        return NULL;
    }
    Run r = {args[2], args[3], args[4], args[5], args[8], args[9], args[10], 0, 0, 0, 0, 0, 0, 0};
    if (!PyList_CheckExact(r.kept) || !PyList_CheckExact(r.headers) ||
        !PyList_CheckExact(r.stamps) || !PyUnicode_CheckExact(r.received_ms)) {
        PyErr_SetString(PyExc_TypeError, "kept, headers and stamps are lists, received_ms a str");
        return NULL;
    }
    r.at = PyFloat_AsDouble(r.received_at);
    if (r.at == -1.0 && PyErr_Occurred()) return NULL;
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    r.room_records = PyLong_AsSsize_t(args[6]);
    if (r.room_records == -1 && PyErr_Occurred()) return NULL;
    r.room_bytes = PyLong_AsSsize_t(args[7]);
    if (r.room_bytes == -1 && PyErr_Occurred()) return NULL;
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(records), i = start < 0 ? 0 : start;
    int status = END; /* also for an empty records[start:] */
    for (; i < n; i++) {
        status = take(self, &r, PySequence_Fast_GET_ITEM(records, i));
        if (status == FULL) {
            i++;
            break;
        }
        if (status != TAKEN) break;
    }
    Py_DECREF(records);
    if (status < 0) return NULL;
    return Py_BuildValue("(ninKK)", i, status, r.nbytes, (unsigned long long)r.high,
                         (unsigned long long)r.low);
}

/* Lane(parse, object_type, window, topic, visitor_keyed, suite, retriable) */
static int Lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"parse",  "object_type",  "window",    "topic", "visitor_keyed",
                         "suite",  "retriable",    NULL};
    PyObject *parse, *object_type, *window, *topic, *suite, *retriable;
    int visitor_keyed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!OUpOO", kw, &parse, &PyType_Type,
                                     &object_type, &window, &topic, &visitor_keyed, &suite,
                                     &retriable))
        return -1;
    self->api = PyCapsule_Import(WINDOW_API, 0);
    if (self->api == NULL) return -1;
    if (window != Py_None && !PyObject_TypeCheck(window, self->api->type)) {
        PyErr_SetString(PyExc_TypeError, "window must be a bridge._window.Window or None");
        return -1;
    }
    if (suite != Py_None && !PyUnicode_Check(suite)) {
        PyErr_SetString(PyExc_TypeError, "suite must be a str or None");
        return -1;
    }
    Py_XSETREF(self->parse, Py_NewRef(parse));
    Py_XSETREF(self->object_type, Py_NewRef(object_type));
    Py_XSETREF(self->window, window == Py_None ? NULL : Py_NewRef(window));
    Py_XSETREF(self->topic, Py_NewRef(topic));
    /* The general path sends no report-suite header for an empty default either. */
    Py_XSETREF(self->suite,
               suite == Py_None || PyUnicode_GET_LENGTH(suite) == 0 ? NULL : Py_NewRef(suite));
    Py_XSETREF(self->retriable, Py_NewRef(retriable));
    self->visitor_keyed = visitor_keyed;
    self->sampled = 0;
    Py_CLEAR(self->stamps.obj);
    Py_CLEAR(self->suites.obj);
    Py_CLEAR(self->headers);
    Py_XSETREF(self->hit_id, PyUnicode_InternFromString("hit-id"));
    Py_XSETREF(self->report_suite, PyUnicode_InternFromString("report-suite"));
    Py_XSETREF(self->received_at, PyUnicode_InternFromString("received-at"));
    Py_XSETREF(self->any_partition, PyLong_FromLong(-1));
    Py_XSETREF(self->now, PyLong_FromLong(0));
    if (!self->hit_id || !self->report_suite || !self->received_at || !self->any_partition ||
        !self->now)
        return -1;
    return 0;
}

static int Lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(self->parse);
    Py_VISIT(self->object_type);
    Py_VISIT(self->window);
    Py_VISIT(self->retriable);
    return 0;
}

static int Lane_clear(Lane *self) {
    Py_CLEAR(self->parse);
    Py_CLEAR(self->object_type);
    Py_CLEAR(self->window);
    Py_CLEAR(self->topic);
    Py_CLEAR(self->suite);
    Py_CLEAR(self->retriable);
    Py_CLEAR(self->hit_id);
    Py_CLEAR(self->report_suite);
    Py_CLEAR(self->received_at);
    Py_CLEAR(self->any_partition);
    Py_CLEAR(self->now);
    Py_CLEAR(self->stamps.obj);
    Py_CLEAR(self->suites.obj);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->headers_suite);
    Py_CLEAR(self->headers_ms);
    return 0;
}

static void Lane_dealloc(Lane *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Lane_methods[] = {
    {"run", (PyCFunction)(void (*)(void))Lane_run, METH_FASTCALL,
     "Take records[start:] until one is for the general path (see the module doc)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "bridge._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The publisher's hot loop for the common form of hit (see the module doc).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "bridge._lane", "The publisher's native lane.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lane(void) {
    for (int i = 0; i < N_FIELDS; i++) LENS[i] = (Py_ssize_t)strlen(NAMES[i]);
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddIntConstant(m, "END", END) < 0 ||
        PyModule_AddIntConstant(m, "GENERAL", GENERAL) < 0 ||
        PyModule_AddIntConstant(m, "FULL", FULL) < 0 ||
        PyModule_AddIntConstant(m, "UNTAKEN", UNTAKEN) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
