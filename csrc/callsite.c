/* The call-site walk of otel_apm/ingest/callsite.py (CallSite.record) in C.
 *
 * For every CLIENT span the processor names the first application frame on the stack, kept by
 * span id in callsite.pending until the span is read (see otel_apm/ingest/callsite.py).  Python's
 * frame.f_back materializes a frame object for every frame it walks (an ORM puts 15 to 40
 * frames between the application and the span's start), and the walk, the attribute checks and
 * the add into the span were the largest part of the processor's cost on a clean trace.  Here
 * the walk follows the interpreter's own frame chain (_PyInterpreterFrame), which creates no
 * object at all, and the rest is a few dictionary operations.
 *
 * CallSiteRecorder(callsite).record(span) is the twin of callsite.record(span), and leans on it:
 *   - which file is the application's is decided by callsite.is_app() alone, the one
 *     classification; its memo (callsite._is_app, filename -> bool) is read here directly and
 *     is_app() is called only for a filename it does not hold yet;
 *   - a site is the same (attributes, location) tuple as CallSite.site makes, its location by
 *     semconv.code_location, and goes into callsite.pending as record() puts it; a span that
 *     keeps no plain dict of attributes (not the SDK we know) goes to callsite.record() whole;
 *   - MAX_DEPTH, MAX_SITES, MAX_PENDING and the attribute names are read from the Python module.
 *
 * The interpreter's frame layout is internal and changes between versions (3.12 moved fields,
 * 3.13 renamed f_code to f_executable): this part is compiled for the version it was checked
 * against, 3.11, and adds nothing on any other, where callsite.record() runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fields.h"
#include "native.h"
#include "view.h"

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define APM_CALLSITE_WALK 1
#endif

#ifdef APM_CALLSITE_WALK

#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE

/* What the part reads from Python once, at import. */
static PyObject *key_file;       /* CODE_FILE_PATH ("code.file.path") */
static PyObject *key_line;       /* CODE_LINE_NUMBER */
static PyObject *key_function;   /* CODE_FUNCTION_NAME */
static PyObject *code_location;  /* otel_apm.semconv.code_location */
static int max_depth;            /* callsite.MAX_DEPTH */
static Py_ssize_t max_sites;     /* callsite.MAX_SITES */
static Py_ssize_t max_pending;   /* callsite.MAX_PENDING */

/* The span's BoundedAttributes dict, its end time and its context, read where the instances keep
 * them (fields.h): by getattr, such fields cost some 200 instructions each (callgrind). */
enum { F_ATTRIBUTES, F_DICT, F_END_TIME, F_CONTEXT, F_COUNT };
static struct apm_field fields[F_COUNT] = {
    [F_ATTRIBUTES] = {.text = "_attributes"},
    [F_DICT] = {.text = "_dict"},
    [F_END_TIME] = {.text = "_end_time"}, /* of the span: what the SDK's is_recording() returns */
    [F_CONTEXT] = {.text = "_context"},
};

/* The SDK's Span.is_recording, ``self._end_time is None``: a span whose class has it is
 * asked by reading that field (a Python call cost 800 instructions a client span, callgrind). */
static PyObject *sdk_is_recording;

/* Interned attribute names. */
static PyObject *str_is_recording, *str_is_app, *str_record, *str_is_app_memo;

/* One application line seen: the site of (code object, instruction).  The entry holds the
 * code object, so its address cannot be reused by another while the entry lives: the same
 * reasoning as CallSite._sites, keyed by id(code) for the same reason (hashing a code object
 * hashes its bytecode and constants). */
typedef struct {
    PyCodeObject *code; /* strong reference; NULL marks a free slot */
    int index;          /* the instruction, in code units from the start of the bytecode */
    PyObject *site;     /* strong reference: (dict of code.* attributes, "path:line:function") */
} site;

/* The last answers for a few filenames, found by the string's address: an ORM puts 15 to 40
 * library frames above the application, from few files, and this costs a compare per frame where
 * the memo's lookup costs a dict probe (about 110 instructions; callgrind).  Each entry holds its
 * string, so no other string can take its address. */
#define RECENT_FILES 64 /* a power of two */

typedef struct {
    PyObject *filename; /* strong reference, or NULL */
    int app;
} recent_file;

typedef struct {
    PyObject_HEAD
    PyObject *callsite; /* the Python CallSite: is_app() and record() */
    PyObject *is_app;   /* its memo, callsite._is_app: filename -> bool */
    PyObject *callers;  /* callsite.callers: a tuple of code objects whose frames the walk skips */
    PyObject *pending;  /* callsite.pending: span id -> site */
    recent_file recent[RECENT_FILES];
    site *sites;        /* open addressing, linear probing; capacity a power of two */
    Py_ssize_t capacity;
    Py_ssize_t count;
} Recorder;

#define FIRST_CAPACITY 16

/* -- the site table ----------------------------------------------------------------------- */

static size_t site_hash(const PyCodeObject *code, int index) {
    uintptr_t h = (uintptr_t)code >> 4; /* objects are 16-byte aligned: the low bits say nothing */
    return (size_t)(h ^ ((uintptr_t)(unsigned)index * 0x9E3779B1u));
}

/* The slot of (code, index), or the free slot where it would go. */
static site *site_slot(site *sites, Py_ssize_t capacity, PyCodeObject *code, int index) {
    size_t mask = (size_t)capacity - 1;
    for (size_t i = site_hash(code, index) & mask;; i = (i + 1) & mask) {
        site *s = &sites[i];
        if (s->code == NULL || (s->code == code && s->index == index)) {
            return s;
        }
    }
}

/* Release a table's references.  Called on a table already detached from its recorder: a code
 * object's deallocation can run Python code (weak reference callbacks), which could re-enter
 * record() from another thread, and must then find a consistent table. */
static void sites_release(site *sites, Py_ssize_t capacity) {
    for (Py_ssize_t i = 0; i < capacity; i++) {
        Py_XDECREF(sites[i].code);
        Py_XDECREF(sites[i].site);
    }
    PyMem_Free(sites);
}

/* Make room for one more entry: start over when MAX_SITES are held (as CallSite.attributes does),
 * otherwise grow at half full.  *released receives a detached table (or NULL) for the caller to
 * release once the new entry is in, failure or not.  0, or -1 with MemoryError set. */
static int sites_reserve(Recorder *self, site **released, Py_ssize_t *released_capacity) {
    *released = NULL;
    *released_capacity = 0;
    if (self->count >= max_sites && self->sites != NULL) {
        *released = self->sites;
        *released_capacity = self->capacity;
        self->sites = NULL;
        self->capacity = 0;
        self->count = 0;
    }
    if (self->sites != NULL && (self->count + 1) * 2 <= self->capacity) {
        return 0;
    }
    Py_ssize_t capacity = self->capacity ? self->capacity * 2 : FIRST_CAPACITY;
    site *sites = PyMem_Calloc((size_t)capacity, sizeof(site));
    if (sites == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < self->capacity; i++) { /* rehash: references move, none change */
        site *old = &self->sites[i];
        if (old->code != NULL) {
            *site_slot(sites, capacity, old->code, old->index) = *old;
        }
    }
    PyMem_Free(self->sites);
    self->sites = sites;
    self->capacity = capacity;
    return 0;
}

/* -- the walk ----------------------------------------------------------------------------- */

/* ``frame`` or the first complete frame below it: frame.f_back and sys._getframe() skip the
 * frames of calls still setting up (not yet at their first instruction), and so does this. */
static _PyInterpreterFrame *complete(_PyInterpreterFrame *frame) {
    while (frame != NULL && _PyFrame_IsIncomplete(frame)) {
        frame = frame->previous;
    }
    return frame;
}

/* Whether ``filename`` is an application file: callsite._is_app's answer, or is_app()'s when the
 * memo does not hold it yet.  1, 0, or -1 with an exception set. */
static int classify(Recorder *self, PyObject *filename) {
    PyObject *known = PyDict_GetItemWithError(self->is_app, filename); /* borrowed */
    if (known != NULL) {
        return PyObject_IsTrue(known);
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *answer = PyObject_CallMethodOneArg(self->callsite, str_is_app, filename);
    if (answer == NULL) {
        return -1;
    }
    int app = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return app;
}

/* classify(), through the recent answers. */
static int is_app(Recorder *self, PyObject *filename) {
    recent_file *recent = &self->recent[((uintptr_t)filename >> 4) & (RECENT_FILES - 1)];
    if (recent->filename == filename) {
        return recent->app;
    }
    int app = classify(self, filename);
    if (app >= 0) {
        Py_INCREF(filename);
        Py_XSETREF(recent->filename, filename); /* set before the old one is let go */
        recent->app = app;
    }
    return app;
}

/* The first application frame within MAX_DEPTH frames from the Python frame that called record()
 * (past it when its code is one of callsite.callers, as in CallSite.record), or NULL; *error is
 * set when the NULL comes with an exception.
 *
 * The frames walked belong to this thread and sit below the one running, so they stay in place
 * while is_app() runs Python code, even should it let other threads run. */
static _PyInterpreterFrame *app_frame(Recorder *self, int *error) {
    *error = 0;
    _PyInterpreterFrame *frame = complete(PyThreadState_Get()->cframe->current_frame);
    if (frame == NULL) {
        return NULL;
    }
    /* past record()'s caller when it is one of callsite.callers, as CallSite.record() */
    PyObject *const *callers = &PyTuple_GET_ITEM(self->callers, 0);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->callers); i++) {
        if ((PyObject *)frame->f_code == callers[i]) {
            frame = complete(frame->previous);
            break;
        }
    }
    for (int depth = 0; depth < max_depth && frame != NULL; depth++) {
        int app = is_app(self, frame->f_code->co_filename);
        if (app != 0) {
            *error = app < 0;
            return app < 0 ? NULL : frame;
        }
        frame = complete(frame->previous);
    }
    return NULL;
}

/* frame.f_lineno: the line a tracer set on the frame object, if any, or the instruction's. */
static PyObject *line_number(_PyInterpreterFrame *frame) {
    int line = frame->frame_obj != NULL
                   ? PyFrame_GetLineNumber(frame->frame_obj)
                   : PyCode_Addr2Line(frame->f_code,
                                      _PyInterpreterFrame_LASTI(frame) * (int)sizeof(_Py_CODEUNIT));
    if (line < 0) {
        Py_RETURN_NONE; /* an instruction without a line, as f_lineno says */
    }
    return PyLong_FromLong(line);
}

/* The site of the first application frame (new reference), Py_None when there is none within
 * MAX_DEPTH frames, NULL with an exception: CallSite.site. */
static PyObject *find_site(Recorder *self) {
    int error;
    _PyInterpreterFrame *frame = app_frame(self, &error);
    if (frame == NULL) {
        if (error) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyCodeObject *code = frame->f_code;
    int index = _PyInterpreterFrame_LASTI(frame);
    if (self->sites != NULL) {
        site *hit = site_slot(self->sites, self->capacity, code, index);
        if (hit->code != NULL) {
            return Py_NewRef(hit->site);
        }
    }
    PyObject *line = line_number(frame);
    if (line == NULL) {
        return NULL;
    }
    PyObject *attrs = PyDict_New();
    if (attrs == NULL || PyDict_SetItem(attrs, key_file, code->co_filename) < 0 ||
        PyDict_SetItem(attrs, key_line, line) < 0 ||
        PyDict_SetItem(attrs, key_function, code->co_qualname) < 0) {
        Py_DECREF(line);
        Py_XDECREF(attrs);
        return NULL;
    }
    Py_DECREF(line);
    PyObject *location = PyObject_CallOneArg(code_location, attrs);
    PyObject *found = location == NULL ? NULL : PyTuple_Pack(2, attrs, location);
    Py_DECREF(attrs);
    Py_XDECREF(location);
    if (found == NULL) {
        return NULL;
    }
    site *released;
    Py_ssize_t released_capacity;
    if (sites_reserve(self, &released, &released_capacity) < 0) {
        Py_CLEAR(found);
    } else {
        site *slot = site_slot(self->sites, self->capacity, code, index);
        Py_INCREF(code);
        Py_INCREF(found);
        *slot = (site){code, index, found};
        self->count++;
    }
    if (released != NULL) {
        sites_release(released, released_capacity);
    }
    return found;
}

/* -- record ------------------------------------------------------------------------------- */

/* ``span.is_recording()``: 1, 0, or -1 with an exception set. */
static int is_recording(PyObject *span) {
    if (sdk_is_recording != NULL && _PyType_Lookup(Py_TYPE(span), str_is_recording) == sdk_is_recording) {
        PyObject *end = apm_field_get(span, &fields[F_END_TIME]);
        Py_XDECREF(end); /* compared by identity only */
        return end == NULL ? -1 : end == Py_None;
    }
    PyObject *answer = PyObject_CallMethodNoArgs(span, str_is_recording);
    int recording = answer == NULL ? -1 : PyObject_IsTrue(answer);
    Py_XDECREF(answer);
    return recording;
}

/* record(span): CallSite.record (see the top of this file). */
static PyObject *record(Recorder *self, PyObject *span) {
    PyObject *raw = apm_field_get(span, &fields[F_ATTRIBUTES]);
    PyObject *inner = raw ? apm_field_get(raw, &fields[F_DICT]) : NULL;
    Py_XDECREF(raw);
    if (inner == NULL || !PyDict_CheckExact(inner)) {
        Py_XDECREF(inner);
        if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return NULL;
        }
        PyErr_Clear();
        /* Not the SDK we know: the Python version, whose sys._getframe(1) is the same frame, as
         * calling from C adds no Python frame. */
        return PyObject_CallMethodOneArg(self->callsite, str_record, span);
    }
    int has = PyDict_Contains(inner, key_file);
    Py_DECREF(inner);
    if (has != 0) {
        return has < 0 ? NULL : Py_NewRef(Py_None); /* the instrumentation's are read as they are */
    }
    int recording = is_recording(span);
    if (recording <= 0) {
        return recording < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *found = find_site(self);
    if (found == NULL || found == Py_None) {
        return found;
    }
    PyObject *context = apm_field_get(span, &fields[F_CONTEXT]);
    PyObject *result = NULL;
    if (context != NULL && (!PyTuple_Check(context) || PyTuple_GET_SIZE(context) < 2)) {
        PyErr_SetString(PyExc_TypeError, "CallSiteRecorder: the span's _context is not a SpanContext");
    } else if (context != NULL) {
        if (PyDict_GET_SIZE(self->pending) >= max_pending) {
            PyDict_Clear(self->pending);
        }
        if (PyDict_SetItem(self->pending, PyTuple_GET_ITEM(context, 1), found) == 0) {
            result = Py_NewRef(Py_None);
        }
    }
    Py_XDECREF(context);
    Py_DECREF(found);
    return result;
}

/* -- the type ----------------------------------------------------------------------------- */

static PyObject *recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *callsite;
    static char *kwlist[] = {"callsite", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:CallSiteRecorder", kwlist, &callsite)) {
        return NULL;
    }
    PyObject *memo = PyObject_GetAttr(callsite, str_is_app_memo);
    if (memo == NULL) {
        return NULL;
    }
    if (!PyDict_CheckExact(memo)) {
        Py_DECREF(memo);
        PyErr_SetString(PyExc_TypeError, "CallSiteRecorder: callsite._is_app is not a dict");
        return NULL;
    }
    PyObject *callers = PyObject_GetAttrString(callsite, "callers");
    if (callers == NULL || !PyTuple_CheckExact(callers)) {
        Py_DECREF(memo);
        if (callers != NULL) {
            Py_DECREF(callers);
            PyErr_SetString(PyExc_TypeError, "CallSiteRecorder: callsite.callers is not a tuple");
        }
        return NULL;
    }
    PyObject *pending = PyObject_GetAttrString(callsite, "pending");
    if (pending == NULL || !PyDict_CheckExact(pending)) {
        Py_DECREF(memo);
        Py_DECREF(callers);
        if (pending != NULL) {
            Py_DECREF(pending);
            PyErr_SetString(PyExc_TypeError, "CallSiteRecorder: callsite.pending is not a dict");
        }
        return NULL;
    }
    Recorder *self = (Recorder *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(memo);
        Py_DECREF(callers);
        Py_DECREF(pending);
        return NULL;
    }
    self->callsite = Py_NewRef(callsite);
    self->is_app = memo;
    self->callers = callers;
    self->pending = pending;
    return (PyObject *)self;
}

static void recorder_dealloc(Recorder *self) {
    site *sites = self->sites;
    Py_ssize_t capacity = self->capacity;
    self->sites = NULL;
    self->capacity = self->count = 0;
    if (sites != NULL) {
        sites_release(sites, capacity);
    }
    for (int i = 0; i < RECENT_FILES; i++) {
        Py_CLEAR(self->recent[i].filename);
    }
    Py_XDECREF(self->callsite);
    Py_XDECREF(self->is_app);
    Py_XDECREF(self->callers);
    Py_XDECREF(self->pending);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef recorder_methods[] = {
    {"record", (PyCFunction)record, METH_O,
     "record(span): CallSite.record(span), walking the interpreter's frames: the site of the "
     "first application frame above the caller's caller, kept in callsite.pending by the span's "
     "id unless the span has code.file.path already or has ended."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject recorder_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_apm._native.CallSiteRecorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CallSiteRecorder(callsite): callsite.record in C (csrc/callsite.c).",
    .tp_new = recorder_new,
    .tp_dealloc = (destructor)recorder_dealloc,
    .tp_methods = recorder_methods,
};

/* A module attribute that must be an int within [1, limit]. -1 with an exception otherwise. */
static long positive_constant(PyObject *module, const char *name, long limit) {
    PyObject *value = PyObject_GetAttrString(module, name);
    if (value == NULL) {
        return -1;
    }
    long n = PyLong_Check(value) ? PyLong_AsLong(value) : -1;
    Py_DECREF(value);
    if (n < 1 || n > limit) {
        PyErr_Format(PyExc_ImportError, "otel_apm._native: callsite.%s is not an int in 1..%ld",
                     name, limit);
        return -1;
    }
    return n;
}

static int intern(PyObject **where, const char *text) {
    *where = PyUnicode_InternFromString(text);
    return *where == NULL ? -1 : 0;
}

int apm_callsite_init(PyObject *module) {
    if (apm_fields_intern(fields, F_COUNT) < 0 || intern(&str_is_recording, "is_recording") < 0 ||
        intern(&str_is_app, "is_app") < 0 || intern(&str_record, "record") < 0 ||
        intern(&str_is_app_memo, "_is_app") < 0) {
        return -1;
    }
    PyObject *callsite = PyImport_ImportModule("otel_apm.ingest.callsite");
    if (callsite == NULL) {
        return -1;
    }
    long depth = positive_constant(callsite, "MAX_DEPTH", 1L << 20);
    long sites = depth < 0 ? -1 : positive_constant(callsite, "MAX_SITES", 1L << 24);
    long pending = sites < 0 ? -1 : positive_constant(callsite, "MAX_PENDING", 1L << 30);
    key_file = pending < 0 ? NULL : PyObject_GetAttrString(callsite, "CODE_FILE_PATH");
    key_line = key_file ? PyObject_GetAttrString(callsite, "CODE_LINE_NUMBER") : NULL;
    key_function = key_line ? PyObject_GetAttrString(callsite, "CODE_FUNCTION_NAME") : NULL;
    Py_DECREF(callsite);
    if (key_function == NULL) {
        return -1;
    }
    max_depth = (int)depth;
    max_sites = (Py_ssize_t)sites;
    max_pending = (Py_ssize_t)pending;
    PyObject *semconv = PyImport_ImportModule("otel_apm.semconv");
    if (semconv == NULL) {
        return -1;
    }
    code_location = PyObject_GetAttrString(semconv, "code_location");
    Py_DECREF(semconv);
    PyTypeObject *span_type = code_location ? apm_class_of("opentelemetry.sdk.trace", "Span") : NULL;
    if (span_type == NULL) {
        return -1;
    }
    sdk_is_recording = _PyType_Lookup(span_type, str_is_recording);
    Py_XINCREF(sdk_is_recording); /* NULL (another SDK): every span is asked */
    Py_DECREF(span_type);
    if (PyType_Ready(&recorder_type) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(module, "CallSiteRecorder", (PyObject *)&recorder_type);
}

#else /* another interpreter's frames: CallSite.record runs */

int apm_callsite_init(PyObject *module) {
    (void)module;
    return 0;
}

#endif
