/* SDK spans -> SpanViews, for the in-process processor: the twin of _view_fields in
 * otel_apm/ingest/sdk.py, which stays the reference and the fallback.
 *
 *   read_sdk_spans(spans, service, keys, kinds, error, fills, fill, read_exception, read_one,
 *                  bounded_list) -> list[SpanView]
 *
 * A span's own fields (ids, parent, name, kind, times, status, scope) are read from the same
 * ReadableSpan internals _view_fields reads, where the instances keep them (fields.h), and stored
 * straight into a new view (view.h).
 *
 * The semantic conventions are NOT written here: semconv.filled_slots in Python is their one
 * definition.  What it sets depends only on the span's name, kind, error flag and the values of
 * the attributes it reads (``keys``, semconv.ANALYZED_KEYS), so those make the span's SHAPE, and
 * ``fills`` (a Fills, below, which the caller keeps) maps a shape to the slots filled_slots set
 * that differ from a blank view's.  A span of a known shape is filled from there with a few
 * stores; a new shape calls ``fill(view, attrs)`` (filled_slots) once.  The cache is emptied when
 * it holds its maximum of shapes, as otlp.py's _FILLS is.  It is a table of its own rather than a
 * dict keyed by a tuple: making, hashing and comparing that tuple cost 1,600 instructions a span
 * (callgrind), where the table hashes the values' cached hashes and compares by identity first.
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

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define Py_BUILD_CORE 1
#include "internal/pycore_dict.h"
#undef Py_BUILD_CORE

/* PyDict_Next inlined for the SDK's attribute dict (a dict of str keys with its own table): the
 * entries in order, skipping removed ones, as _PyDict_Next walks them, with the same meaning of
 * ``pos``; any other dict is PyDict_Next's.  The call cost 50 instructions an attribute
 * (callgrind), a dozen a span.  Compiled for 3.11's dict layout only (as fields.c). */
static inline int attrs_next(PyObject *dict, Py_ssize_t *pos, PyObject **key, PyObject **value) {
    PyDictObject *mp = (PyDictObject *)dict;
    if (mp->ma_values == NULL && DK_IS_UNICODE(mp->ma_keys) && *pos >= 0) {
        PyDictUnicodeEntry *entries = DK_UNICODE_ENTRIES(mp->ma_keys);
        for (Py_ssize_t i = *pos; i < mp->ma_keys->dk_nentries; i++) {
            if (entries[i].me_value != NULL) {
                *pos = i + 1;
                *key = entries[i].me_key;
                *value = entries[i].me_value;
                return 1;
            }
        }
        return 0;
    }
    return PyDict_Next(dict, pos, key, value);
}
#else
#define attrs_next PyDict_Next
#endif

/* At most this many analyzed attributes make a cacheable shape (each adds a key, a value and
 * perhaps its type); semconv reads about 40 keys, so a real span never comes near it. */
#define SHAPE_ATTRS_MAX 64
#define SHAPE_ITEMS_MAX (3 + 3 * SHAPE_ATTRS_MAX)
/* A longer string (a statement with its values inlined, say) is not made part of a shape: a
 * cache of sdk.FILLS_MAX shapes must not hold hundreds of megabytes of one-off statements.  An ORM's
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
#define SETUP_COUNT 8
struct setup {
    PyObject *keys;           /* frozenset of the attribute keys analysis reads */
    PyObject *kinds;          /* dict SpanKind -> int */
    PyObject *error;          /* StatusCode.ERROR */
    struct fills *fills;      /* the shapes seen, and what filled_slots set for each */
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

/* -- which attribute keys are analyzed ----------------------------------------------------- */

/* The answer of ``key in keys`` for recent key objects, found by address: an instrumentation's
 * keys are the same string objects span after span, and the set lookup cost 125 instructions a
 * key (callgrind), a dozen keys a span.  Each entry holds its key, so no other string can take
 * its address; the memo answers for one frozenset (``memo_keys``) and starts over for another. */
#define KEY_MEMO 512 /* a power of two */

static struct {
    PyObject *key; /* strong reference, or NULL */
    int analyzed;
} key_memo[KEY_MEMO];
static PyObject *memo_keys; /* the frozenset answered for (strong), or NULL */

/* Whether the exact str ``key`` is in ``keys``: 1, 0, or -1 with an exception set. */
static int is_analyzed(PyObject *keys, PyObject *key) {
    if (!PyFrozenSet_CheckExact(keys)) {
        return PySet_Contains(keys, key); /* a set may change: nothing remembered */
    }
    if (keys != memo_keys) {
        for (size_t i = 0; i < KEY_MEMO; i++) {
            Py_CLEAR(key_memo[i].key); /* strings: no Python code runs */
        }
        Py_INCREF(keys);
        Py_XSETREF(memo_keys, keys);
    }
    uintptr_t address = (uintptr_t)key;
    size_t i = (size_t)((address >> 4) ^ (address >> 13)) & (KEY_MEMO - 1);
    if (key_memo[i].key == key) {
        return key_memo[i].analyzed;
    }
    int found = PySet_Contains(keys, key);
    if (found < 0) {
        return -1;
    }
    Py_INCREF(key);
    Py_XSETREF(key_memo[i].key, key);
    key_memo[i].analyzed = found;
    return found;
}

/* -- the shapes seen: Fills ----------------------------------------------------------------- */

/* One shape and its fill: ``size`` items (name, kind, error, then each analyzed key, its value
 * and, for an int or a bool, its type) and ``count`` slots with the values filled_slots set. */
typedef struct {
    Py_hash_t hash;
    Py_ssize_t size;
    Py_ssize_t count;
    PyObject **items; /* strong references: size items, then count values; NULL marks a free slot */
    int *slots;       /* count slot numbers (view.h), each known to exist */
} shape;

struct fills {
    PyObject_HEAD
    shape *table; /* open addressing, linear probing; capacity a power of two */
    Py_ssize_t capacity;
    Py_ssize_t used;
    Py_ssize_t max; /* shapes kept before the table is emptied */
};

static void shape_release(shape *entry) {
    for (Py_ssize_t i = 0; i < entry->size + entry->count; i++) {
        Py_DECREF(entry->items[i]);
    }
    PyMem_Free(entry->items);
    PyMem_Free(entry->slots);
}

/* Release a table already detached from its Fills (the values are str, int, bool and None: their
 * deallocation runs no Python code, but a consistent Fills costs nothing). */
static void table_release(shape *table, Py_ssize_t capacity) {
    for (Py_ssize_t i = 0; i < capacity; i++) {
        if (table[i].items != NULL) {
            shape_release(&table[i]);
        }
    }
    PyMem_Free(table);
}

static void fills_clear(struct fills *self) {
    shape *table = self->table;
    Py_ssize_t capacity = self->capacity;
    self->table = NULL;
    self->capacity = self->used = 0;
    if (table != NULL) {
        table_release(table, capacity);
    }
}

/* The hash of a shape's items: only exact str, int and bool and type objects go in a shape, so
 * hashing runs no Python code and cannot fail (a str's hash is cached in it). */
static Py_hash_t shape_hash(PyObject *const *items, Py_ssize_t size) {
    Py_uhash_t h = 0xcbf29ce484222325u;
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *item = items[i];
        Py_hash_t part = PyUnicode_CheckExact(item) ? ((PyASCIIObject *)item)->hash : -1;
        if (part == -1) { /* not a str, or its hash not yet computed */
            part = PyType_Check(item) ? (Py_hash_t)((uintptr_t)item >> 4) : PyObject_Hash(item);
        }
        h = (h ^ (Py_uhash_t)part) * 0x100000001b3u;
    }
    return (Py_hash_t)h;
}

/* Whether an entry is the shape of ``items``: same objects, or equal ones of the same type
 * (comparing str and int runs no Python code).  1, 0, or -1 with an exception set. */
static int shape_equal(const shape *entry, Py_hash_t hash, PyObject *const *items, Py_ssize_t size) {
    if (entry->hash != hash || entry->size != size) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *a = entry->items[i], *b = items[i];
        if (a == b) {
            continue;
        }
        if (Py_TYPE(a) != Py_TYPE(b) || PyType_Check(a)) {
            return 0;
        }
        int equal = PyObject_RichCompareBool(a, b, Py_EQ);
        if (equal <= 0) {
            return equal;
        }
    }
    return 1;
}

/* The entry of the shape, or NULL: without an exception when there is none. */
static shape *fills_find(struct fills *self, PyObject *const *items, Py_ssize_t size, Py_hash_t hash) {
    if (self->table == NULL) {
        return NULL;
    }
    size_t mask = (size_t)self->capacity - 1;
    for (size_t i = (size_t)hash & mask;; i = (i + 1) & mask) {
        shape *entry = &self->table[i];
        if (entry->items == NULL) {
            return NULL;
        }
        int equal = shape_equal(entry, hash, items, size);
        if (equal != 0) {
            return equal < 0 ? NULL : entry;
        }
    }
}

/* Add a new shape, taking ``entry``'s references and memory whatever happens.  Emptied first
 * when it holds its maximum; grown at half full.  0, or -1 with an exception set. */
static int fills_add(struct fills *self, shape *entry) {
    if (self->used >= self->max) {
        fills_clear(self); /* bounded: unique shapes (a statement with its literals) */
    }
    if (self->table == NULL || (self->used + 1) * 2 > self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 64;
        shape *table = PyMem_Calloc((size_t)capacity, sizeof(shape));
        if (table == NULL) {
            shape_release(entry);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < self->capacity; i++) { /* rehash: references move, none change */
            shape *old = &self->table[i];
            if (old->items != NULL) {
                size_t mask = (size_t)capacity - 1, j = (size_t)old->hash & mask;
                while (table[j].items != NULL) {
                    j = (j + 1) & mask;
                }
                table[j] = *old;
            }
        }
        PyMem_Free(self->table);
        self->table = table;
        self->capacity = capacity;
    }
    size_t mask = (size_t)self->capacity - 1, i = (size_t)entry->hash & mask;
    while (self->table[i].items != NULL) {
        i = (i + 1) & mask;
    }
    self->table[i] = *entry;
    self->used++;
    return 0;
}

/* A new entry for the shape of ``items`` from filled_slots' ((slot name, value), ...), the slot
 * names turned into numbers once.  0, or -1 with an exception set (and nothing to release). */
static int shape_make(shape *entry, PyObject *const *items, Py_ssize_t size, Py_hash_t hash,
                      PyObject *pairs) {
    if (!PyTuple_Check(pairs)) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans: fill must return a tuple of pairs");
        return -1;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(pairs);
    int *slots = PyMem_Malloc(sizeof(int) * (size_t)(count ? count : 1));
    for (Py_ssize_t i = 0; slots != NULL && i < count; i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        slots[i] = -1;
        if (PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2) {
            slots[i] = apm_view_slot_of(PyTuple_GET_ITEM(pair, 0));
        }
        if (slots[i] < 0) {
            PyMem_Free(slots);
            PyErr_SetString(PyExc_ValueError, "read_sdk_spans: fill returned a pair that names no slot");
            return -1;
        }
    }
    PyObject **held = slots == NULL ? NULL : PyMem_Malloc(sizeof(PyObject *) * (size_t)(size + count));
    if (held == NULL) {
        PyMem_Free(slots);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < size; i++) {
        held[i] = Py_NewRef(items[i]);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        held[size + i] = Py_NewRef(PyTuple_GET_ITEM(PyTuple_GET_ITEM(pairs, i), 1));
    }
    *entry = (shape){.hash = hash, .size = size, .count = count, .items = held, .slots = slots};
    return 0;
}

static void shape_apply(const shape *entry, PyObject *view) {
    for (Py_ssize_t i = 0; i < entry->count; i++) {
        apm_view_set(view, (enum apm_view_slot)entry->slots[i], Py_NewRef(entry->items[entry->size + i]));
    }
}

static PyObject *fills_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    Py_ssize_t max;
    static char *names[] = {"max", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n:Fills", names, &max)) {
        return NULL;
    }
    if (max < 1) {
        PyErr_SetString(PyExc_ValueError, "Fills: max must be positive");
        return NULL;
    }
    struct fills *self = (struct fills *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->max = max;
    }
    return (PyObject *)self;
}

static void fills_dealloc(struct fills *self) {
    fills_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t fills_length(struct fills *self) { return self->used; }

static PyObject *fills_clear_method(struct fills *self, PyObject *unused) {
    (void)unused;
    fills_clear(self);
    Py_RETURN_NONE;
}

static PyMethodDef fills_methods[] = {
    {"clear", (PyCFunction)fills_clear_method, METH_NOARGS, "Forget every shape."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods fills_as_sequence = {.sq_length = (lenfunc)fills_length};

static PyTypeObject fills_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "otel_apm._native.Fills",
    .tp_basicsize = sizeof(struct fills),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fills(max): read_sdk_spans' shapes seen and their fills, at most max (csrc/sdkviews.c).",
    .tp_new = fills_new,
    .tp_dealloc = (destructor)fills_dealloc,
    .tp_methods = fills_methods,
    .tp_as_sequence = &fills_as_sequence,
};

/* -- one span --------------------------------------------------------------------------------- */

/* Set the view's analyzed fields from its attributes (a dict with at least one entry), through
 * the shape cache.  0, or -1 with an exception set. */
static int fill_view(PyObject *view, PyObject *attrs, PyObject *name, PyObject *kind, PyObject *error,
                     const struct setup *s) {
    /* Borrowed: nothing below runs Python code until the shape is found or held, so the
     * attribute dict cannot change under the walk (and its keys and values stay alive). */
    PyObject *items[SHAPE_ITEMS_MAX];
    Py_ssize_t count = 3;
    int analyzed = 0;
    int cacheable = PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) <= SHAPE_STR_MAX;
    items[0] = name;
    items[1] = kind;
    items[2] = error;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (attrs_next(attrs, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) {
            /* A str subclass could equal an analyzed key, and hashing it may run Python code:
             * let filled_slots read this span, uncached. */
            analyzed = 1;
            cacheable = 0;
            break;
        }
        int found = is_analyzed(s->keys, key);
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
    Py_hash_t hash = shape_hash(items, count);
    const shape *known = fills_find(s->fills, items, count, hash);
    if (known != NULL) {
        shape_apply(known, view);
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    /* A new shape: its items are held before filled_slots (Python) runs, which another thread
     * may use to add the same shape or empty the table: the entry is added afresh after it. */
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_INCREF(items[i]);
    }
    PyObject *pairs = PyObject_CallFunctionObjArgs(s->fill, view, attrs, NULL);
    shape entry;
    int failed = pairs == NULL || shape_make(&entry, items, count, hash, pairs) < 0;
    Py_XDECREF(pairs);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(items[i]);
    }
    if (failed) {
        return -1;
    }
    if (fills_find(s->fills, entry.items, count, hash) != NULL || PyErr_Occurred()) {
        shape_release(&entry); /* added meanwhile */
        return PyErr_Occurred() ? -1 : 0;
    }
    return fills_add(s->fills, &entry);
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
        PyObject *read = PyObject_CallFunctionObjArgs(s->read_one, span, service, NULL);
        if (read != NULL && Py_IS_TYPE(read, apm_view_type())) {
            apm_view_untrack_if_atomic(read);
        }
        return read;
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
    apm_view_untrack_if_atomic(view);
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

/* ``s`` from read_sdk_spans' arguments after the spans and the service (borrowed).  0, or -1
 * with a TypeError set. */
static int setup_of(PyObject *const *args, struct setup *s) {
    *s = (struct setup){
        .keys = args[0],
        .kinds = args[1],
        .error = args[2],
        .fills = (struct fills *)args[3],
        .fill = args[4],
        .read_exception = args[5],
        .read_one = args[6],
        .bounded_list = args[7],
    };
    if (!PyAnySet_Check(s->keys) || !PyDict_Check(s->kinds) || !Py_IS_TYPE(args[3], &fills_type) ||
        !PyType_Check(s->bounded_list)) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans: keys must be a set, kinds a dict, fills a Fills, "
                                         "bounded_list a type");
        return -1;
    }
    return 0;
}

PyObject *apm_sdk_view(PyObject *span, PyObject *service, PyObject *setup) {
    struct setup s;
    if (!PyTuple_Check(setup) || PyTuple_GET_SIZE(setup) != SETUP_COUNT) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans: the setup must be a tuple of 8");
        return NULL;
    }
    if (setup_of(&PyTuple_GET_ITEM(setup, 0), &s) < 0) {
        return NULL;
    }
    return read_span(span, service, &s);
}

static PyObject *read_sdk_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 + SETUP_COUNT) {
        PyErr_SetString(PyExc_TypeError, "read_sdk_spans takes 10 arguments");
        return NULL;
    }
    struct setup s;
    if (setup_of(args + 2, &s) < 0) {
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
     "read_sdk_spans(spans, service, keys, kinds, error, fills, fill, read_exception, read_one, "
     "bounded_list)\n--\n\nViews of ended SDK spans, as otel_apm.ingest.sdk._view_fields makes them "
     "(see csrc/sdkviews.c)."},
    {NULL, NULL, 0, NULL},
};

/* Whether attrs_next walks a dict as PyDict_Next does, on a probe with a removed entry: 1, 0, or
 * -1 with an exception set. */
static int attrs_walk_agrees(void) {
    PyObject *probe = Py_BuildValue("{sisisi}", "first", 1, "removed", 2, "last", 3);
    if (probe == NULL || PyDict_DelItemString(probe, "removed") < 0) {
        Py_XDECREF(probe);
        return -1;
    }
    Py_ssize_t ours = 0, theirs = 0;
    PyObject *key, *value, *their_key, *their_value;
    int agrees = 1, more;
    do {
        more = attrs_next(probe, &ours, &key, &value);
        if (more != PyDict_Next(probe, &theirs, &their_key, &their_value) ||
            (more && (key != their_key || value != their_value || ours != theirs))) {
            agrees = 0;
        }
    } while (more && agrees);
    Py_DECREF(probe);
    return agrees;
}

int apm_sdkviews_init(PyObject *module) {
    int agrees = attrs_walk_agrees();
    if (agrees <= 0) {
        if (agrees == 0) {
            PyErr_SetString(PyExc_ImportError,
                            "otel_apm._native: csrc/sdkviews.c walks a dict otherwise than PyDict_Next");
        }
        return -1;
    }
    if (apm_fields_intern(fields, F_COUNT) < 0 || PyType_Ready(&fills_type) < 0 ||
        PyModule_AddType(module, &fills_type) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, sdkviews_methods);
}
