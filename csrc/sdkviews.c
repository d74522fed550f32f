/* SDK spans -> SpanViews, for the in-process processor: the twin of _view_fields in
 * otel_apm/ingest/sdk.py, which stays the reference and the fallback.
 *
 *   read_sdk_spans(spans, service, keys, kinds, error, fills, fills_max, fill, read_exception,
 *                  read_one, bounded_list) -> list[SpanView]
 *
 * A span's own fields (ids, parent, name, kind, times, status, scope) are read from the same
 * ReadableSpan internals _view_fields reads, and stored straight into a new view (view.h).
 *
 * The semantic conventions are NOT written here: semconv.filled_slots in Python is their one
 * definition.  What it sets depends only on the span's name, kind, error flag and the values of
 * the attributes it reads (``keys``, semconv.ANALYZED_KEYS), so those make the span's SHAPE, and
 * ``fills`` (a dict the caller owns) maps a shape to the slots filled_slots set that differ from a
 * blank view's, as flat (slot number, value, ...) tuples.  A span of a known shape is filled from
 * there with a few stores; a new shape calls ``fill(view, attrs)`` (filled_slots) once.  The cache
 * is emptied when it holds ``fills_max`` shapes, as otlp.py's _FILLS is.
 *
 * Only exact str, int and bool values go into a shape: their equality is exact (an int is tagged
 * with its type, as True == 1 but str(True) != str(1)), and hashing or comparing them runs no
 * Python code.  A span with any other analyzed value (a float, where -0.0 == 0.0; a tuple; a str
 * subclass; a string past SHAPE_STR_MAX) is filled by ``fill`` without being cached.  A span whose attributes are not the
 * plain dict inside BoundedAttributes is read whole by ``read_one`` (_view_fields), and a span
 * with events has them read by ``read_exception(view, events)``, both in Python.
 *
 * ``kinds`` maps the span's SpanKind to its int, ``error`` is StatusCode.ERROR (compared by
 * identity, as _view_fields does).  ``bounded_list`` is the SDK's BoundedList, whose __len__ is
 * Python: its events are counted by the deque inside it.  Any exception (a missing field, a failing callback) is raised
 * to the caller, as _view_fields would raise it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fields.h"
#include "native.h"
#include "view.h"

/* At most this many analyzed attributes make a cacheable shape (each adds a key, a value and
 * perhaps its type); semconv reads about 40 keys, so a real span never comes near it. */
#define SHAPE_ATTRS_MAX 64
#define SHAPE_ITEMS_MAX (3 + 3 * SHAPE_ATTRS_MAX)
/* A longer string (a statement with its values inlined, say) is not made part of a shape: a
 * cache of fills_max shapes must not hold hundreds of megabytes of one-off statements.  An ORM's
 * statements are well under it. */
#define SHAPE_STR_MAX 4096

/* The fields read: the span's, then those of the objects it holds (fields.h).  One entry per
 * class read, as each remembers where its last class keeps the field. */
enum field_id {
    F_CONTEXT,
    F_PARENT,
    F_NAME,
    F_KIND,
    F_START_TIME,
    F_END_TIME,
    F_STATUS,
    F_ATTRIBUTES,
    F_INSTRUMENTATION_SCOPE,
    F_EVENTS,
    F_STATUS_CODE, /* of the span's Status */
    F_DICT,        /* of its BoundedAttributes */
    F_SCOPE_NAME,  /* of its InstrumentationScope */
    F_DQ,          /* of its BoundedList of events */
    F_COUNT
};
static struct apm_field fields[F_COUNT] = {
    [F_CONTEXT] = {.text = "_context"},
    [F_PARENT] = {.text = "_parent"},
    [F_NAME] = {.text = "_name"},
    [F_KIND] = {.text = "_kind"},
    [F_START_TIME] = {.text = "_start_time"},
    [F_END_TIME] = {.text = "_end_time"},
    [F_STATUS] = {.text = "_status"},
    [F_ATTRIBUTES] = {.text = "_attributes"},
    [F_INSTRUMENTATION_SCOPE] = {.text = "_instrumentation_scope"},
    [F_EVENTS] = {.text = "_events"},
    [F_STATUS_CODE] = {.text = "_status_code"},
    [F_DICT] = {.text = "_dict"},
    [F_SCOPE_NAME] = {.text = "_name"},
    [F_DQ] = {.text = "_dq"},
};

#define FIELD(obj, id) apm_field_get((obj), &fields[id])

/* The arguments after spans and service, borrowed from the call. */
struct setup {
    PyObject *keys;           /* frozenset of the attribute keys analysis reads */
    PyObject *kinds;          /* dict SpanKind -> int */
    PyObject *error;          /* StatusCode.ERROR */
    PyObject *fills;          /* dict shape -> (slot, value, slot, value, ...) */
    Py_ssize_t fills_max;     /* shapes kept before the cache is emptied */
    PyObject *fill;           /* semconv.filled_slots(view, attrs) -> ((slot name, value), ...) */
    PyObject *read_exception; /* sdk._read_exception(view, events) */
    PyObject *read_one;       /* sdk._view_fields(span, service) */
    PyObject *bounded_list;   /* opentelemetry.sdk.util.BoundedList, the type of span._events */
};

/* ``obj[index]`` (new reference), as ``ctx[0]`` reads a SpanContext.  SpanContext is a tuple
 * subclass defined in Python, whose sq_item goes through a Python-level __getitem__ (700
 * instructions a call, measured): a tuple's items are read directly. */
static PyObject *item(PyObject *obj, Py_ssize_t index) {
    if (PyTuple_Check(obj) && index < PyTuple_GET_SIZE(obj)) {
        PyObject *value = PyTuple_GET_ITEM(obj, index);
        Py_INCREF(value);
        return value;
    }
    return PySequence_GetItem(obj, index);
}

/* ``value or 0``, as _view_fields reads the start and end times (new reference). */
static PyObject *or_zero(PyObject *value) {
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (truth) {
        return value;
    }
    Py_DECREF(value);
    return PyLong_FromLong(0);
}

/* ``kinds[kind]`` (borrowed), or NULL with an exception set.  SpanKind is an Enum, whose
 * __hash__ is Python code: its few members are found by identity first. */
static PyObject *kind_of(PyObject *kinds, PyObject *kind) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(kinds, &pos, &key, &value)) {
        if (key == kind) {
            return value;
        }
    }
    value = PyDict_GetItemWithError(kinds, kind);
    if (value == NULL && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, kind);
    }
    return value;
}

/* Whether the span has events (``bool(span._events)``): 1, 0, or -1 with an exception set.  The
 * SDK keeps them in a BoundedList, whose __len__ (Python) is the length of its deque. */
static int has_events(PyObject *events, const struct setup *s) {
    if (Py_IS_TYPE(events, (PyTypeObject *)s->bounded_list)) {
        PyObject *deque = FIELD(events, F_DQ);
        if (deque == NULL) {
            return -1;
        }
        Py_ssize_t count = PyObject_Size(deque);
        Py_DECREF(deque);
        return count < 0 ? -1 : count > 0;
    }
    return PyObject_IsTrue(events);
}

/* The stored pairs of a shape, from filled_slots' ((slot name, value), ...): the slot names are
 * turned into numbers once, so a hit stores without looking a name up.  New reference. */
static PyObject *compile_fill(PyObject *pairs) {
    if (!PyTuple_Check(pairs)) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans: fill must return a tuple of pairs");
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(pairs);
    PyObject *flat = PyTuple_New(2 * count);
    if (flat == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        int slot = -1;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            slot = apm_view_slot_of(PyTuple_GET_ITEM(pair, 0));
        }
        if (slot < 0) {
            Py_DECREF(flat);
            PyErr_SetString(PyExc_ValueError, "read_sdk_spans: fill returned a pair that names no slot");
            return NULL;
        }
        PyObject *number = PyLong_FromLong(slot);
        if (number == NULL) {
            Py_DECREF(flat);
            return NULL;
        }
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        Py_INCREF(value);
        PyTuple_SET_ITEM(flat, 2 * i, number);
        PyTuple_SET_ITEM(flat, 2 * i + 1, value);
    }
    return flat;
}

/* Set the view's analyzed fields from its attributes (a dict with at least one entry), through
 * the shape cache.  0, or -1 with an exception set. */
static int fill_view(PyObject *view, PyObject *attrs, PyObject *name, PyObject *kind, PyObject *error,
                     const struct setup *s) {
    /* Borrowed: nothing below runs Python code until the key is built, so the attribute dict
     * cannot change under the walk (and its keys and values stay alive). */
    PyObject *items[SHAPE_ITEMS_MAX];
    Py_ssize_t count = 3;
    int analyzed = 0;
    int cacheable = PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) <= SHAPE_STR_MAX;
    items[0] = name;
    items[1] = kind;
    items[2] = error;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            /* A str subclass could equal an analyzed key, and hashing it may run Python code:
             * let filled_slots read this span, uncached. */
            analyzed = 1;
            cacheable = 0;
            break;
        }
        int found = PySet_Contains(s->keys, key);
        if (found < 0) {
            return -1;
        }
        if (!found) {
            continue;
        }
        analyzed = 1;
        if (!cacheable) {
            continue;
        }
        if (count + 3 > SHAPE_ITEMS_MAX) {
            cacheable = 0;
        } else if (PyUnicode_CheckExact(value) && PyUnicode_GET_LENGTH(value) <= SHAPE_STR_MAX) {
            items[count++] = key;
            items[count++] = value;
        } else if (PyLong_CheckExact(value) || PyBool_Check(value)) {
            items[count++] = key;
            items[count++] = value;
            items[count++] = (PyObject *)Py_TYPE(value);
        } else {
            cacheable = 0;
        }
    }
    if (!analyzed) {
        return 0; /* filled_slots would set nothing */
    }
    if (!cacheable) {
        PyObject *pairs = PyObject_CallFunctionObjArgs(s->fill, view, attrs, NULL);
        Py_XDECREF(pairs);
        return pairs == NULL ? -1 : 0;
    }
    PyObject *shape = PyTuple_New(count);
    if (shape == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_INCREF(items[i]);
        PyTuple_SET_ITEM(shape, i, items[i]);
    }
    PyObject *flat = PyDict_GetItemWithError(s->fills, shape); /* borrowed */
    if (flat != NULL && PyTuple_CheckExact(flat)) {
        Py_DECREF(shape);
        for (Py_ssize_t i = 0; i + 1 < PyTuple_GET_SIZE(flat); i += 2) {
            long slot = PyLong_AsLong(PyTuple_GET_ITEM(flat, i));
            if (slot < 0 || slot >= APM_VIEW_SLOT_COUNT) { /* not a fill this file stored */
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_ValueError, "read_sdk_spans: fills holds a bad slot number");
                }
                return -1;
            }
            PyObject *stored = PyTuple_GET_ITEM(flat, i + 1);
            Py_INCREF(stored);
            apm_view_set(view, (enum apm_view_slot)slot, stored);
        }
        return 0;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(shape);
        return -1;
    }
    PyObject *pairs = PyObject_CallFunctionObjArgs(s->fill, view, attrs, NULL);
    if (pairs == NULL) {
        Py_DECREF(shape);
        return -1;
    }
    flat = compile_fill(pairs);
    Py_DECREF(pairs);
    if (flat == NULL) {
        Py_DECREF(shape);
        return -1;
    }
    if (PyDict_GET_SIZE(s->fills) >= s->fills_max) {
        PyDict_Clear(s->fills); /* bounded: unique shapes (a statement with its literals) */
    }
    int stored = PyDict_SetItem(s->fills, shape, flat);
    Py_DECREF(shape);
    Py_DECREF(flat);
    return stored;
}

/* The plain dict inside the span's BoundedAttributes (new reference), or NULL: with an
 * exception set on an error, without one when the SDK keeps its attributes otherwise. */
static PyObject *plain_attributes(PyObject *span) {
    PyObject *bounded = FIELD(span, F_ATTRIBUTES);
    if (bounded == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyObject *inner = FIELD(bounded, F_DICT);
    Py_DECREF(bounded);
    if (inner == NULL) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    if (!PyDict_CheckExact(inner)) {
        Py_DECREF(inner);
        return NULL;
    }
    return inner;
}

/* One span's view, as _view_fields makes it.  New reference, or NULL with an exception set. */
static PyObject *read_span(PyObject *span, PyObject *service, const struct setup *s) {
    PyObject *attrs = plain_attributes(span);
    if (attrs == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        /* Not the SDK's dict: _view_fields reads the public mapping. */
        return PyObject_CallFunctionObjArgs(s->read_one, span, service, NULL);
    }
    PyObject *view = NULL, *ctx = NULL, *parent = NULL, *name = NULL, *kind_key = NULL,
             *status = NULL, *code = NULL, *scope = NULL, *events = NULL, *value;
    PyObject *kind; /* borrowed from kinds */
    ctx = FIELD(span, F_CONTEXT);
    parent = ctx == NULL ? NULL : FIELD(span, F_PARENT);
    name = parent == NULL ? NULL : FIELD(span, F_NAME);
    kind_key = name == NULL ? NULL : FIELD(span, F_KIND);
    if (kind_key == NULL) {
        goto error;
    }
    kind = kind_of(s->kinds, kind_key);
    if (kind == NULL) {
        goto error;
    }
    view = apm_view_new();
    if (view == NULL) {
        goto error;
    }
    if ((value = item(ctx, 0)) == NULL) {
        goto error;
    }
    apm_view_set(view, APM_VIEW_TRACE_ID, value);
    if ((value = item(ctx, 1)) == NULL) {
        goto error;
    }
    apm_view_set(view, APM_VIEW_SPAN_ID, value);
    if (parent != Py_None) { /* a remote parent is another process's: parent_id stays 0 */
        PyObject *remote = item(parent, 2);
        int is_remote = remote == NULL ? -1 : PyObject_IsTrue(remote);
        Py_XDECREF(remote);
        if (is_remote < 0) {
            goto error;
        }
        if (!is_remote) {
            if ((value = item(parent, 1)) == NULL) {
                goto error;
            }
            apm_view_set(view, APM_VIEW_PARENT_ID, value);
        }
    }
    Py_INCREF(name);
    apm_view_set(view, APM_VIEW_NAME, name);
    Py_INCREF(kind);
    apm_view_set(view, APM_VIEW_KIND, kind);
    value = FIELD(span, F_START_TIME);
    if (value == NULL || (value = or_zero(value)) == NULL) {
        goto error;
    }
    apm_view_set(view, APM_VIEW_START_NS, value);
    value = FIELD(span, F_END_TIME);
    if (value == NULL || (value = or_zero(value)) == NULL) {
        goto error;
    }
    apm_view_set(view, APM_VIEW_END_NS, value);
    status = FIELD(span, F_STATUS);
    code = status == NULL ? NULL : FIELD(status, F_STATUS_CODE);
    if (code == NULL) {
        goto error;
    }
    PyObject *error = code == s->error ? Py_True : Py_False;
    Py_INCREF(error);
    apm_view_set(view, APM_VIEW_ERROR, error);
    Py_INCREF(service);
    apm_view_set(view, APM_VIEW_SERVICE, service);
    if (PyDict_GET_SIZE(attrs) > 0 && fill_view(view, attrs, name, kind, error, s) < 0) {
        goto error;
    }
    scope = FIELD(span, F_INSTRUMENTATION_SCOPE);
    if (scope == NULL) {
        goto error;
    }
    if (scope != Py_None) {
        if ((value = FIELD(scope, F_SCOPE_NAME)) == NULL) {
            goto error;
        }
        apm_view_set(view, APM_VIEW_SCOPE, value);
    }
    events = FIELD(span, F_EVENTS);
    int any_events = events == NULL ? -1 : has_events(events, s);
    if (any_events < 0) {
        goto error;
    }
    if (any_events) {
        PyObject *done = PyObject_CallFunctionObjArgs(s->read_exception, view, events, NULL);
        if (done == NULL) {
            goto error;
        }
        Py_DECREF(done);
    }
    goto done;
error:
    Py_CLEAR(view);
done:
    Py_DECREF(attrs);
    Py_XDECREF(ctx);
    Py_XDECREF(parent);
    Py_XDECREF(name);
    Py_XDECREF(kind_key);
    Py_XDECREF(status);
    Py_XDECREF(code);
    Py_XDECREF(scope);
    Py_XDECREF(events);
    return view;
}

static PyObject *read_sdk_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans takes 11 arguments");
        return NULL;
    }
    struct setup s = {
        .keys = args[2],
        .kinds = args[3],
        .error = args[4],
        .fills = args[5],
        .fills_max = PyLong_AsSsize_t(args[6]),
        .fill = args[7],
        .read_exception = args[8],
        .read_one = args[9],
        .bounded_list = args[10],
    };
    if (s.fills_max == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyAnySet_Check(s.keys) || !PyDict_Check(s.kinds) || !PyDict_Check(s.fills) || s.fills_max < 1 ||
        !PyType_Check(s.bounded_list)) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans: keys must be a set, kinds and fills dicts, "
                                         "fills_max positive, bounded_list a type");
        return NULL;
    }
    PyObject *spans = PySequence_Fast(args[0], "read_sdk_spans: spans must be a sequence");
    if (spans == NULL) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(spans);
    PyObject *views = PyList_New(count);
    if (views == NULL) {
        Py_DECREF(spans);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *view = read_span(PySequence_Fast_GET_ITEM(spans, i), args[1], &s);
        if (view == NULL) {
            Py_DECREF(views);
            Py_DECREF(spans);
            return NULL;
        }
        PyList_SET_ITEM(views, i, view);
    }
    Py_DECREF(spans);
    return views;
}

static PyMethodDef sdkviews_methods[] = {
    {"read_sdk_spans", (PyCFunction)(void (*)(void))read_sdk_spans, METH_FASTCALL,
     "read_sdk_spans(spans, service, keys, kinds, error, fills, fills_max, fill, read_exception, "
     "read_one, bounded_list)\n--\n\nViews of ended SDK spans, as otel_apm.ingest.sdk._view_fields makes them "
     "(see csrc/sdkviews.c)."},
    {NULL, NULL, 0, NULL},
};

int apm_sdkviews_init(PyObject *module) {
    if (apm_fields_intern(fields, F_COUNT) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, sdkviews_methods);
}
