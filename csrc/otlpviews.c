/* OTLP protobuf bytes -> SpanViews: the C twin of otel_apm/ingest/otlp.py views_from_payload.
 *
 * The collector reads every ExportTraceServiceRequest it receives into SpanViews.  The Python
 * version parses the payload with a reduced schema (otlp.py _VIEW_MESSAGES) and then loops over
 * the spans in Python; this reads the protobuf wire format directly, in two passes:
 *
 *   1. check: the whole payload is walked as upb walks it with _VIEW_MESSAGES (the same fields
 *      declared, the same wire-format rules, UTF-8 checked in the same string fields, the same
 *      nesting limit), so a payload Python refuses with DecodeError is refused here before any
 *      view is made or any Python callback runs;
 *   2. read: the spans become views, in the order they appear, with the Python version's id
 *      checks, sharing and shape cache.
 *
 * One semantic-convention implementation: a span's analyzed fields come from otlp.py's _FILLS
 * (the same dict, keyed by the same shape tuple; a memo of recent tuples spares remaking them,
 * see shape_of) and a miss calls otlp.py's _fill.  The
 * resource's service.name and exception events also go through otlp.py's helpers: they are
 * per resource or rare, and KeyValue parsing stays protobuf's.
 *
 * Protobuf merge rules are followed: a field seen twice keeps its last value, a sub-message seen
 * twice is merged (its fields from both, the last of each), repeated fields accumulate; a known
 * field number with another wire type is an unknown field, skipped.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "native.h"
#include "view.h"

#if PY_VERSION_HEX < 0x030B0000
/* PyFloat_Pack8 became public in 3.11; 3.10 exports the same function under its private name. */
#define PyFloat_Pack8(x, p, le) _PyFloat_Pack8((x), (unsigned char *)(p), (le))
#endif
#if PY_VERSION_HEX >= 0x030D0000
/* 3.13 moved this declaration to the internal headers; the function is still exported.  Left
 * undeclared, C would take it to return an int and cut the hash to 32 bits. */
PyAPI_FUNC(Py_hash_t) _Py_HashBytes(const void *, Py_ssize_t);
#endif

/* -- wire format --------------------------------------------------------------------------- */

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_LEN = 2, WIRE_GROUP_START = 3, WIRE_GROUP_END = 4,
       WIRE_FIXED32 = 5 };

/* upb's nesting limit (kUpb_WireFormat_DefaultDepthLimit, which Python's protobuf uses): each
 * sub-message and each group inside an unknown field takes one level. */
#define DEPTH_LIMIT 100

/* Why a payload is refused: the message DecodeError carries, as upb words it. */
enum { OK = 0, CORRUPT = -1, BAD_UTF8 = -2 };

typedef struct {
    const uint8_t *p;   /* the next byte */
    const uint8_t *end; /* one past the message's last byte */
} reader;

/* One field as read: its number, wire type and value (a varint, or the bytes it spans). */
typedef struct {
    uint32_t number;
    int wire;
    uint64_t varint;     /* WIRE_VARINT */
    const uint8_t *data; /* WIRE_LEN, WIRE_FIXED64, WIRE_FIXED32 */
    Py_ssize_t len;
} field;

/* A varint of at most max_bytes bytes (upb: 10 for values, whose bits past 64 are dropped; 5
 * for tags and lengths).  0, or CORRUPT when it is truncated or longer. */
static inline int read_varint(reader *r, int max_bytes, uint64_t *out) {
    if (r->p < r->end && *r->p < 0x80) { /* one byte: tags, lengths and most values */
        *out = *r->p++;
        return OK;
    }
    uint64_t value = 0;
    for (int i = 0; i < max_bytes; i++) {
        if (r->p >= r->end) {
            return CORRUPT;
        }
        uint8_t byte = *r->p++;
        value |= (uint64_t)(byte & 0x7f) << (7 * i); /* the 10th byte's bits past 64 drop */
        if (!(byte & 0x80)) {
            *out = value;
            return OK;
        }
    }
    return CORRUPT;
}

static inline int read_tag(reader *r, uint32_t *number, int *wire) {
    uint64_t tag;
    if (read_varint(r, 5, &tag) < 0 || tag > UINT32_MAX) {
        return CORRUPT;
    }
    *number = (uint32_t)(tag >> 3);
    *wire = (int)(tag & 7);
    return OK;
}

static int skip_group(reader *r, uint32_t number, int depth);

/* The value of a field whose tag was read: into f, or skipped for a group.  ``depth`` is the
 * nesting of the message the field is in.  0, or CORRUPT. */
static inline int read_value(reader *r, field *f, int depth) {
    switch (f->wire) {
    case WIRE_VARINT:
        return read_varint(r, 10, &f->varint);
    case WIRE_FIXED64:
    case WIRE_FIXED32: {
        Py_ssize_t size = f->wire == WIRE_FIXED64 ? 8 : 4;
        if (r->end - r->p < size) {
            return CORRUPT;
        }
        f->data = r->p;
        f->len = size;
        r->p += size;
        return OK;
    }
    case WIRE_LEN: {
        uint64_t size;
        if (read_varint(r, 5, &size) < 0 || size > (uint64_t)(r->end - r->p)) {
            return CORRUPT;
        }
        f->data = r->p;
        f->len = (Py_ssize_t)size;
        r->p += size;
        return OK;
    }
    case WIRE_GROUP_START:
        return skip_group(r, f->number, depth + 1);
    default: /* an end-group outside its group, or wire type 6 or 7 */
        return CORRUPT;
    }
}

/* Skip an unknown group up to its end tag (same number), nested groups included.  Inside a
 * group upb takes any field number, 0 too. */
static int skip_group(reader *r, uint32_t number, int depth) {
    if (depth > DEPTH_LIMIT) {
        return CORRUPT;
    }
    for (;;) {
        field f;
        if (r->p >= r->end || read_tag(r, &f.number, &f.wire) < 0) {
            return CORRUPT; /* a group must end before its message does */
        }
        if (f.wire == WIRE_GROUP_END) {
            return f.number == number ? OK : CORRUPT;
        }
        if (read_value(r, &f, depth) < 0) {
            return CORRUPT;
        }
    }
}

/* The next field of a message: 1 and the field, 0 at the message's end, or CORRUPT. */
static inline int next_field(reader *r, field *f, int depth) {
    if (r->p >= r->end) {
        return 0;
    }
    if (read_tag(r, &f->number, &f->wire) < 0 || f->number == 0) {
        return CORRUPT;
    }
    return read_value(r, f, depth) < 0 ? CORRUPT : 1;
}

static uint64_t fixed64_of(const uint8_t *data) {
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--) {
        value = value << 8 | data[i];
    }
    return value;
}

/* -- pass 1: the check ------------------------------------------------------------------------ */

/* The messages of _VIEW_MESSAGES, and what a length-delimited field of each is. */
enum message { REQUEST, RESOURCE_SPANS, RESOURCE, SCOPE_SPANS, SCOPE, SPAN, EVENT, STATUS };
enum { NOT_CHECKED = -1, STRING = -2 }; /* bytes and unknown fields / a string field */

static int len_field_kind(enum message message, uint32_t number) {
    switch (message) {
    case REQUEST:
        return number == 1 ? RESOURCE_SPANS : NOT_CHECKED;
    case RESOURCE_SPANS:
        return number == 1 ? RESOURCE : number == 2 ? SCOPE_SPANS : NOT_CHECKED;
    case SCOPE_SPANS:
        return number == 1 ? SCOPE : number == 2 ? SPAN : NOT_CHECKED;
    case SCOPE:
        return number == 1 ? STRING : NOT_CHECKED;
    case SPAN:
        return number == 5 ? STRING : number == 11 ? EVENT : number == 15 ? STATUS : NOT_CHECKED;
    case EVENT:
        return number == 2 ? STRING : NOT_CHECKED;
    default: /* RESOURCE (attributes are bytes), STATUS (an int) */
        return NOT_CHECKED;
    }
}

static int valid_utf8(const uint8_t *data, Py_ssize_t len) {
    Py_ssize_t i = 0;
    for (; i + 8 <= len; i += 8) { /* ASCII eight bytes at a time: most strings are */
        uint64_t word;
        memcpy(&word, data + i, 8);
        if (word & 0x8080808080808080ULL) {
            break;
        }
    }
    for (; i < len; i++) {
        if (data[i] & 0x80) { /* not ASCII: let Python's strict decoder judge, as upb would */
            PyObject *text = PyUnicode_DecodeUTF8((const char *)data, len, NULL);
            if (text == NULL) {
                PyErr_Clear();
                return 0;
            }
            Py_DECREF(text);
            return 1;
        }
    }
    return 1;
}

/* Walk one message as upb would parse it with _VIEW_MESSAGES.  OK, CORRUPT or BAD_UTF8. */
static int check(const uint8_t *data, Py_ssize_t len, enum message message, int depth) {
    reader r = {data, data + len};
    field f;
    int more;
    while ((more = next_field(&r, &f, depth)) > 0) {
        if (f.wire != WIRE_LEN) {
            continue;
        }
        int kind = len_field_kind(message, f.number);
        if (kind == STRING) {
            if (!valid_utf8(f.data, f.len)) {
                return BAD_UTF8;
            }
        } else if (kind != NOT_CHECKED) {
            if (depth + 1 > DEPTH_LIMIT) {
                return CORRUPT;
            }
            int status = check(f.data, f.len, (enum message)kind, depth + 1);
            if (status < 0) {
                return status;
            }
        }
    }
    return more; /* 0 at the end, or CORRUPT */
}

/* -- pass 2: the views ------------------------------------------------------------------------ */

/* Per-request sharing, as the Python version's dicts do: equal strings (span and scope names)
 * and equal span ids become one object.  Open addressing over a power-of-two table kept at most
 * half full, grown as entries come (a payload of many tiny spans must not size it up front);
 * hashed with Python's keyed bytes hash, so a sender cannot choose colliding keys. */
typedef struct {
    Py_hash_t hash;
    const uint8_t *key; /* into the payload, alive for the call */
    Py_ssize_t len;
    PyObject *value; /* strong; NULL: an empty entry */
} entry;

typedef struct {
    entry *entries; /* NULL until the first entry */
    size_t mask;
    size_t used;
} table;

/* Double the table (or make its first 64 entries).  0, or -1 with MemoryError. */
static int table_grow(table *t) {
    size_t size = t->entries == NULL ? 64 : (t->mask + 1) * 2;
    entry *grown = PyMem_Calloc(size, sizeof(entry));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (t->entries != NULL) {
        for (size_t i = 0; i <= t->mask; i++) {
            if (t->entries[i].value != NULL) {
                size_t j = (size_t)t->entries[i].hash & (size - 1);
                while (grown[j].value != NULL) {
                    j = (j + 1) & (size - 1);
                }
                grown[j] = t->entries[i];
            }
        }
        PyMem_Free(t->entries);
    }
    t->entries = grown;
    t->mask = size - 1;
    return 0;
}

static void table_free(table *t) {
    if (t->entries == NULL) {
        return;
    }
    for (size_t i = 0; i <= t->mask; i++) {
        Py_XDECREF(t->entries[i].value);
    }
    PyMem_Free(t->entries);
    t->entries = NULL;
}

/* The object the table holds for these bytes, made by make(data, len) on first sight.  New
 * reference, or NULL with an exception set. */
static PyObject *table_share(table *t, const uint8_t *data, Py_ssize_t len,
                             PyObject *(*make)(const uint8_t *, Py_ssize_t)) {
    if ((t->entries == NULL || (t->used + 1) * 2 > t->mask + 1) && table_grow(t) < 0) {
        return NULL;
    }
    Py_hash_t hash = _Py_HashBytes(data, len); /* bytes' hash, keyed (Py_HashBuffer from 3.14) */
    size_t i = (size_t)hash & t->mask;
    for (;; i = (i + 1) & t->mask) {
        entry *e = &t->entries[i];
        if (e->value == NULL) {
            PyObject *value = make(data, len);
            if (value == NULL) {
                return NULL;
            }
            *e = (entry){hash, data, len, value};
            t->used++;
            Py_INCREF(value);
            return value;
        }
        if (e->hash == hash && e->len == len && memcmp(e->key, data, (size_t)len) == 0) {
            Py_INCREF(e->value);
            return e->value;
        }
    }
}

static PyObject *make_str(const uint8_t *data, Py_ssize_t len) {
    return PyUnicode_DecodeUTF8((const char *)data, len, NULL); /* valid: pass 1 checked it */
}

/* A span id (8 bytes) as int.from_bytes(data, "big"). */
static uint64_t big_endian64(const uint8_t *data) {
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) {
        value = value << 8 | data[i];
    }
    return value;
}

static PyObject *make_id(const uint8_t *data, Py_ssize_t len) {
    (void)len; /* always 8: checked before */
    return PyLong_FromUnsignedLongLong(big_endian64(data));
}

/* A trace id (16 bytes) as int.from_bytes(data, "big"). */
static PyObject *make_trace_id(const uint8_t *data) {
    PyObject *high = PyLong_FromUnsignedLongLong(big_endian64(data));
    PyObject *low = PyLong_FromUnsignedLongLong(big_endian64(data + 8));
    PyObject *shift = PyLong_FromLong(64);
    PyObject *shifted = high && shift ? PyNumber_Lshift(high, shift) : NULL;
    PyObject *trace_id = shifted && low ? PyNumber_Or(shifted, low) : NULL;
    Py_XDECREF(high), Py_XDECREF(low), Py_XDECREF(shift), Py_XDECREF(shifted);
    return trace_id;
}

/* OTLP SpanKind (UNSPECIFIED=0, INTERNAL..CONSUMER=1..5) to the API's (INTERNAL..CONSUMER=0..4);
 * any other value reads as internal (otlp.py _KIND). */
static long api_kind(int32_t kind) { return kind >= 2 && kind <= 5 ? kind - 1 : 0; }

#define STATUS_ERROR 2 /* Status.StatusCode.STATUS_CODE_ERROR */

typedef struct {
    /* otlp.py's parts, borrowed from the call's arguments */
    PyObject *fills;          /* _FILLS: shape -> ((slot, value), ...) */
    PyObject *fill;           /* _fill(view, shape) -> fill, on a miss */
    PyObject *service_name;   /* _service_name(resource attribute bytes) -> str */
    PyObject *exception_type; /* _exception_type(view, event attribute bytes) */
    PyObject *views;          /* the list returned */
    Py_ssize_t malformed;
    table strings;
    table ids;
    /* the trace id of the last span read, as Python's loop keeps it: consecutive spans share */
    const uint8_t *trace_bytes;
    PyObject *trace_id;
    /* a span's attributes (slices of the payload), reused from span to span */
    const uint8_t **attr_data;
    Py_ssize_t *attr_len;
    Py_ssize_t attr_cap;
} request_state;

/* A span's fields, as pass 2 reads them (the last of each, merged as protobuf merges). */
typedef struct {
    const uint8_t *trace, *span, *parent, *name;
    Py_ssize_t trace_len, span_len, parent_len, name_len;
    int32_t kind, status;
    uint64_t start, end;
    Py_ssize_t attrs;
    int has_events;
} span_fields;

static int add_attr(request_state *s, Py_ssize_t at, const uint8_t *data, Py_ssize_t len) {
    if (at == s->attr_cap) {
        Py_ssize_t cap = s->attr_cap ? s->attr_cap * 2 : 32;
        const uint8_t **data_grown = PyMem_Realloc(s->attr_data, (size_t)cap * sizeof(*data_grown));
        if (data_grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->attr_data = data_grown;
        Py_ssize_t *len_grown = PyMem_Realloc(s->attr_len, (size_t)cap * sizeof(*len_grown));
        if (len_grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->attr_len = len_grown;
        s->attr_cap = cap;
    }
    s->attr_data[at] = data;
    s->attr_len[at] = len;
    return 0;
}

/* Every length-delimited field ``number`` of a message, as a list of bytes: what otlp.py's
 * helpers take as a repeated ``bytes`` field.  Appends to ``into``.  0, or -1 with an exception. */
static int append_bytes_fields(PyObject *into, const uint8_t *data, Py_ssize_t len, uint32_t number) {
    reader r = {data, data + len};
    field f;
    while (next_field(&r, &f, 0) > 0) {
        if (f.number == number && f.wire == WIRE_LEN) {
            PyObject *raw = PyBytes_FromStringAndSize((const char *)f.data, f.len);
            if (raw == NULL || PyList_Append(into, raw) < 0) {
                Py_XDECREF(raw);
                return -1;
            }
            Py_DECREF(raw);
        }
    }
    return 0;
}

static int read_span_fields(request_state *s, const uint8_t *data, Py_ssize_t len, span_fields *sf) {
    memset(sf, 0, sizeof(*sf));
    reader r = {data, data + len};
    field f;
    while (next_field(&r, &f, 0) > 0) {
        switch (f.wire << 8 | (f.number < 256 ? (int)f.number : 0)) {
        case WIRE_LEN << 8 | 1:
            sf->trace = f.data, sf->trace_len = f.len;
            break;
        case WIRE_LEN << 8 | 2:
            sf->span = f.data, sf->span_len = f.len;
            break;
        case WIRE_LEN << 8 | 4:
            sf->parent = f.data, sf->parent_len = f.len;
            break;
        case WIRE_LEN << 8 | 5:
            sf->name = f.data, sf->name_len = f.len;
            break;
        case WIRE_VARINT << 8 | 6:
            sf->kind = (int32_t)(uint32_t)f.varint; /* an int32 keeps the low 32 bits */
            break;
        case WIRE_FIXED64 << 8 | 7:
            sf->start = fixed64_of(f.data);
            break;
        case WIRE_FIXED64 << 8 | 8:
            sf->end = fixed64_of(f.data);
            break;
        case WIRE_LEN << 8 | 9:
            if (add_attr(s, sf->attrs++, f.data, f.len) < 0) {
                return -1;
            }
            break;
        case WIRE_LEN << 8 | 11:
            sf->has_events = 1;
            break;
        case WIRE_LEN << 8 | 15: { /* Status: its code, the last one of every Status merged */
            reader status = {f.data, f.data + f.len};
            field code;
            while (next_field(&status, &code, 0) > 0) {
                if (code.number == 3 && code.wire == WIRE_VARINT) {
                    sf->status = (int32_t)(uint32_t)code.varint;
                }
            }
            break;
        }
        default:
            break;
        }
    }
    return 0;
}

/* Each slot's name as the fills carry it (SpanView.__slots__'s own strings, strong references):
 * found by identity, which is cheaper than apm_view_slot_of's dict lookup for every pair. */
static PyObject *slot_names[APM_VIEW_SLOT_COUNT];

static int slot_index(PyObject *name) {
    for (int slot = 0; slot < APM_VIEW_SLOT_COUNT; slot++) {
        if (slot_names[slot] == name) {
            return slot;
        }
    }
    int slot = apm_view_slot_of(name);
    if (slot >= 0 && slot_names[slot] == NULL) {
        Py_INCREF(name);
        slot_names[slot] = name;
    }
    return slot;
}

/* Set the slots of a fill from _FILLS ((slot name, value) pairs) on the view.  0, or -1 with an
 * exception (a fill that is not such pairs: the span is then skipped, as Python's loop would). */
static int apply_fill(PyObject *view, PyObject *fill) {
    if (!PyTuple_Check(fill)) {
        PyErr_SetString(PyExc_TypeError, "a fill must be a tuple of (slot, value) pairs");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fill); i++) {
        PyObject *pair = PyTuple_GET_ITEM(fill, i);
        int slot = PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2
                       ? slot_index(PyTuple_GET_ITEM(pair, 0))
                       : -1;
        if (slot < 0) {
            PyErr_SetString(PyExc_TypeError, "a fill must be a tuple of (slot, value) pairs");
            return -1;
        }
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        Py_INCREF(value);
        apm_view_set(view, (enum apm_view_slot)slot, value);
    }
    return 0;
}

/* The shape tuple of otlp.py: (kind, error, name, *serialized attributes). */
static PyObject *make_shape(request_state *s, PyObject *kind, PyObject *error, PyObject *name,
                            Py_ssize_t attrs) {
    PyObject *shape = PyTuple_New(3 + attrs);
    if (shape == NULL) {
        return NULL;
    }
    Py_INCREF(kind);
    PyTuple_SET_ITEM(shape, 0, kind);
    Py_INCREF(error);
    PyTuple_SET_ITEM(shape, 1, error);
    Py_INCREF(name);
    PyTuple_SET_ITEM(shape, 2, name);
    for (Py_ssize_t i = 0; i < attrs; i++) {
        PyObject *raw = PyBytes_FromStringAndSize((const char *)s->attr_data[i], s->attr_len[i]);
        if (raw == NULL) {
            Py_DECREF(shape);
            return NULL;
        }
        PyTuple_SET_ITEM(shape, 3 + i, raw);
    }
    return shape;
}

/* Shape memo: the shape tuples of recent spans, found again by a fast hash of the span's raw
 * kind, status, name and attribute bytes.  Most spans repeat a shape seen before; reusing its
 * tuple saves making a bytes object per attribute and hashing them all with SipHash for the
 * _FILLS lookup, which then hits on the key's identity.  _FILLS stays the cache: every span is
 * still looked up there with an equal tuple, and a miss still goes to _fill.  Direct-mapped and
 * checked byte for byte, so a collision (chosen or not) costs only the slow path. */
#define MEMO_SIZE 2048
typedef struct {
    uint64_t hash;
    PyObject *shape; /* strong, or NULL */
} memo_entry;
static memo_entry memo[MEMO_SIZE];
static uint64_t memo_seed; /* from Python's keyed hash: the process's random key */

static inline uint64_t mix(uint64_t h, uint64_t word) {
    h = (h ^ word) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 29);
}

static uint64_t mix_bytes(uint64_t h, const uint8_t *data, Py_ssize_t len) {
    h = mix(h, (uint64_t)len);
    for (; len >= 8; data += 8, len -= 8) {
        uint64_t word;
        memcpy(&word, data, 8);
        h = mix(h, word);
    }
    uint64_t tail = 0;
    memcpy(&tail, data, (size_t)len);
    return mix(h, tail);
}

static uint64_t shape_hash(const request_state *s, const span_fields *sf, long kind, int error) {
    uint64_t h = mix(memo_seed, (uint64_t)(kind << 1 | error));
    h = mix_bytes(h, sf->name, sf->name_len);
    for (Py_ssize_t i = 0; i < sf->attrs; i++) {
        h = mix_bytes(h, s->attr_data[i], s->attr_len[i]);
    }
    return h;
}

/* Whether a memoized shape is this span's: same kind, status, name and attribute bytes. */
static int shape_matches(PyObject *shape, const request_state *s, const span_fields *sf, PyObject *kind,
                         PyObject *error) {
    if (PyTuple_GET_SIZE(shape) != 3 + sf->attrs || PyTuple_GET_ITEM(shape, 0) != kind ||
        PyTuple_GET_ITEM(shape, 1) != error) { /* small ints and bools: one object each */
        return 0;
    }
    Py_ssize_t name_len;
    const char *name = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(shape, 2), &name_len);
    if (name == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (name_len != sf->name_len || memcmp(name, sf->name, (size_t)name_len) != 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < sf->attrs; i++) {
        PyObject *raw = PyTuple_GET_ITEM(shape, 3 + i);
        if (PyBytes_GET_SIZE(raw) != s->attr_len[i] ||
            memcmp(PyBytes_AS_STRING(raw), s->attr_data[i], (size_t)s->attr_len[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

/* The span's shape tuple, from the memo or made (and memoized).  New reference, or NULL. */
static PyObject *shape_of(request_state *s, const span_fields *sf, PyObject *kind, PyObject *error,
                          PyObject *name) {
    uint64_t hash = shape_hash(s, sf, PyLong_AsLong(kind), error == Py_True);
    memo_entry *e = &memo[hash & (MEMO_SIZE - 1)];
    if (e->shape != NULL && e->hash == hash && shape_matches(e->shape, s, sf, kind, error)) {
        Py_INCREF(e->shape);
        return e->shape;
    }
    PyObject *shape = make_shape(s, kind, error, name, sf->attrs);
    if (shape != NULL) {
        Py_INCREF(shape);
        PyObject *old = e->shape;
        *e = (memo_entry){hash, shape};
        Py_XDECREF(old);
    }
    return shape;
}

/* Each exception event's attributes through otlp.py's _exception_type, in order. */
static int read_exceptions(request_state *s, PyObject *view, const uint8_t *data, Py_ssize_t len) {
    reader r = {data, data + len};
    field f;
    while (next_field(&r, &f, 0) > 0) {
        if (f.number != 11 || f.wire != WIRE_LEN) {
            continue;
        }
        const uint8_t *name = NULL;
        Py_ssize_t name_len = 0;
        reader event = {f.data, f.data + f.len};
        field e;
        while (next_field(&event, &e, 0) > 0) {
            if (e.number == 2 && e.wire == WIRE_LEN) {
                name = e.data, name_len = e.len;
            }
        }
        if (name_len != 9 || memcmp(name, "exception", 9) != 0) {
            continue;
        }
        PyObject *attributes = PyList_New(0);
        if (attributes == NULL || append_bytes_fields(attributes, f.data, f.len, 3) < 0) {
            Py_XDECREF(attributes);
            return -1;
        }
        PyObject *done = PyObject_CallFunctionObjArgs(s->exception_type, view, attributes, NULL);
        Py_DECREF(attributes);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    return 0;
}

/* The view of one span from its ids and fields on (the ids are checked).  New reference, or NULL
 * with an exception: the span is then skipped and counted, as Python's ``except Exception``. */
static PyObject *span_view(request_state *s, const span_fields *sf, PyObject *service, PyObject *scope,
                           const uint8_t *data, Py_ssize_t len) {
    PyObject *view = apm_view_new();
    if (view == NULL) {
        return NULL;
    }
    Py_INCREF(s->trace_id);
    apm_view_set(view, APM_VIEW_TRACE_ID, s->trace_id);
    PyObject *span_id = table_share(&s->ids, sf->span, 8, make_id);
    PyObject *parent_id = sf->parent_len ? table_share(&s->ids, sf->parent, 8, make_id) : PyLong_FromLong(0);
    PyObject *name = table_share(&s->strings, sf->name, sf->name_len, make_str);
    PyObject *start = PyLong_FromUnsignedLongLong(sf->start);
    PyObject *end = PyLong_FromUnsignedLongLong(sf->end >= sf->start ? sf->end : sf->start);
    PyObject *kind = PyLong_FromLong(api_kind(sf->kind));
    PyObject *error = PyBool_FromLong(sf->status == STATUS_ERROR);
    if (span_id == NULL || parent_id == NULL || name == NULL || start == NULL || end == NULL || kind == NULL) {
        Py_XDECREF(span_id), Py_XDECREF(parent_id), Py_XDECREF(name), Py_XDECREF(start);
        Py_XDECREF(end), Py_XDECREF(kind), Py_DECREF(error), Py_DECREF(view);
        return NULL;
    }
    /* the view steals one reference of each; kind, error and name stay ours for the shape */
    apm_view_set(view, APM_VIEW_SPAN_ID, span_id);
    apm_view_set(view, APM_VIEW_PARENT_ID, parent_id);
    apm_view_set(view, APM_VIEW_START_NS, start);
    apm_view_set(view, APM_VIEW_END_NS, end);
    Py_INCREF(service);
    apm_view_set(view, APM_VIEW_SERVICE, service);
    Py_INCREF(name);
    apm_view_set(view, APM_VIEW_NAME, name);
    Py_INCREF(kind);
    apm_view_set(view, APM_VIEW_KIND, kind);
    Py_INCREF(error);
    apm_view_set(view, APM_VIEW_ERROR, error);

    PyObject *shape = shape_of(s, sf, kind, error, name);
    Py_DECREF(kind), Py_DECREF(error), Py_DECREF(name);
    if (shape == NULL) {
        Py_DECREF(view);
        return NULL;
    }
    PyObject *fill = PyDict_GetItemWithError(s->fills, shape); /* borrowed */
    int failed;
    if (fill != NULL) {
        Py_INCREF(fill); /* a slot's old value freed by apm_view_set could run code that clears _FILLS */
        failed = apply_fill(view, fill);
        Py_DECREF(fill);
    } else if (PyErr_Occurred()) {
        failed = -1;
    } else { /* a new shape: _fill reads the attributes, fills the view and remembers the fill */
        PyObject *made = PyObject_CallFunctionObjArgs(s->fill, view, shape, NULL);
        failed = made == NULL ? -1 : 0;
        Py_XDECREF(made);
    }
    Py_DECREF(shape);
    if (failed < 0) {
        Py_DECREF(view);
        return NULL;
    }
    Py_INCREF(scope);
    apm_view_set(view, APM_VIEW_SCOPE, scope);
    if (sf->has_events && read_exceptions(s, view, data, len) < 0) {
        Py_DECREF(view);
        return NULL;
    }
    apm_view_untrack_if_atomic(view);
    return view;
}

static const uint8_t ZEROS[16];

/* One span: checked as otlp.py checks it, then read into a view appended to the list, or counted
 * as malformed.  0, or -1 when the call must fail (only an error appending to the list). */
static int read_span(request_state *s, const uint8_t *data, Py_ssize_t len, PyObject *service, PyObject *scope) {
    span_fields sf;
    if (read_span_fields(s, data, len, &sf) < 0) {
        return -1;
    }
    if (s->trace_id == NULL || sf.trace_len != 16 || memcmp(sf.trace, s->trace_bytes, 16) != 0) {
        if (sf.trace_len != 16 || memcmp(sf.trace, ZEROS, 16) == 0) {
            s->malformed++;
            return 0;
        }
        PyObject *trace_id = make_trace_id(sf.trace);
        if (trace_id == NULL) {
            PyErr_Clear();
            s->malformed++;
            return 0;
        }
        Py_XSETREF(s->trace_id, trace_id);
        s->trace_bytes = sf.trace;
    }
    if (sf.span_len != 8 || memcmp(sf.span, ZEROS, 8) == 0 || (sf.parent_len != 0 && sf.parent_len != 8)) {
        s->malformed++;
        return 0;
    }
    PyObject *view = span_view(s, &sf, service, scope, data, len);
    if (view == NULL) {
        PyErr_Clear(); /* odd input never fails the request: the span is skipped and counted */
        s->malformed++;
        return 0;
    }
    int appended = PyList_Append(s->views, view);
    Py_DECREF(view);
    return appended;
}

static int read_scope_spans(request_state *s, const uint8_t *data, Py_ssize_t len, PyObject *service) {
    /* the scope first, wherever it is in the message: every span of it carries its name */
    const uint8_t *name = (const uint8_t *)"";
    Py_ssize_t name_len = 0;
    reader r = {data, data + len};
    field f;
    while (next_field(&r, &f, 0) > 0) {
        if (f.number == 1 && f.wire == WIRE_LEN) {
            reader scope = {f.data, f.data + f.len};
            field g;
            while (next_field(&scope, &g, 0) > 0) {
                if (g.number == 1 && g.wire == WIRE_LEN) {
                    name = g.data, name_len = g.len;
                }
            }
        }
    }
    PyObject *scope = table_share(&s->strings, name, name_len, make_str);
    if (scope == NULL) {
        return -1;
    }
    r = (reader){data, data + len};
    int status = 0;
    while (status == 0 && next_field(&r, &f, 0) > 0) {
        if (f.number == 2 && f.wire == WIRE_LEN) {
            status = read_span(s, f.data, f.len, service, scope);
        }
    }
    Py_DECREF(scope);
    return status;
}

static int read_resource_spans(request_state *s, const uint8_t *data, Py_ssize_t len) {
    /* the resource first: its service.name, through otlp.py's _service_name */
    PyObject *attributes = PyList_New(0);
    if (attributes == NULL) {
        return -1;
    }
    reader r = {data, data + len};
    field f;
    while (next_field(&r, &f, 0) > 0) {
        if (f.number == 1 && f.wire == WIRE_LEN && append_bytes_fields(attributes, f.data, f.len, 1) < 0) {
            Py_DECREF(attributes);
            return -1;
        }
    }
    PyObject *service = PyObject_CallOneArg(s->service_name, attributes);
    Py_DECREF(attributes);
    if (service == NULL) {
        return -1; /* as in Python, where the resource is read outside the per-span guard */
    }
    r = (reader){data, data + len};
    int status = 0;
    while (status == 0 && next_field(&r, &f, 0) > 0) {
        if (f.number == 2 && f.wire == WIRE_LEN) {
            status = read_scope_spans(s, f.data, f.len, service);
        }
    }
    Py_DECREF(service);
    return status;
}

PyDoc_STRVAR(otlp_views_doc,
             "otlp_views(payload, fills, fill, service_name, exception_type, decode_error, checked=False)\n"
             "--\n\n"
             "The SpanViews of a serialized ExportTraceServiceRequest and the number of spans\n"
             "skipped as malformed: otel_apm/ingest/otlp.py views_from_payload, which passes its\n"
             "_FILLS, _fill, _service_name, _exception_type and DecodeError (raised for a payload\n"
             "that is not a request); checked: otlp_check found it valid, so it is not checked again.");

static PyObject *otlp_views(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6 && nargs != 7) {
        PyErr_Format(PyExc_TypeError, "otlp_views takes 6 or 7 arguments, got %zd", nargs);
        return NULL;
    }
    if (!PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "otlp_views: fills must be a dict");
        return NULL;
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[0], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const uint8_t *data = payload.buf;
    PyObject *result = NULL;
    request_state s = {.fills = args[1], .fill = args[2], .service_name = args[3], .exception_type = args[4]};

    int checked = nargs == 7 ? PyObject_IsTrue(args[6]) : 0;
    if (checked < 0) {
        goto done;
    }
    /* otlp_check passed: protobuf parses the whole schema, so the reduced one too */
    int status = checked ? OK : check(data, payload.len, REQUEST, 0);
    if (status < 0) {
        PyErr_SetString(args[5], status == BAD_UTF8 ? "Error parsing message: string field had bad UTF-8"
                                                    : "Error parsing message: wire format was corrupt");
        goto done;
    }
    s.views = PyList_New(0);
    if (s.views == NULL) {
        goto done;
    }
    reader r = {data, data + payload.len};
    field f;
    status = 0;
    while (status == 0 && next_field(&r, &f, 0) > 0) {
        if (f.number == 1 && f.wire == WIRE_LEN) {
            status = read_resource_spans(&s, f.data, f.len);
        }
    }
    if (status == 0) {
        result = Py_BuildValue("(On)", s.views, s.malformed);
    }
done:
    Py_XDECREF(s.views);
    Py_XDECREF(s.trace_id);
    table_free(&s.ids);
    table_free(&s.strings);
    PyMem_Free(s.attr_data);
    PyMem_Free(s.attr_len);
    PyBuffer_Release(&payload);
    return result;
}

/* -- the receiver's check: is a payload a request protobuf would parse? ----------------------
 *
 * With analysis on, the collector reads every trace payload twice: the receiver's full parse
 * (protobuf's, checking the request as OTLP requires before it is forwarded) and otlp_views.
 * otlp_check tells, without making any object, that protobuf's parse of ExportTraceServiceRequest
 * would succeed, so the receiver can skip it: every field is one the installed schema declares
 * (otel_apm/ingest/otlp.py _check_schema, from the generated descriptors) with its declared
 * wire type, strings are UTF-8, sub-messages are checked alike, at most CHECK_DEPTH deep.  It
 * may only err on the safe side: anything else (an unknown field, a group, another wire type, a
 * deeper nesting), even what protobuf accepts, answers False, and the receiver parses the
 * payload as before.  tests/test_otlp_native.py holds it to protobuf on mutated payloads. */

#define CHECK_DEPTH 32   /* below upb's 100 */
#define CHECK_FIELDS 32  /* field numbers below this; the schema's go to 16 */
#define CHECK_MESSAGES 32
enum { KIND_UNKNOWN = -1, KIND_BYTES = 2, KIND_STRING = 3, KIND_MESSAGE = 16 }; /* 0, 1, 5: scalars */

typedef struct {
    int count;
    signed char kinds[CHECK_MESSAGES][CHECK_FIELDS];
} check_schema;

/* The schema from its Python form: per message, a tuple of kinds by field number.  0, or -1
 * (not raised) for a schema beyond these tables. */
static int load_schema(PyObject *messages, check_schema *schema) {
    if (!PyTuple_Check(messages) || PyTuple_GET_SIZE(messages) > CHECK_MESSAGES) {
        return -1;
    }
    schema->count = (int)PyTuple_GET_SIZE(messages);
    for (int m = 0; m < schema->count; m++) {
        PyObject *fields = PyTuple_GET_ITEM(messages, m);
        if (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) > CHECK_FIELDS) {
            return -1;
        }
        for (Py_ssize_t n = 0; n < CHECK_FIELDS; n++) {
            long kind = KIND_UNKNOWN;
            if (n < PyTuple_GET_SIZE(fields)) {
                kind = PyLong_AsLong(PyTuple_GET_ITEM(fields, n));
                if (kind == -1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    return -1;
                }
            }
            int scalar = kind == 0 || kind == 1 || kind == 5 || kind == KIND_BYTES || kind == KIND_STRING;
            if (!scalar && kind != KIND_UNKNOWN && !(kind >= KIND_MESSAGE && kind < KIND_MESSAGE + schema->count)) {
                return -1;
            }
            schema->kinds[m][n] = (signed char)kind;
        }
    }
    return schema->count > 0 ? 0 : -1;
}

/* 1 when protobuf would parse ``data`` as message ``message`` of the schema, 0 when not sure. */
static int full_check(const check_schema *schema, const uint8_t *data, Py_ssize_t len, int message, int depth) {
    reader r = {data, data + len};
    while (r.p < r.end) {
        field f;
        if (read_tag(&r, &f.number, &f.wire) < 0 || f.number == 0 || f.number >= CHECK_FIELDS) {
            return 0;
        }
        int kind = schema->kinds[message][f.number];
        int wire = kind == KIND_BYTES || kind == KIND_STRING || kind >= KIND_MESSAGE ? WIRE_LEN : kind;
        if (kind == KIND_UNKNOWN || f.wire != wire || read_value(&r, &f, depth) < 0) {
            return 0;
        }
        if (kind == KIND_STRING) {
            if (!valid_utf8(f.data, f.len)) {
                return 0;
            }
        } else if (kind >= KIND_MESSAGE) {
            if (depth + 1 > CHECK_DEPTH || !full_check(schema, f.data, f.len, kind - KIND_MESSAGE, depth + 1)) {
                return 0;
            }
        }
    }
    return 1;
}

PyDoc_STRVAR(otlp_check_doc,
             "otlp_check(payload, schema)\n"
             "--\n\n"
             "True when protobuf would parse payload as the schema's first message, False when\n"
             "that is not sure: see otel_apm/ingest/otlp.py checked_request.");

static PyObject *otlp_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "otlp_check takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    static PyObject *loaded; /* the schema object the table was loaded from (strong) */
    static check_schema schema;
    if (args[1] != loaded) {
        Py_CLEAR(loaded);
        if (load_schema(args[1], &schema) < 0) {
            Py_RETURN_FALSE;
        }
        loaded = Py_NewRef(args[1]);
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[0], &payload, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int valid = full_check(&schema, payload.buf, payload.len, 0, 0);
    PyBuffer_Release(&payload);
    return PyBool_FromLong(valid);
}

/* -- writing: the collector's finding events as OTLP log records ------------------------------
 *
 * The C twin of otel_apm/collector/findings.py FindingEvents._record: one LogRecord, written in
 * the wire format as protobuf writes it (the same field order, minimal varints), as its
 * log_records field of a ScopeLogs.  Values are encoded as findings.py any_value encodes them;
 * only the exact built-in types are taken (str, bool, int in int64, float, bytes, None, and
 * lists, tuples and dicts of them, nested at most WRITE_DEPTH deep): for anything else, such as
 * a subclass whose methods could differ, or an int out of range, the call declines (returns
 * None) and the Python version encodes the record, raising what it raises.  Sizes are counted
 * first and the bytes written into one bytes object of that size: no intermediate objects. */

#define WRITE_DEPTH 32

/* AnyValue's fields: string_value 1, bool_value 2, int_value 3, double_value 4, array_value 5,
 * kvlist_value 6, bytes_value 7; ArrayValue / KeyValueList: values 1; KeyValue: key 1, value 2. */
enum { ANY_STRING = 0x0a, ANY_BOOL = 0x10, ANY_INT = 0x18, ANY_DOUBLE = 0x21, ANY_ARRAY = 0x2a,
       ANY_KVLIST = 0x32, ANY_BYTES = 0x3a, TAG_VALUES = 0x0a, TAG_KEY = 0x0a, TAG_VALUE = 0x12 };
/* LogRecord: body 5, attributes 6; ScopeLogs: log_records 2. */
enum { TAG_BODY = 0x2a, TAG_RECORD_ATTRIBUTE = 0x32, TAG_LOG_RECORDS = 0x12 };

static inline Py_ssize_t varint_size(uint64_t n) {
    Py_ssize_t size = 1;
    while (n > 127) {
        n >>= 7;
        size++;
    }
    return size;
}

/* A length-delimited field's size: its one-byte tag, the length's varint, the payload. */
static inline Py_ssize_t delimited_size(Py_ssize_t payload) {
    return 1 + varint_size((uint64_t)payload) + payload;
}

static inline uint8_t *put_varint(uint8_t *out, uint64_t n) {
    while (n > 127) {
        *out++ = (uint8_t)((n & 127) | 128);
        n >>= 7;
    }
    *out++ = (uint8_t)n;
    return out;
}

static inline uint8_t *put_head(uint8_t *out, uint8_t tag, Py_ssize_t payload) {
    *out++ = tag;
    return put_varint(out, (uint64_t)payload);
}

static inline uint8_t *put_bytes(uint8_t *out, const void *data, Py_ssize_t len) {
    memcpy(out, data, (size_t)len);
    return out + len;
}

/* The UTF-8 of an exact str, or NULL with no error set when it declines (a subclass, or a str
 * that cannot be encoded: Python's str.encode raises for it). */
static const char *utf8_of(PyObject *text, Py_ssize_t *len) {
    if (!PyUnicode_CheckExact(text)) {
        return NULL;
    }
    const char *data = PyUnicode_AsUTF8AndSize(text, len);
    if (data == NULL) {
        PyErr_Clear();
    }
    return data;
}

static Py_ssize_t key_value_size(PyObject *key, PyObject *value, int depth);

/* The size of ``value`` serialized as an AnyValue, or -1 to decline. */
static Py_ssize_t any_size(PyObject *value, int depth) {
    Py_ssize_t len;
    if (PyUnicode_CheckExact(value)) {
        return utf8_of(value, &len) == NULL ? -1 : delimited_size(len);
    }
    if (PyBool_Check(value)) {
        return 2;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (n == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1; /* Python raises ValueError: out of int64 */
        }
        return 1 + varint_size((uint64_t)n);
    }
    if (PyFloat_CheckExact(value)) {
        return 9;
    }
    if (PyBytes_CheckExact(value)) {
        return delimited_size(PyBytes_GET_SIZE(value));
    }
    if (value == Py_None) {
        return 0;
    }
    if (depth >= WRITE_DEPTH) {
        return -1;
    }
    Py_ssize_t inner = 0;
    if (PyDict_CheckExact(value)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(value, &pos, &k, &v)) {
            Py_ssize_t size = key_value_size(k, v, depth + 1);
            if (size < 0) {
                return -1;
            }
            inner += delimited_size(size);
        }
        return delimited_size(inner);
    }
    if (PyList_CheckExact(value) || PyTuple_CheckExact(value)) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(value);
        PyObject **items = PySequence_Fast_ITEMS(value);
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t size = any_size(items[i], depth + 1);
            if (size < 0) {
                return -1;
            }
            inner += delimited_size(size);
        }
        return delimited_size(inner);
    }
    return -1;
}

/* The size of a KeyValue, or -1 to decline (a key that is not an exact str). */
static Py_ssize_t key_value_size(PyObject *key, PyObject *value, int depth) {
    Py_ssize_t key_len;
    if (utf8_of(key, &key_len) == NULL) {
        return -1;
    }
    Py_ssize_t size = any_size(value, depth);
    if (size < 0) {
        return -1;
    }
    return (key_len ? delimited_size(key_len) : 0) + delimited_size(size); /* proto3: no empty key */
}

static uint8_t *write_key_value(uint8_t *out, PyObject *key, PyObject *value, int depth);

/* Write what any_size counted; only called after any_size accepted ``value``. */
static uint8_t *write_any(uint8_t *out, PyObject *value, int depth) {
    Py_ssize_t len;
    if (PyUnicode_CheckExact(value)) {
        const char *data = PyUnicode_AsUTF8AndSize(value, &len);
        out = put_head(out, ANY_STRING, len);
        return put_bytes(out, data, len);
    }
    if (PyBool_Check(value)) {
        *out++ = ANY_BOOL;
        *out++ = value == Py_True;
        return out;
    }
    if (PyLong_CheckExact(value)) {
        *out++ = ANY_INT;
        return put_varint(out, (uint64_t)PyLong_AsLongLong(value)); /* two's complement */
    }
    if (PyFloat_CheckExact(value)) {
        *out++ = ANY_DOUBLE;
        PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (char *)out, 1);
        return out + 8;
    }
    if (PyBytes_CheckExact(value)) {
        out = put_head(out, ANY_BYTES, PyBytes_GET_SIZE(value));
        return put_bytes(out, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    }
    if (value == Py_None) {
        return out;
    }
    if (PyDict_CheckExact(value)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        Py_ssize_t inner = 0;
        while (PyDict_Next(value, &pos, &k, &v)) {
            inner += delimited_size(key_value_size(k, v, depth + 1));
        }
        out = put_head(out, ANY_KVLIST, inner);
        pos = 0;
        while (PyDict_Next(value, &pos, &k, &v)) {
            out = put_head(out, TAG_VALUES, key_value_size(k, v, depth + 1));
            out = write_key_value(out, k, v, depth + 1);
        }
        return out;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(value);
    PyObject **items = PySequence_Fast_ITEMS(value);
    Py_ssize_t inner = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        inner += delimited_size(any_size(items[i], depth + 1));
    }
    out = put_head(out, ANY_ARRAY, inner);
    for (Py_ssize_t i = 0; i < n; i++) {
        out = put_head(out, TAG_VALUES, any_size(items[i], depth + 1));
        out = write_any(out, items[i], depth + 1);
    }
    return out;
}

static uint8_t *write_key_value(uint8_t *out, PyObject *key, PyObject *value, int depth) {
    Py_ssize_t key_len;
    const char *key_data = PyUnicode_AsUTF8AndSize(key, &key_len);
    if (key_len) {
        out = put_head(out, TAG_KEY, key_len);
        out = put_bytes(out, key_data, key_len);
    }
    out = put_head(out, TAG_VALUE, any_size(value, depth));
    return write_any(out, value, depth);
}

PyDoc_STRVAR(log_record_doc,
             "log_record(head, severity, body, attributes, link, tail)\n"
             "--\n\n"
             "One finding's LogRecord as the log_records field of a ScopeLogs: the bytes head\n"
             "and severity, body as an AnyValue, each item of the dict attributes as an\n"
             "attributes field, then the bytes link and tail.  None when a value is not one of\n"
             "the types written here: otel_apm/collector/findings.py FindingEvents._record, the\n"
             "Python version, writes that record.");

static PyObject *log_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "log_record takes 6 arguments, got %zd", nargs);
        return NULL;
    }
    PyObject *head = args[0], *severity = args[1], *body = args[2], *attributes = args[3];
    PyObject *link = args[4], *tail = args[5];
    if (!PyBytes_Check(head) || !PyBytes_Check(severity) || !PyBytes_Check(link) || !PyBytes_Check(tail) ||
        !PyDict_CheckExact(attributes)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t body_size = any_size(body, 0);
    if (body_size < 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(severity) + delimited_size(body_size) +
                      PyBytes_GET_SIZE(link) + PyBytes_GET_SIZE(tail);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        Py_ssize_t kv = key_value_size(key, value, 0);
        if (kv < 0) {
            Py_RETURN_NONE;
        }
        size += delimited_size(kv);
    }
    PyObject *record = PyBytes_FromStringAndSize(NULL, delimited_size(size));
    if (record == NULL) {
        return NULL;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(record);
    out = put_head(out, TAG_LOG_RECORDS, size);
    out = put_bytes(out, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head));
    out = put_bytes(out, PyBytes_AS_STRING(severity), PyBytes_GET_SIZE(severity));
    out = put_head(out, TAG_BODY, body_size);
    out = write_any(out, body, 0);
    pos = 0;
    while (PyDict_Next(attributes, &pos, &key, &value)) {
        out = put_head(out, TAG_RECORD_ATTRIBUTE, key_value_size(key, value, 0));
        out = write_key_value(out, key, value, 0);
    }
    out = put_bytes(out, PyBytes_AS_STRING(link), PyBytes_GET_SIZE(link));
    put_bytes(out, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail));
    return record;
}

static PyMethodDef otlpviews_methods[] = {
    {"otlp_views", (PyCFunction)(void (*)(void))otlp_views, METH_FASTCALL, otlp_views_doc},
    {"log_record", (PyCFunction)(void (*)(void))log_record, METH_FASTCALL, log_record_doc},
    {"otlp_check", (PyCFunction)(void (*)(void))otlp_check, METH_FASTCALL, otlp_check_doc},
    {NULL, NULL, 0, NULL},
};

int apm_otlpviews_init(PyObject *module) {
    static const char seed_text[] = "otel_apm shape memo";
    memo_seed = (uint64_t)_Py_HashBytes(seed_text, sizeof(seed_text) - 1);
    return PyModule_AddFunctions(module, otlpviews_methods);
}
