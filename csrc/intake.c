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
 * Pass-through mode only: tail mode holds spans under a lock and stays in Python.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "native.h"

enum { NEXT_ON_START, NEXT_ON_ENDING, NEXT_ON_END, OPEN, ASSEMBLER, CLIENT_KIND, RECORD_CALLSITE,
       CALLSITE_FAILED, SLOW_ON_START, SLOW_ON_END, FIELD_COUNT };

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
    NULL,
};

typedef struct {
    PyObject_HEAD
    PyObject *f[FIELD_COUNT];
} Intake;

static PyObject *s_parent, *s_context, *s_kind, *s_spans, *s_read, *s_check_at, *s_closed, *s_share;
static PyObject *parent_context_kwnames; /* ("parent_context",) */

static int intake_traverse(Intake *self, visitproc visit, void *arg) {
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_VISIT(self->f[i]);
    }
    return 0;
}

static int intake_clear(Intake *self) {
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_CLEAR(self->f[i]);
    }
    return 0;
}

static void intake_dealloc(Intake *self) {
    PyObject_GC_UnTrack(self);
    intake_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int intake_init(Intake *self, PyObject *args, PyObject *kwargs) {
    PyObject *given[FIELD_COUNT];
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOOOOOO:Intake", FIELD_NAMES, &given[0],
                                     &given[1], &given[2], &given[3], &given[4], &given[5],
                                     &given[6], &given[7], &given[8], &given[9])) {
        return -1;
    }
    if (!PyDict_CheckExact(given[OPEN])) {
        PyErr_SetString(PyExc_TypeError, "Intake: open must be a dict");
        return -1;
    }
    for (int i = 0; i < FIELD_COUNT; i++) {
        Py_INCREF(given[i]);
        Py_XSETREF(self->f[i], given[i]);
    }
    return 0;
}

/* span._parent when it is a local parent's SpanContext: 1; a root or remote child: 0; an object
 * this does not know: -1 (no exception left set), for the Python path to judge. */
static int local_child(PyObject *span) {
    PyObject *parent = PyObject_GetAttr(span, s_parent);
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
        if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), PyTuple_GET_ITEM(parent_context_kwnames, 0)) != 0) {
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
        PyObject *kind = PyObject_GetAttr(span, s_kind);
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
    if (local_child(span) == 1) {
        Py_RETURN_NONE; /* filed by trace id when it ends */
    }
    return call1(self->f[SLOW_ON_START], span);
}

static PyObject *intake_on_ending(Intake *self, PyObject *span) {
    if (self->f[NEXT_ON_ENDING] == Py_None) {
        Py_RETURN_NONE;
    }
    return call1(self->f[NEXT_ON_ENDING], span);
}

/* LocalTrace attribute ``name`` as a C long, or -1 with an exception set. */
static long long_attr(PyObject *obj, PyObject *name) {
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    long n = PyLong_AsLong(value);
    Py_DECREF(value);
    return n;
}

/* File a local child span whose trace is open and below its checkpoint: 1 filed, 0 not this
 * case (nothing changed), -1 an exception (nothing changed). */
static int file_common_case(Intake *self, PyObject *span) {
    PyObject *context = PyObject_GetAttr(span, s_context);
    if (context == NULL) {
        return -1;
    }
    if (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 1) {
        Py_DECREF(context);
        return 0;
    }
    PyObject *lt = PyDict_GetItemWithError(self->f[OPEN], PyTuple_GET_ITEM(context, 0)); /* borrowed */
    Py_DECREF(context);
    if (lt == NULL) {
        return PyErr_Occurred() ? -1 : 0; /* late: the Python path counts it */
    }
    Py_INCREF(lt);
    int result = 0;
    PyObject *closed = NULL, *spans = NULL;
    closed = PyObject_GetAttr(lt, s_closed);
    if (closed == NULL) {
        result = -1;
        goto done;
    }
    if (closed != Py_False) {
        goto done;
    }
    spans = PyObject_GetAttr(lt, s_spans);
    if (spans == NULL) {
        result = -1;
        goto done;
    }
    if (!PyList_CheckExact(spans)) {
        goto done;
    }
    long check_at = long_attr(lt, s_check_at);
    long read = check_at == -1 && PyErr_Occurred() ? -1 : long_attr(lt, s_read);
    long share = read == -1 && PyErr_Occurred() ? -1 : long_attr(self->f[ASSEMBLER], s_share);
    if (share == -1 && PyErr_Occurred()) {
        result = -1;
        goto done;
    }
    /* LocalAssembler._file's condition, for the length the list has once the span is in. */
    Py_ssize_t n = PyList_GET_SIZE(spans) + 1;
    if (n < check_at && n - read < share) {
        result = PyList_Append(spans, span) < 0 ? -1 : 1;
    }
done:
    Py_XDECREF(spans);
    Py_XDECREF(closed);
    Py_DECREF(lt);
    return result;
}

static PyObject *intake_on_end(Intake *self, PyObject *span) {
    if (local_child(span) == 1) {
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
    struct {
        PyObject **where;
        const char *text;
    } names[] = {
        {&s_parent, "_parent"}, {&s_context, "_context"}, {&s_kind, "_kind"},
        {&s_spans, "spans"},    {&s_read, "read"},        {&s_check_at, "check_at"},
        {&s_closed, "closed"},  {&s_share, "_share"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].where = PyUnicode_InternFromString(names[i].text);
        if (*names[i].where == NULL) {
            return -1;
        }
    }
    parent_context_kwnames = Py_BuildValue("(s)", "parent_context");
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
