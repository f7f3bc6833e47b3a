/*
 * proxy._inflight: ReplySlot and ReplyQueue (proxy/inflight.py) in C, the same objects with
 * the same behaviour; inflight.py keeps the Python twins as the reference and the fallback,
 * and tests/unit/test_inflight_fanout.py runs every test against both.
 *
 * Why C: every request creates a slot and every reply travels slot.complete -> queue.slot_done
 * -> queue.flush -> transport.write. In Python those were five interpreter frames per request
 * (push, the slot's __init__, complete, slot_done, flush) plus the write wrapper: a third of
 * the proxy's Python work for an unpipelined GET (py-spy and perf under redis-benchmark -P 1).
 * Here they are C calls, and the reply leaves through the transport's own write method.
 *
 * Ownership: a queue holds its slots (strong references, a ring buffer in arrival order); a
 * slot holds its sink (the queue, a fan-out Gather, a redirect tracker) until the client's
 * queue is closed or the Gather breaks the cycle. Both types take part in cyclic GC.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *str_slot_done, *str_complete, *str_add, *str_write, *str_writelines, *str_requests,
    *str_errors, *str_observe, *str_bytes_out;

/* --------------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *data; /* bytes, or NULL while the reply is owed */
    PyObject *sink; /* whoever waits for it (slot_done), or NULL */
    PyObject *stat; /* the client's (pool, command) counter row, or NULL */
} SlotObject;

typedef struct {
    long long seq; /* the marked slot's arrival number */
    double t0;
} Mark;

typedef struct {
    PyObject_HEAD
    SlotObject **ring; /* slots in arrival order: ring[(head + i) % cap], i < len */
    Py_ssize_t cap, head, len;
    Py_ssize_t waiting; /* pushed and not completed yet */
    long long pushed, popped; /* arrival numbers: the newest slot is `pushed` */
    Mark *marks;
    Py_ssize_t mcap, mhead, mlen;
    PyObject *flusher_add; /* the shared Flusher's add */
    PyObject *clock;       /* or NULL: no latency observed */
    PyObject *transport;   /* what replies are written to (write/writelines), or NULL */
    PyObject *write, *writelines;
    PyObject *stats;      /* bytes_out is counted here, or NULL */
    PyObject *on_flushed; /* or NULL */
    PyObject *label;      /* the stat of slots pushed without one, or NULL */
    int listed;           /* registered with the flusher */
    int closed;
} QueueObject;

/* A getter and a setter for an optional object field: None when unset; setting None (or
 * deleting) unsets it. */
#define OPTIONAL_FIELD(T, prefix, name)                                                       \
    static PyObject *prefix##_get_##name(T *self, void *c) {                                  \
        (void)c;                                                                              \
        return Py_NewRef(self->name != NULL ? self->name : Py_None);                          \
    }                                                                                         \
    static int prefix##_set_##name(T *self, PyObject *v, void *c) {                           \
        (void)c;                                                                              \
        Py_XSETREF(self->name, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));            \
        return 0;                                                                             \
    }

typedef struct {
    PyObject_HEAD
    PyObject *parent; /* the client's slot */
    PyObject *merge;  /* merge(name, parts, nkeys, datas) -> bytes */
    PyObject *name, *nkeys, *parts;
    PyObject *slots;  /* list: one child slot per part, sink = this gather */
    Py_ssize_t left;  /* children still owed */
} GatherObject;

static PyTypeObject SlotType;
static PyTypeObject QueueType;
static PyTypeObject GatherType;

static int queue_slot_done(QueueObject *q, SlotObject *slot);
static int gather_slot_done(GatherObject *g);

static PyObject *error_bytes(PyObject *text) {
    /* "-" + text + CRLF, with CR and LF inside the text turned into spaces (as inflight.py) */
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "fail: text must be str");
        return NULL;
    }
    PyObject *enc = PyUnicode_AsEncodedString(text, "utf-8", "replace");
    if (enc == NULL)
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(enc);
    PyObject *out = PyBytes_FromStringAndSize(NULL, n + 3);
    if (out != NULL) {
        char *o = PyBytes_AS_STRING(out);
        const char *s = PyBytes_AS_STRING(enc);
        o[0] = '-';
        for (Py_ssize_t i = 0; i < n; i++)
            o[i + 1] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
        o[n + 1] = '\r';
        o[n + 2] = '\n';
    }
    Py_DECREF(enc);
    return out;
}

/* ---------------------------------------------------------------------------------------
 * ReplySlot(sink=None, stat=None)
 * --------------------------------------------------------------------------------------- */

static SlotObject *slot_new(PyObject *sink, PyObject *stat) {
    SlotObject *s = PyObject_GC_New(SlotObject, &SlotType);
    if (s == NULL)
        return NULL;
    s->data = NULL;
    s->sink = sink == Py_None ? NULL : Py_XNewRef(sink);
    s->stat = stat == Py_None ? NULL : Py_XNewRef(stat);
    PyObject_GC_Track(s);
    return s;
}

static PyObject *Slot_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"sink", "stat", NULL};
    PyObject *sink = Py_None, *stat = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:ReplySlot", kwlist, &sink, &stat))
        return NULL;
    (void)type;
    return (PyObject *)slot_new(sink, stat);
}

/* Deliver ``raw``; ignored if the slot already has a reply. -1 with an exception set if the
 * sink's callback raised. */
static int slot_complete(SlotObject *s, PyObject *raw) {
    if (s->data != NULL)
        return 0;
    s->data = Py_NewRef(raw);
    PyObject *sink = s->sink;
    if (sink == NULL)
        return 0;
    int rc = 0;
    Py_INCREF(sink); /* Python may run below and let go of it (slot.sink = None) */
    if (Py_IS_TYPE(sink, &QueueType))
        rc = queue_slot_done((QueueObject *)sink, s);
    else if (Py_IS_TYPE(sink, &GatherType))
        rc = gather_slot_done((GatherObject *)sink);
    else {
        PyObject *r = PyObject_CallMethodOneArg(sink, str_slot_done, (PyObject *)s);
        rc = r != NULL ? 0 : -1;
        Py_XDECREF(r);
    }
    Py_DECREF(sink);
    return rc;
}

static PyObject *Slot_complete(SlotObject *self, PyObject *raw) {
    if (!PyBytes_Check(raw)) {
        PyErr_SetString(PyExc_TypeError, "complete: reply must be bytes");
        return NULL;
    }
    if (slot_complete(self, raw) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Slot_fail(SlotObject *self, PyObject *text) {
    if (self->data != NULL)
        Py_RETURN_NONE;
    PyObject *raw = error_bytes(text);
    if (raw == NULL)
        return NULL;
    int rc = slot_complete(self, raw);
    Py_DECREF(raw);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Slot_traverse(SlotObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->sink);
    Py_VISIT(self->stat);
    return 0;
}

static int Slot_clear(SlotObject *self) {
    Py_CLEAR(self->data);
    Py_CLEAR(self->sink);
    Py_CLEAR(self->stat);
    return 0;
}

static void Slot_dealloc(SlotObject *self) {
    PyObject_GC_UnTrack(self);
    Slot_clear(self);
    PyObject_GC_Del(self);
}

/* sink and stat read as None when unset; setting None unsets them. data is read-only:
 * complete() is the one way in. */
static PyObject *Slot_get_data(SlotObject *self, void *c) {
    (void)c;
    return Py_NewRef(self->data != NULL ? self->data : Py_None);
}

OPTIONAL_FIELD(SlotObject, Slot, sink)
OPTIONAL_FIELD(SlotObject, Slot, stat)

static PyGetSetDef Slot_getset[] = {
    {"data", (getter)Slot_get_data, NULL, NULL, NULL},
    {"sink", (getter)Slot_get_sink, (setter)Slot_set_sink, NULL, NULL},
    {"stat", (getter)Slot_get_stat, (setter)Slot_set_stat, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Slot_methods[] = {
    {"complete", (PyCFunction)Slot_complete, METH_O, NULL},
    {"fail", (PyCFunction)Slot_fail, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SlotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._inflight.ReplySlot",
    .tp_basicsize = sizeof(SlotObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Slot_tp_new,
    .tp_traverse = (traverseproc)Slot_traverse,
    .tp_clear = (inquiry)Slot_clear,
    .tp_dealloc = (destructor)Slot_dealloc,
    .tp_methods = Slot_methods,
    .tp_getset = Slot_getset,
};

/* ---------------------------------------------------------------------------------------
 * ReplyQueue(flusher, clock=None)
 * --------------------------------------------------------------------------------------- */

static int queue_append(QueueObject *q, SlotObject *slot) {
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 8;
        SlotObject **ring = PyMem_Malloc(sizeof(SlotObject *) * (size_t)cap);
        if (ring == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < q->len; i++)
            ring[i] = q->ring[(q->head + i) % q->cap];
        PyMem_Free(q->ring);
        q->ring = ring;
        q->cap = cap;
        q->head = 0;
    }
    q->ring[(q->head + q->len) % q->cap] = (SlotObject *)Py_NewRef(slot);
    q->len++;
    q->pushed++;
    return 0;
}

static SlotObject *queue_peek(QueueObject *q, Py_ssize_t i) {
    return q->ring[(q->head + i) % q->cap];
}

static PyObject *Queue_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"flusher", "clock", NULL};
    PyObject *flusher, *clock = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:ReplyQueue", kwlist, &flusher, &clock))
        return NULL;
    PyObject *add = PyObject_GetAttr(flusher, str_add);
    if (add == NULL)
        return NULL;
    QueueObject *q = (QueueObject *)type->tp_alloc(type, 0);
    if (q == NULL) {
        Py_DECREF(add);
        return NULL;
    }
    q->flusher_add = add;
    q->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    return (PyObject *)q;
}

static int Queue_traverse(QueueObject *q, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < q->len; i++)
        Py_VISIT(queue_peek(q, i));
    Py_VISIT(q->flusher_add);
    Py_VISIT(q->clock);
    Py_VISIT(q->transport);
    Py_VISIT(q->write);
    Py_VISIT(q->writelines);
    Py_VISIT(q->stats);
    Py_VISIT(q->on_flushed);
    Py_VISIT(q->label);
    return 0;
}

static void queue_drop_slots(QueueObject *q) {
    Py_ssize_t n = q->len;
    SlotObject **ring = q->ring;
    Py_ssize_t head = q->head, cap = q->cap;
    q->ring = NULL;
    q->cap = q->len = q->head = 0;
    q->mlen = q->mhead = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(ring[(head + i) % cap]);
    PyMem_Free(ring);
}

static int Queue_clear(QueueObject *q) {
    queue_drop_slots(q);
    Py_CLEAR(q->flusher_add);
    Py_CLEAR(q->clock);
    Py_CLEAR(q->transport);
    Py_CLEAR(q->write);
    Py_CLEAR(q->writelines);
    Py_CLEAR(q->stats);
    Py_CLEAR(q->on_flushed);
    Py_CLEAR(q->label);
    return 0;
}

static void Queue_dealloc(QueueObject *q) {
    PyObject_GC_UnTrack(q);
    Queue_clear(q);
    PyMem_Free(q->marks);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

/* counter += n on a Python object (a __slots__ attribute of a metrics row) */
static int add_to(PyObject *obj, PyObject *name, long long n) {
    PyObject *old = PyObject_GetAttr(obj, name);
    if (old == NULL)
        return -1;
    PyObject *inc = PyLong_FromLongLong(n);
    PyObject *sum = inc != NULL ? PyNumber_Add(old, inc) : NULL;
    Py_DECREF(old);
    Py_XDECREF(inc);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int observe(PyObject *stat, PyObject *clock, double t0) {
    PyObject *now = PyObject_CallNoArgs(clock);
    if (now == NULL)
        return -1;
    double t = PyFloat_AsDouble(now);
    Py_DECREF(now);
    if (t == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *sec = PyFloat_FromDouble(t - t0);
    if (sec == NULL)
        return -1;
    PyObject *r = PyObject_CallMethodOneArg(stat, str_observe, sec);
    Py_DECREF(sec);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Count a run of replies under one stat row. */
static int count_run(PyObject *stat, long long requests, long long errs) {
    if (stat == NULL || requests == 0)
        return 0;
    if (add_to(stat, str_requests, requests) < 0)
        return -1;
    return errs ? add_to(stat, str_errors, errs) : 0;
}

/* Write the completed head run (one write), if any; then on_flushed. The run leaves the
 * queue before any Python code (observe, write, on_flushed) runs, so a callback that pushes
 * or flushes finds the queue consistent. */
static int queue_flush(QueueObject *q) {
    q->listed = 0;
    if (q->closed || q->len == 0 || queue_peek(q, 0)->data == NULL)
        return 0;
    Py_ssize_t n = 1;
    while (n < q->len && queue_peek(q, n)->data != NULL)
        n++;
    SlotObject *stack[16], **run = n <= 16 ? stack : PyMem_Malloc(sizeof(SlotObject *) * (size_t)n);
    if (run == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    long long first = q->popped + 1; /* the arrival number of run[0] */
    for (Py_ssize_t i = 0; i < n; i++) { /* the queue's references become ours */
        run[i] = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
    }
    q->len -= n;
    q->popped += n;
    PyObject *out = n == 1 ? Py_NewRef(run[0]->data) : PyList_New(n); /* bytes, or a list */
    int rc = out != NULL ? 0 : -1;
    Py_ssize_t total = 0;
    PyObject *run_stat = NULL; /* consecutive replies of one stat row are counted at once */
    long long run_req = 0, run_err = 0;
    for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
        PyObject *data = run[i]->data;
        total += PyBytes_GET_SIZE(data);
        if (n > 1)
            PyList_SET_ITEM(out, i, Py_NewRef(data));
        PyObject *stat = Py_XNewRef(run[i]->stat); /* ours while Python runs */
        if (stat != NULL) {
            if (stat != run_stat) {
                rc = count_run(run_stat, run_req, run_err);
                Py_XSETREF(run_stat, Py_NewRef(stat));
                run_req = run_err = 0;
            }
            run_req++;
            char c = PyBytes_AS_STRING(data)[0];
            if (c == '-' || c == '!') /* error, RESP3 blob error */
                run_err++;
        }
        long long seq = first + i;
        while (rc == 0 && q->mlen && q->marks[q->mhead].seq <= seq) {
            Mark m = q->marks[q->mhead];
            q->mhead = (q->mhead + 1) % q->mcap;
            q->mlen--;
            if (m.seq == seq && stat != NULL && q->clock != NULL)
                rc = observe(stat, q->clock, m.t0);
        }
        Py_XDECREF(stat);
    }
    if (rc == 0)
        rc = count_run(run_stat, run_req, run_err);
    Py_XDECREF(run_stat);
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(run[i]);
    if (run != stack)
        PyMem_Free(run);
    if (rc == 0 && q->transport != NULL) {
        PyObject *fn = Py_NewRef(n == 1 ? q->write : q->writelines);
        PyObject *r = PyObject_CallOneArg(fn, out);
        Py_DECREF(fn);
        if (r == NULL)
            rc = -1;
        else {
            Py_DECREF(r);
            PyObject *stats = Py_XNewRef(q->stats);
            if (stats != NULL)
                rc = add_to(stats, str_bytes_out, total);
            Py_XDECREF(stats);
        }
    }
    Py_XDECREF(out);
    if (rc == 0 && q->on_flushed != NULL) {
        PyObject *cb = Py_NewRef(q->on_flushed);
        PyObject *r = PyObject_CallNoArgs(cb);
        Py_DECREF(cb);
        if (r == NULL)
            rc = -1;
        else
            Py_DECREF(r);
    }
    return rc;
}

static int queue_slot_done(QueueObject *q, SlotObject *slot) {
    if (--q->waiting) {
        if (!q->listed && !q->closed && q->len && queue_peek(q, 0) == slot) {
            q->listed = 1;
            PyObject *r = PyObject_CallOneArg(q->flusher_add, (PyObject *)q);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
        return 0;
    }
    /* every reply owed is in: nothing more can join this batch, so write it now */
    return q->closed ? 0 : queue_flush(q);
}

static PyObject *Queue_push(QueueObject *q, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "push(stat=None)");
        return NULL;
    }
    PyObject *stat = Py_XNewRef(nargs && args[0] != Py_None ? args[0] : q->label);
    /* (held: allocating the slot may run the GC, and finalizers may reset the label) */
    SlotObject *slot = slot_new((PyObject *)q, stat != NULL ? stat : Py_None);
    Py_XDECREF(stat);
    if (slot == NULL)
        return NULL;
    if (queue_append(q, slot) < 0) {
        Py_DECREF(slot);
        return NULL;
    }
    q->waiting++;
    return (PyObject *)slot;
}

static int push_done(QueueObject *q, PyObject *raw, PyObject *stat) {
    if (stat == Py_None && q->label != NULL)
        stat = q->label;
    Py_INCREF(stat);
    SlotObject *slot = slot_new(Py_None, stat);
    Py_DECREF(stat);
    if (slot == NULL)
        return -1;
    slot->data = Py_NewRef(raw);
    int rc = queue_append(q, slot);
    Py_DECREF(slot);
    return rc;
}

static PyObject *Queue_push_reply(QueueObject *q, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "push_reply(raw: bytes, stat=None)");
        return NULL;
    }
    if (push_done(q, args[0], nargs > 1 ? args[1] : Py_None) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Queue_push_error(QueueObject *q, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "push_error(text: str, stat=None)");
        return NULL;
    }
    PyObject *raw = error_bytes(args[0]);
    if (raw == NULL)
        return NULL;
    int rc = push_done(q, raw, nargs > 1 ? args[1] : Py_None);
    Py_DECREF(raw);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Queue_mark(QueueObject *q, PyObject *arg) {
    double t0 = PyFloat_AsDouble(arg);
    if (t0 == -1.0 && PyErr_Occurred())
        return NULL;
    if (!q->len || q->clock == NULL)
        Py_RETURN_NONE;
    if (q->mlen == q->mcap) {
        Py_ssize_t cap = q->mcap ? q->mcap * 2 : 8;
        Mark *marks = PyMem_Malloc(sizeof(Mark) * (size_t)cap);
        if (marks == NULL)
            return PyErr_NoMemory();
        for (Py_ssize_t i = 0; i < q->mlen; i++)
            marks[i] = q->marks[(q->mhead + i) % q->mcap];
        PyMem_Free(q->marks);
        q->marks = marks;
        q->mcap = cap;
        q->mhead = 0;
    }
    q->marks[(q->mhead + q->mlen) % q->mcap] = (Mark){q->pushed, t0};
    q->mlen++;
    Py_RETURN_NONE;
}

static PyObject *Queue_slot_done(QueueObject *q, PyObject *slot) {
    if (!Py_IS_TYPE(slot, &SlotType)) {
        PyErr_SetString(PyExc_TypeError, "slot_done: not a ReplySlot");
        return NULL;
    }
    if (queue_slot_done(q, (SlotObject *)slot) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Queue_flush(QueueObject *q, PyObject *unused) {
    (void)unused;
    if (queue_flush(q) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Queue_attach(QueueObject *q, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "attach(transport, stats)");
        return NULL;
    }
    PyObject *transport = args[0], *write = NULL, *writelines = NULL;
    if (transport != Py_None) {
        write = PyObject_GetAttr(transport, str_write);
        writelines = write != NULL ? PyObject_GetAttr(transport, str_writelines) : NULL;
        if (writelines == NULL) {
            Py_XDECREF(write);
            return NULL;
        }
        Py_INCREF(transport);
    } else
        transport = NULL;
    Py_XSETREF(q->transport, transport);
    Py_XSETREF(q->write, write);
    Py_XSETREF(q->writelines, writelines);
    Py_XSETREF(q->stats, args[1] == Py_None ? NULL : Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *Queue_close(QueueObject *q, PyObject *unused) {
    (void)unused;
    q->closed = 1;
    for (Py_ssize_t i = 0; i < q->len; i++)
        Py_CLEAR(queue_peek(q, i)->sink);
    queue_drop_slots(q);
    Py_CLEAR(q->transport);
    Py_CLEAR(q->write);
    Py_CLEAR(q->writelines);
    Py_RETURN_NONE;
}

static Py_ssize_t Queue_len(QueueObject *q) { return q->len; }

/* stream_head(slot) -> transport | None: where the reply of `slot` may be written as it
 * arrives, piece by piece: the client's transport when `slot` is the oldest reply owed (every
 * reply before it is written) and the queue is open; else None. Python twin: PyReplyQueue. */
static PyObject *Queue_stream_head(QueueObject *q, PyObject *slot) {
    if (q->closed || q->transport == NULL || q->len == 0 || (PyObject *)q->ring[q->head] != slot)
        Py_RETURN_NONE;
    return Py_NewRef(q->transport);
}

static PyObject *Queue_get_closed(QueueObject *q, void *c) {
    (void)c;
    return PyBool_FromLong(q->closed);
}

/* pushed: how many slots were ever pushed (the newest slot's arrival number) */
static PyObject *Queue_get_pushed(QueueObject *q, void *c) {
    (void)c;
    return PyLong_FromLongLong(q->pushed);
}

OPTIONAL_FIELD(QueueObject, Queue, on_flushed)
OPTIONAL_FIELD(QueueObject, Queue, stats)
OPTIONAL_FIELD(QueueObject, Queue, label)

static PyGetSetDef Queue_getset[] = {
    {"label", (getter)Queue_get_label, (setter)Queue_set_label, NULL, NULL},
    {"closed", (getter)Queue_get_closed, NULL, NULL, NULL},
    {"pushed", (getter)Queue_get_pushed, NULL, NULL, NULL},
    {"on_flushed", (getter)Queue_get_on_flushed, (setter)Queue_set_on_flushed, NULL, NULL},
    {"stats", (getter)Queue_get_stats, (setter)Queue_set_stats, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Queue_methods[] = {
    {"push", (PyCFunction)(void (*)(void))Queue_push, METH_FASTCALL, NULL},
    {"push_reply", (PyCFunction)(void (*)(void))Queue_push_reply, METH_FASTCALL, NULL},
    {"push_error", (PyCFunction)(void (*)(void))Queue_push_error, METH_FASTCALL, NULL},
    {"mark", (PyCFunction)Queue_mark, METH_O, NULL},
    {"slot_done", (PyCFunction)Queue_slot_done, METH_O, NULL},
    {"flush", (PyCFunction)Queue_flush, METH_NOARGS, NULL},
    {"attach", (PyCFunction)(void (*)(void))Queue_attach, METH_FASTCALL, NULL},
    {"close", (PyCFunction)Queue_close, METH_NOARGS, NULL},
    {"stream_head", (PyCFunction)Queue_stream_head, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Queue_as_sequence = {
    .sq_length = (lenfunc)Queue_len,
};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._inflight.ReplyQueue",
    .tp_basicsize = sizeof(QueueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Queue_tp_new,
    .tp_traverse = (traverseproc)Queue_traverse,
    .tp_clear = (inquiry)Queue_clear,
    .tp_dealloc = (destructor)Queue_dealloc,
    .tp_methods = Queue_methods,
    .tp_getset = Queue_getset,
    .tp_as_sequence = &Queue_as_sequence,
};


/* ---------------------------------------------------------------------------------------
 * Gather(parent, merge, name, nkeys, parts): a split command's sub-replies, merged once
 *
 * One child slot per part (``slots``); when the last one completes, the children let go of
 * the gather (no cycle left for the GC) and ``parent`` is completed with
 * ``merge(name, parts, nkeys, [child data...])`` (fanout.merge: the Redis answer).
 * --------------------------------------------------------------------------------------- */

static PyObject *Gather_tp_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *parent, *merge, *name, *nkeys, *parts;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Gather takes positional arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OOOOO:Gather", &parent, &merge, &name, &nkeys, &parts))
        return NULL;
    Py_ssize_t n = PyObject_Length(parts);
    if (n < 0)
        return NULL;
    GatherObject *g = (GatherObject *)type->tp_alloc(type, 0);
    if (g == NULL)
        return NULL;
    g->parent = Py_NewRef(parent);
    g->merge = Py_NewRef(merge);
    g->name = Py_NewRef(name);
    g->nkeys = Py_NewRef(nkeys);
    g->parts = Py_NewRef(parts);
    g->left = n;
    if ((g->slots = PyTuple_New(n)) == NULL) {
        Py_DECREF(g);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        SlotObject *child = slot_new((PyObject *)g, Py_None);
        if (child == NULL) {
            Py_DECREF(g);
            return NULL;
        }
        PyTuple_SET_ITEM(g->slots, i, (PyObject *)child);
    }
    return (PyObject *)g;
}

static int gather_slot_done(GatherObject *g) {
    if (--g->left || g->slots == NULL)
        return 0;
    Py_INCREF(g); /* the children let go of it below; this call keeps it alive */
    PyObject *slots = g->slots; /* a tuple of this gather's own slots: nobody else sets it */
    Py_ssize_t n = PyTuple_GET_SIZE(slots);
    PyObject *datas = PyList_New(n);
    int rc = -1;
    if (datas == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        SlotObject *child = (SlotObject *)PyTuple_GET_ITEM(slots, i);
        PyObject *data = child->data;
        PyList_SET_ITEM(datas, i, data != NULL ? Py_NewRef(data) : PyBytes_FromStringAndSize("", 0));
    }
    for (Py_ssize_t i = 0; i < n; i++)
        Py_CLEAR(((SlotObject *)PyTuple_GET_ITEM(slots, i))->sink);
    PyObject *argv[4] = {g->name, g->parts, g->nkeys, datas};
    PyObject *merged = PyObject_Vectorcall(g->merge, argv, 4, NULL);
    Py_DECREF(datas);
    if (merged != NULL) {
        if (Py_IS_TYPE(g->parent, &SlotType) && PyBytes_Check(merged))
            rc = slot_complete((SlotObject *)g->parent, merged);
        else {
            PyObject *r = PyObject_CallMethodOneArg(g->parent, str_complete, merged);
            rc = r != NULL ? 0 : -1;
            Py_XDECREF(r);
        }
        Py_DECREF(merged);
    }
done:
    Py_DECREF(g);
    return rc;
}

static PyObject *Gather_slot_done(GatherObject *g, PyObject *slot) {
    (void)slot;
    if (gather_slot_done(g) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int Gather_traverse(GatherObject *g, visitproc visit, void *arg) {
    Py_VISIT(g->parent);
    Py_VISIT(g->merge);
    Py_VISIT(g->parts);
    Py_VISIT(g->slots);
    return 0;
}

static int Gather_clear(GatherObject *g) {
    Py_CLEAR(g->parent);
    Py_CLEAR(g->merge);
    Py_CLEAR(g->name);
    Py_CLEAR(g->nkeys);
    Py_CLEAR(g->parts);
    Py_CLEAR(g->slots);
    return 0;
}

static void Gather_dealloc(GatherObject *g) {
    PyObject_GC_UnTrack(g);
    Gather_clear(g);
    Py_TYPE(g)->tp_free((PyObject *)g);
}

static PyObject *Gather_get_slots(GatherObject *g, void *c) {
    (void)c;
    return Py_NewRef(g->slots != NULL ? g->slots : Py_None);
}

static PyGetSetDef Gather_getset[] = {
    {"slots", (getter)Gather_get_slots, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Gather_methods[] = {
    {"slot_done", (PyCFunction)Gather_slot_done, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GatherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy._inflight.Gather",
    .tp_basicsize = sizeof(GatherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Gather_tp_new,
    .tp_traverse = (traverseproc)Gather_traverse,
    .tp_clear = (inquiry)Gather_clear,
    .tp_dealloc = (destructor)Gather_dealloc,
    .tp_methods = Gather_methods,
    .tp_getset = Gather_getset,
};

/* --------------------------------------------------------------------------------------- */

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_inflight",
    .m_doc = "ReplySlot, ReplyQueue and Gather (proxy/inflight.py) in C.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__inflight(void) {
#define INTERN(var, s)                                                                        \
    if ((var = PyUnicode_InternFromString(s)) == NULL)                                        \
        return NULL;
    INTERN(str_slot_done, "slot_done");
    INTERN(str_complete, "complete");
    INTERN(str_add, "add");
    INTERN(str_write, "write");
    INTERN(str_writelines, "writelines");
    INTERN(str_requests, "requests");
    INTERN(str_errors, "errors");
    INTERN(str_observe, "observe");
    INTERN(str_bytes_out, "bytes_out");
#undef INTERN
    if (PyType_Ready(&SlotType) < 0 || PyType_Ready(&QueueType) < 0
        || PyType_Ready(&GatherType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "ReplySlot", (PyObject *)&SlotType) < 0
        || PyModule_AddObjectRef(m, "ReplyQueue", (PyObject *)&QueueType) < 0
        || PyModule_AddObjectRef(m, "Gather", (PyObject *)&GatherType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
