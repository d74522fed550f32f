/* Intake: APMSpanProcessor's on_start / _on_ending / on_end for the spans that need no decision.
 *
 * The SDK calls every processor three times per span.  Most of those calls decide nothing: a
 * child span starts (pass it on), a child span ends while its trace is open and has room (file
 * it, pass it on).  Here those cost a C call instead of a Python frame per step.  Every other case
 * (a local root starting or ending, a late span, a trace at a checkpoint, any unexpected object)
 * goes to the processor's Python methods, unchanged, which remain the one place the decisions
 * are made; this only repeats the condition of the common case (processors/apm.py ``_intake``
 * and assemble/local.py ``LocalAssembler._file``).
 *
 * Once the processor's compiled reader has agreed with the Python one (read_from), a child that
 * ends into a trace with nothing unread is read into its view here, by csrc/sdkviews.c, rather
 * than filed and read in a batch at a checkpoint or the root's end as the Python path does: the
 * same view in the same place, but the trace then holds no SDK span (about 2.8 kB each, against
 * some 300 B a view), and the span is read while it is still in the cache.
 *
 * The call site the processor's CallSite kept for a client span (code_pending, by span id) goes
 * into that view as it is read, and a span ending slow enough for its code.* attributes is handed
 * to the processor's Python method that adds them (_add_code_attributes): for the rest, a lookup.
 *
 * Pass-through mode only: tail mode holds spans under a lock and stays in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fields.h"
#include "native.h"
#include "view.h"

enum { NEXT_ON_START, NEXT_ON_ENDING, NEXT_ON_END, OPEN, ASSEMBLER, CLIENT_KIND, RECORD_CALLSITE,
       CALLSITE_FAILED, SLOW_ON_START, SLOW_ON_END, READ_SETUP, CODE_PENDING, CODE_MIN_NS,
       ADD_CODE_ATTRIBUTES, FIELD_COUNT };

static char *FIELD_NAMES[FIELD_COUNT + 1] = {
    "next_on_start", /* the wrapped processor's bound methods, or None */
    "next_on_ending",
    "next_on_end",
    "open",            /* LocalAssembler._open: trace id -> LocalTrace (a dict, never rebound) */
    "assembler",       /* for its _share, which changes as traces open and close */
    "client_kind",     /* SpanKind.CLIENT */
    "record_callsite", /* callable(span) for CLIENT spans, or None */
    "callsite_failed", /* callable(exception): what record_callsite raised, contained */
    "slow_on_start",   /* the processor's Python work at a span start after next.on_start */
    "slow_on_end",     /* the processor's Python on_end, whole */
    "read_setup",      /* SpanReader.setup: what csrc/sdkviews.c reads a span's view with */
    "code_pending",    /* CallSite.pending: span id -> (code.* attributes, location), or None */
    "code_min_ns",     /* the duration from which a client span gets its code.* attributes */
    "add_code_attributes", /* the processor's Python method that adds them to an ending span */
    NULL,
};

typedef struct {
    PyObject_HEAD
    PyObject *f[FIELD_COUNT];
    /* Set by read_from() once the processor's compiled reader has proved itself: spans of this
     * resource are read into their views as they end, with this service (strong, or NULL). */
    PyObject *resource;
    PyObject *service;
    long long code_min_ns;
} Intake;

/* The fields read: the span's, its LocalTrace's and the assembler's, where the instances keep
 * them (fields.h): by getattr, those a child span cost were about 1,200 instructions (callgrind).
 * One entry per class read: the SDK starts a Span
 * and ends a ReadableSpan made from it, so the span's fields at the start have entries of their
 * own (one entry read on both classes would learn again at every call). */
enum field_id {
    F_START_PARENT, F_START_KIND, F_PARENT, F_CONTEXT, F_RESOURCE, F_SPANS, F_VIEWS, F_READ, F_CHECK_AT,
    F_CLOSED, F_SHARE, F_ENDING_CONTEXT, F_ENDING_START, F_ENDING_END, F_COUNT
};
static struct apm_field fields[F_COUNT] = {
    [F_START_PARENT] = {.text = "_parent"}, [F_START_KIND] = {.text = "_kind"},
    [F_PARENT] = {.text = "_parent"},   [F_CONTEXT] = {.text = "_context"},
    [F_RESOURCE] = {.text = "_resource"}, [F_SPANS] = {.text = "spans"},    [F_VIEWS] = {.text = "views"},
    [F_READ] = {.text = "read"},        [F_CHECK_AT] = {.text = "check_at"}, [F_CLOSED] = {.text = "closed"},
    [F_SHARE] = {.text = "_share"},
    /* the span as _on_ending sees it: the SDK's Span, not the ReadableSpan on_end gets */
    [F_ENDING_CONTEXT] = {.text = "_context"}, [F_ENDING_START] = {.text = "_start_time"},
    [F_ENDING_END] = {.text = "_end_time"},
};
static PyObject *parent_context_kwnames; /* ("parent_context",) */

static int intake_traverse(Intake *self, visitproc visit, void *arg) {
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_VISIT(self->f[i]);
    }
    Py_VISIT(self->resource);
    Py_VISIT(self->service);
    return 0;
}

static int intake_clear(Intake *self) {
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_CLEAR(self->f[i]);
    }
    Py_CLEAR(self->resource);
    Py_CLEAR(self->service);
    return 0;
}

static void intake_dealloc(Intake *self) {
    PyObject_GC_UnTrack(self);
    intake_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int intake_init(Intake *self, PyObject *args, PyObject *kwargs) {
    PyObject *given[FIELD_COUNT];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOOOOOOOOO:Intake", FIELD_NAMES, &given[0],
                                     &given[1], &given[2], &given[3], &given[4], &given[5],
                                     &given[6], &given[7], &given[8], &given[9], &given[10],
                                     &given[11], &given[12], &given[13])) {
        return -1;
    }
    if (!PyDict_CheckExact(given[OPEN])) {
        PyErr_SetString(PyExc_TypeError, "Intake: open must be a dict");
        return -1;
    }
    if (given[CODE_PENDING] != Py_None && !PyDict_CheckExact(given[CODE_PENDING])) {
        PyErr_SetString(PyExc_TypeError, "Intake: code_pending must be a dict or None");
        return -1;
    }
    long long min_ns = PyLong_AsLongLong(given[CODE_MIN_NS]);
    if (min_ns == -1 && PyErr_Occurred()) {
        return -1;
    }
    self->code_min_ns = min_ns;
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_INCREF(given[i]);
        Py_XSETREF(self->f[i], given[i]);
    }
    return 0;
}

/* span._parent when it is a local parent's SpanContext: 1; a root or remote child: 0; an object
 * this does not know: -1 (no exception left set), for the Python path to judge. */
static int local_child(PyObject *span, enum field_id parent_field) {
    PyObject *parent = apm_field_get(span, &fields[parent_field]);
    if (parent == NULL) {
        PyErr_Clear();
        return -1;
    }
    int result;
    if (parent == Py_None) {
        result = 0;
    } else if (PyTuple_Check(parent) && PyTuple_GET_SIZE(parent) >= 3) {
        PyObject *is_remote = PyTuple_GET_ITEM(parent, 2); /* SpanContext: trace, span, is_remote */
        result = is_remote == Py_False ? 1 : (is_remote == Py_True ? 0 : -1);
    } else {
        result = -1;
    }
    Py_DECREF(parent);
    return result;
}

static PyObject *call1(PyObject *callable, PyObject *arg) {
    PyObject *args[2] = {NULL, arg};
    return PyObject_Vectorcall(callable, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* The exception being raised, taken (new reference, never NULL after a failed call). */
static PyObject *raised_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    Py_XDECREF(type);
    Py_XDECREF(traceback);
    if (value == NULL) {
        Py_INCREF(Py_None);
        return Py_None;
    }
    return value;
#endif
}

/* on_start(span, parent_context=None) */
static PyObject *intake_on_start(Intake *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *span, *parent_context = Py_None;
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw < 1 || nargs + nkw > 2 || nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "on_start(span, parent_context=None)");
        return NULL;
    }
    span = args[0];
    if (nargs == 2) {
        parent_context = args[1];
    } else if (nkw == 1) {
        PyObject *keyword = PyTuple_GET_ITEM(kwnames, 0), *expected = PyTuple_GET_ITEM(parent_context_kwnames, 0);
        if (keyword != expected && PyUnicode_Compare(keyword, expected) != 0) {
            PyErr_SetString(PyExc_TypeError, "on_start(span, parent_context=None)");
            return NULL;
        }
        parent_context = args[1];
    }
    if (self->f[NEXT_ON_START] != Py_None) {
        PyObject *call_args[3] = {NULL, span, parent_context};
        PyObject *r = PyObject_Vectorcall(self->f[NEXT_ON_START], call_args + 1,
                                          1 | PY_VECTORCALL_ARGUMENTS_OFFSET, parent_context_kwnames);
        if (r == NULL) {
            return NULL; /* the next processor's own failure: the SDK sees it, as without us */
        }
        Py_DECREF(r);
    }
    if (self->f[RECORD_CALLSITE] != Py_None) {
        PyObject *kind = apm_field_get(span, &fields[F_START_KIND]);
        if (kind == NULL) {
            PyErr_Clear();
        } else {
            int client = kind == self->f[CLIENT_KIND];
            Py_DECREF(kind);
            if (client) {
                PyObject *r = call1(self->f[RECORD_CALLSITE], span);
                if (r == NULL) {
                    /* never the application's problem: handed to the processor's failure log */
                    PyObject *exc = raised_exception();
                    r = call1(self->f[CALLSITE_FAILED], exc);
                    Py_DECREF(exc);
                    if (r == NULL) {
                        return NULL;
                    }
                }
                Py_DECREF(r);
            }
        }
    }
    if (local_child(span, F_START_PARENT) == 1) {
        Py_RETURN_NONE; /* filed by trace id when it ends */
    }
    return call1(self->f[SLOW_ON_START], span);
}

/* Whether the ending span lasted code_min_ns and has a call site pending: 1, 0, or -1 with an
 * exception set (an object this does not know: the Python method judges it).  The duration is
 * asked first: most calls are faster, and two fields cost less than the context and a lookup. */
static int code_attributes_due(Intake *self, PyObject *span) {
    PyObject *start = apm_field_get(span, &fields[F_ENDING_START]);
    PyObject *end = start == NULL ? NULL : apm_field_get(span, &fields[F_ENDING_END]);
    long long s = end == NULL ? -1 : PyLong_AsLongLong(start);
    long long e = s == -1 && PyErr_Occurred() ? -1 : PyLong_AsLongLong(end);
    Py_XDECREF(start);
    Py_XDECREF(end);
    if (e == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (e - s < self->code_min_ns) {
        return 0;
    }
    PyObject *context = apm_field_get(span, &fields[F_ENDING_CONTEXT]);
    if (context == NULL) {
        return -1;
    }
    int due;
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 2) {
        PyErr_SetString(PyExc_TypeError, "not a SpanContext");
        due = -1;
    } else {
        PyObject *site = PyDict_GetItemWithError(self->f[CODE_PENDING], PyTuple_GET_ITEM(context, 1));
        due = site != NULL ? 1 : PyErr_Occurred() ? -1 : 0;
    }
    Py_DECREF(context);
    return due;
}

static PyObject *intake_on_ending(Intake *self, PyObject *span) {
    if (self->f[NEXT_ON_ENDING] != Py_None) {
        PyObject *r = call1(self->f[NEXT_ON_ENDING], span);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    PyObject *pending = self->f[CODE_PENDING];
    if (pending == Py_None || PyDict_GET_SIZE(pending) == 0) {
        Py_RETURN_NONE;
    }
    int due = code_attributes_due(self, span);
    if (due == 0) {
        Py_RETURN_NONE;
    }
    if (due < 0) {
        PyErr_Clear(); /* the Python method decides, and contains, what to do */
    }
    return call1(self->f[ADD_CODE_ATTRIBUTES], span);
}

/* A field of a LocalTrace or the assembler as a C long, or -1 with an exception set. */
static long long_attr(PyObject *obj, enum field_id id) {
    PyObject *value = apm_field_get(obj, &fields[id]);
    if (value == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    return n;
}

/* Whether the LocalTrace's field is still ``expected``: 1, or 0 (perhaps with an exception set). */
static int still(PyObject *lt, enum field_id id, PyObject *expected) {
    PyObject *now = apm_field_get(lt, &fields[id]);
    Py_XDECREF(now); /* compared by identity only, and lt or the caller holds it */
    return now == expected;
}

/* The span's view, read now if the intake reads this span's resource (read_from): a new
 * reference, Py_None when it does not, or NULL with an exception set. */
static PyObject *view_now(Intake *self, PyObject *span) {
    if (self->service == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *resource = apm_field_get(span, &fields[F_RESOURCE]);
    if (resource == NULL) {
        return NULL;
    }
    Py_DECREF(resource); /* compared by identity only, and the span holds it */
    if (resource != self->resource) {
        Py_RETURN_NONE;
    }
    PyObject *service = Py_NewRef(self->service); /* read_from() may replace it meanwhile */
    PyObject *view = apm_sdk_view(span, service, self->f[READ_SETUP]);
    Py_DECREF(service);
    return view;
}

/* The span's pending call site, taken from code_pending, into its view when the attributes read
 * gave it none (a fast call: no code.* attributes): 0, or -1 with an exception set (the view
 * unchanged, the site still pending).  Runs no Python code: the key is an int, and removing
 * the entry frees at most the site's tuple of a dict and strings (the location is held first). */
static int take_code(Intake *self, PyObject *view, PyObject *span_id) {
    PyObject *pending = self->f[CODE_PENDING];
    if (pending == Py_None || PyDict_GET_SIZE(pending) == 0) {
        return 0;
    }
    PyObject *site = PyDict_GetItemWithError(pending, span_id); /* borrowed */
    if (site == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(site) || PyTuple_GET_SIZE(site) != 2) {
        PyErr_SetString(PyExc_TypeError, "code_pending holds (attributes, location) tuples");
        return -1;
    }
    PyObject *location = Py_NewRef(PyTuple_GET_ITEM(site, 1));
    if (PyDict_DelItem(pending, span_id) < 0) {
        Py_DECREF(location);
        return -1;
    }
    if (apm_view_get(view, APM_VIEW_CODE) == Py_None) {
        apm_view_set(view, APM_VIEW_CODE, location);
    } else {
        Py_DECREF(location);
    }
    return 0;
}

/* File a local child span whose trace is open and below its checkpoint, the case
 * LocalAssembler._file answers "added": 1 filed, 0 not this case (nothing changed), -1 an
 * exception (nothing changed).  When nothing of the trace is unread, the span is read into its
 * view now, while it is hot in the cache, rather than in a batch at the root's end (the same
 * view, in the same place of ``views``); otherwise it joins the unread spans. */
static int file_common_case(Intake *self, PyObject *span) {
    PyObject *context = apm_field_get(span, &fields[F_CONTEXT]);
    if (context == NULL) {
        return -1;
    }
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 2) { /* trace id, span id */
        Py_DECREF(context);
        return 0;
    }
    PyObject *lt = PyDict_GetItemWithError(self->f[OPEN], PyTuple_GET_ITEM(context, 0)); /* borrowed */
    if (lt == NULL) {
        Py_DECREF(context);
        return PyErr_Occurred() ? -1 : 0; /* late: the Python path counts it */
    }
    Py_INCREF(lt);
    int result = 0;
    PyObject *closed = NULL, *spans = NULL, *views = NULL, *view = NULL;
    closed = apm_field_get(lt, &fields[F_CLOSED]);
    if (closed == NULL) {
        result = -1;
        goto done;
    }
    if (closed != Py_False) {
        goto done;
    }
    spans = apm_field_get(lt, &fields[F_SPANS]);
    views = spans == NULL ? NULL : apm_field_get(lt, &fields[F_VIEWS]);
    if (views == NULL) {
        result = -1;
        goto done;
    }
    if (!PyList_CheckExact(spans) || !PyList_CheckExact(views)) {
        goto done;
    }
    long check_at = long_attr(lt, F_CHECK_AT);
    long read = check_at == -1 && PyErr_Occurred() ? -1 : long_attr(lt, F_READ);
    if (read == -1 && PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    /* LocalAssembler._file's condition, for the lengths once the span is filed. */
    Py_ssize_t unread = PyList_GET_SIZE(spans) - read + 1;
    if (unread + PyList_GET_SIZE(views) >= check_at) {
        goto done;
    }
    if (unread == 1) {
        view = view_now(self, span);
        if (view == NULL) {
            result = -1;
            goto done;
        }
        if (view != Py_None) {
            /* A new shape's fill ran Python code: should the trace have moved meanwhile (its root
             * ended, another span filed), the Python path decides.  Nothing runs Python code
             * from this check to the append. */
            int kept = still(lt, F_CLOSED, Py_False) + still(lt, F_SPANS, spans) + still(lt, F_VIEWS, views);
            long check_now = kept == 3 ? long_attr(lt, F_CHECK_AT) : -1;
            if (PyList_GET_SIZE(spans) == read && PyList_GET_SIZE(views) + 1 < check_now) {
                result = take_code(self, view, PyTuple_GET_ITEM(context, 1));
                if (result == 0) {
                    result = PyList_Append(views, view) < 0 ? -1 : 1;
                }
            } else if (PyErr_Occurred()) {
                result = -1;
            }
            goto done;
        }
    }
    long share = long_attr(self->f[ASSEMBLER], F_SHARE);
    if (share == -1 && PyErr_Occurred()) {
        result = -1;
    } else if (unread < share) {
        result = PyList_Append(spans, span) < 0 ? -1 : 1;
    }
done:
    Py_XDECREF(view);
    Py_XDECREF(views);
    Py_XDECREF(spans);
    Py_XDECREF(closed);
    Py_DECREF(lt);
    Py_DECREF(context);
    return result;
}

/* read_from(resource, service): read the spans of ``resource`` into their views as they end, for
 * ``service`` (the processor's, once its compiled reader has agreed with the Python one). */
static PyObject *intake_read_from(Intake *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_from(resource, service: str)");
        return NULL;
    }
    Py_XSETREF(self->resource, Py_NewRef(args[0]));
    Py_XSETREF(self->service, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

static PyObject *intake_on_end(Intake *self, PyObject *span) {
    if (local_child(span, F_PARENT) == 1) {
        int filed = file_common_case(self, span);
        if (filed == 1) {
            if (self->f[NEXT_ON_END] == Py_None) {
                Py_RETURN_NONE;
            }
            return call1(self->f[NEXT_ON_END], span);
        }
        if (filed < 0) {
            PyErr_Clear(); /* odd objects: the Python path decides, and contains, what to do */
        }
    }
    return call1(self->f[SLOW_ON_END], span);
}

static PyMethodDef intake_methods[] = {
    {"on_start", (PyCFunction)(void (*)(void))intake_on_start, METH_FASTCALL | METH_KEYWORDS,
     "SpanProcessor.on_start: pass on, code location for CLIENT spans, local roots to Python."},
    {"_on_ending", (PyCFunction)intake_on_ending, METH_O, "SpanProcessor._on_ending: pass on."},
    {"read_from", (PyCFunction)(void (*)(void))intake_read_from, METH_FASTCALL,
     "read_from(resource, service): read that resource's spans into their views as they end."},
    {"on_end", (PyCFunction)intake_on_end, METH_O,
     "SpanProcessor.on_end: file a child of an open trace and pass it on; the rest to Python."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject IntakeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_apm._native.Intake",
    .tp_basicsize = sizeof(Intake),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The common cases of APMSpanProcessor's span hooks (csrc/intake.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)intake_init,
    .tp_dealloc = (destructor)intake_dealloc,
    .tp_traverse = (traverseproc)intake_traverse,
    .tp_clear = (inquiry)intake_clear,
    .tp_methods = intake_methods,
};

int apm_intake_init(PyObject *module) {
    if (apm_fields_intern(fields, F_COUNT) < 0) {
        return -1;
    }
    /* interned, as the SDK's keyword is: on_start's check finds it by identity */
    PyObject *keyword = PyUnicode_InternFromString("parent_context");
    parent_context_kwnames = keyword == NULL ? NULL : PyTuple_Pack(1, keyword);
    Py_XDECREF(keyword);
    if (parent_context_kwnames == NULL || PyType_Ready(&IntakeType) < 0) {
        return -1;
    }
    Py_INCREF(&IntakeType);
    if (PyModule_AddObject(module, "Intake", (PyObject *)&IntakeType) < 0) {
        Py_DECREF(&IntakeType);
        return -1;
    }
    return 0;
}
