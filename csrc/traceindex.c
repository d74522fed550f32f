/* The per-trace index the analyzer starts from: the twins of index_trace in
 * otel_apm/detectors/summary.py and of by_fingerprint in otel_apm/detectors/dbshape.py, which
 * stay the reference and the fallback.
 *
 *   index_trace(trace) -> (by_category, texts, error, total_ns, longest_ns, has_cached) or None
 *
 * One pass over trace.spans files them by category; one over each category's spans sums their
 * durations (total, longest, and the breakdown's count and milliseconds without the root); one
 * over the DB spans groups them by (service, statement text).  It then sets what Python would
 * have cached on the way: trace._by_category, trace._breakdown and trace._derived["db_texts"].
 *
 * It returns None, having changed nothing, for a trace it does not handle exactly as Python
 * would, and the caller runs the Python version: something already filed (Python reuses it), a
 * span that is not a SpanView or lacks a slot, a category, service or statement that is not
 * exactly a str (or None, for a statement), an error or cached flag that is not a bool
 * (hashing, comparing or testing any other could run Python code), a time that is not an int,
 * a duration or sum past 64 bits (an OTLP time is unsigned 64-bit).  Every figure is then Python's own: the sums are integers, and
 * the breakdown's milliseconds are added in order in a double as CPython 3.10 and 3.11's sum()
 * adds floats.  3.12's sum() compensates its rounding; there the breakdown is left for
 * Trace.breakdown() to make.
 *
 *   by_fingerprint(by_text) -> {(service, fingerprint): (shape, spans)}
 *
 * by_text is a dict {(service, text): [span, ...]}, as index_trace and TraceSummary make it (a
 * TypeError otherwise).  A group's shape is parse_sql's, called through its lru_cache directly;
 * db_shape (Python) makes the shapes parse_sql alone does not give: no text, an over-long one,
 * a table to add to a shape without one.
 *
 *   fingerprint_counts(groups) -> {fingerprint: round trips}, or None
 *
 * The twin of count_by_fingerprint in otel_apm/detectors/summary.py: None for
 * anything but the {(service, fingerprint): (shape, [span, ...])} dict it makes.
 *
 *   repeats_knowable(statements, threshold) -> bool, or None
 *
 * The twin of RepeatedIdenticalQueryDetector.can_fire (otel_apm/detectors/repeated_query.py)
 * over the summary's statements ({(service, text): [span, ...]}): whether a text ran threshold
 * times or more, whatever the service, with a shape not truncated and either no placeholders or
 * a span with recorded parameters.  None for a text that is neither None nor a str, a span that
 * is not a SpanView, a grouping of another form.
 *
 *   by_parent(spans, category) -> {parent_id: [span, ...]}, or None
 *
 * The twin of the filing in Trace.siblings (otel_apm/model.py): the spans of the category by
 * parent span id, in arrival order.  None for a list that is not exactly a list of SpanViews.
 *
 *   db_sequence(siblings) -> (spans, shapes), or None
 *
 * The twin of _sequence in otel_apm/detectors/loops.py: one parent's DB spans sorted in place by
 * start (stably, as list.sort), then those not cached with their shapes (db_shapes': one per
 * distinct text, the first span's), less those whose shape is truncated.  None, having changed
 * nothing, for a span that is not a SpanView, a start that is not an int within 64 bits, a cached
 * flag that is not a bool, a statement that is neither None nor a str.
 *
 *   repetitions(fingerprints, threshold) -> [(start, period, repetitions), ...], or None
 *
 * The twin of repetitions in otel_apm/detectors/mn_plus_one.py, over a list of str fingerprints
 * (equal when Python's == says so: each is numbered by a dict first).  None for anything else,
 * or a threshold under 1.
 *
 *   finding_spans(trace_spans, spans) -> (entry, services, span_ids, longest_ns, code), or None
 *
 * The twin of finding_spans in otel_apm/detectors/base.py, what Detector.finding reads of the
 * spans: the entry (Trace.entry_of) of the first span, the trace's services (Trace.services, as
 * a tuple), the spans' ids, their longest duration, the first code location set.  The entry's
 * walk looks each parent up by a scan of the trace's spans, the last with the id (as the dict
 * of Trace._spans_by_id keeps it), rather than filing every span by id for a walk of a step or
 * two.  None for a walk of more than 32 steps (a deep chain or a parent cycle, which Python
 * walks through its dict) or one back to the first span's id, a first span not in the trace,
 * a list that is not exactly a list of SpanViews, a span id, parent id or time that is not an
 * int (or a time past 64 bits), a service that is not a str, a code location neither None nor
 * a str, no spans.
 *
 *   add_trips(by_key, groups, max_keys) -> True, or None
 *
 * The twin of QueryHistory.add_trips in otel_apm/detectors/history.py (which holds the history's
 * lock around it): each group's durations in milliseconds written to its _Samples ring (an
 * array('d'), appended to until full, then over the oldest) in by_key, the key moved last
 * (least recently updated first), the oldest key evicted for a new one past max_keys.  None,
 * having changed nothing, when a span is not a SpanView with int times, a duration is past 64
 * bits, or groups is not the {key: (shape, [span, ...])} dict that TraceSummary.round_trips
 * makes: the caller runs the Python version.  A millisecond is the duration converted to a
 * double and divided by 1e6, as Python's int / float does (the conversion rounds to nearest, as
 * PyLong_AsDouble does).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "native.h"
#include "view.h"

/* The Trace slots read and written, in the order of TRACE_SLOT_NAMES. */
enum trace_slot { TRACE_SPANS, TRACE_ROOT, TRACE_BY_CATEGORY, TRACE_BREAKDOWN, TRACE_DERIVED, TRACE_SLOTS };
static const char *const TRACE_SLOT_NAMES[TRACE_SLOTS] = {
    "spans", "root", "_by_category", "_breakdown", "_derived",
};

static PyTypeObject *trace_type = NULL; /* otel_apm.model.Trace */
static Py_ssize_t trace_offsets[TRACE_SLOTS];
static PyObject *db_category = NULL;     /* otel_apm.model.DB */
static PyObject *s_db_texts = NULL;      /* otel_apm.detectors.dbshape.DB_TEXTS */
static PyObject *parse_cached = NULL;    /* otel_apm.sql._parse_sql_cached, the lru_cache */
static Py_ssize_t max_statement_chars;   /* otel_apm.sql.MAX_STATEMENT_CHARS */
static PyObject *db_shape = NULL;        /* otel_apm.detectors.dbshape.db_shape */
static PyObject *s_fingerprint = NULL, *s_tables = NULL;
static PyObject *s_truncated = NULL, *s_placeholders = NULL;
static PyObject *parse_sql = NULL; /* otel_apm.sql.parse_sql, for texts over MAX_STATEMENT_CHARS */
static PyTypeObject *samples_type = NULL; /* otel_apm.detectors.history._Samples */
static Py_ssize_t samples_added_offset;   /* its slot ``added`` */
static Py_ssize_t samples_ring_offset;    /* its slot ``ring``, an array('d') */
static PyTypeObject *array_type = NULL;   /* array.array */
static Py_ssize_t samples_per_query;      /* otel_apm.detectors.history.SAMPLES_PER_QUERY */
static PyObject *s_append = NULL;

#define TRACE_SLOT(trace, slot) (*(PyObject **)((char *)(trace) + trace_offsets[slot]))

/* Why a pass stopped: an exception is set (FAILED), or the trace is left to Python (DECLINED). */
enum outcome { DONE = 0, FAILED = -1, DECLINED = -2 };

/* ``value`` of a bool slot: 0 or 1, or DECLINED for anything but True and False. */
static int flag(PyObject *value) {
    if (value == Py_True) {
        return 1;
    }
    return value == Py_False ? 0 : DECLINED;
}

/* The lists a grouping filed into, by the objects of their key (a category; a service and a
 * statement): a trace's spans share a few such objects, and finding one's list by pointer spares
 * making, hashing and comparing its key.  The dict stays the truth: a key made of other objects
 * (equal or not) goes through it, and is remembered while there is room.  The memo holds
 * references to its objects, so a pointer cannot come back as another object's. */
#define MEMO_SIZE 16
struct memo {
    int used;
    struct {
        PyObject *first, *second, *group; /* second is NULL for a one-part key; group borrowed */
    } entries[MEMO_SIZE];
};

static void memo_clear(struct memo *memo) {
    for (int i = 0; i < memo->used; i++) {
        Py_DECREF(memo->entries[i].first);
        Py_XDECREF(memo->entries[i].second);
    }
    memo->used = 0;
}

/* ``item`` (borrowed) appended to dict[key], or dict[key] = [item] made, where key is ``first``
 * or (first, second) when second is not NULL.  0, or -1 with an exception set. */
static int file_under(struct memo *memo, PyObject *dict, PyObject *first, PyObject *second, PyObject *item) {
    for (int i = 0; i < memo->used; i++) {
        if (memo->entries[i].first == first && memo->entries[i].second == second) {
            return PyList_Append(memo->entries[i].group, item);
        }
    }
    PyObject *key = second == NULL ? Py_NewRef(first) : PyTuple_Pack(2, first, second);
    if (key == NULL) {
        return -1;
    }
    Py_INCREF(item); /* held: an allocation may collect garbage, whose finalizers run Python */
    int rc = -1;
    PyObject *group = PyDict_GetItemWithError(dict, key); /* borrowed */
    if (group != NULL) {
        rc = PyList_Append(group, item);
    } else if (!PyErr_Occurred() && (group = PyList_New(1)) != NULL) {
        Py_INCREF(item);
        PyList_SET_ITEM(group, 0, item);
        rc = PyDict_SetItem(dict, key, group);
        Py_DECREF(group); /* the dict holds it */
    }
    Py_DECREF(key);
    Py_DECREF(item);
    if (rc == 0 && memo->used < MEMO_SIZE) {
        memo->entries[memo->used].first = Py_NewRef(first);
        memo->entries[memo->used].second = Py_XNewRef(second);
        memo->entries[memo->used].group = group;
        memo->used++;
    }
    return rc;
}

/* A span's end_ns - start_ns in *duration, or DECLINED (not ints, or past 64 bits). */
static int duration_of(PyObject *span, long long *duration) {
    PyObject *start = apm_view_get(span, APM_VIEW_START_NS), *end = apm_view_get(span, APM_VIEW_END_NS);
    if (start == NULL || end == NULL || !PyLong_Check(start) || !PyLong_Check(end)) {
        return DECLINED;
    }
    int overflow_start, overflow_end;
    long long s = PyLong_AsLongLongAndOverflow(start, &overflow_start);
    long long e = PyLong_AsLongLongAndOverflow(end, &overflow_end);
    if (overflow_start || overflow_end || __builtin_sub_overflow(e, s, duration)) {
        return DECLINED;
    }
    return DONE;
}

/* A PyLong of ``value`` stored under ``key``.  0, or -1 with an exception set. */
static int set_int(PyObject *dict, PyObject *key, long long value) {
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL) {
        return -1;
    }
    int rc = PyDict_SetItem(dict, key, number);
    Py_DECREF(number);
    return rc;
}

/* Sum each category's durations into total_ns, longest_ns and breakdown (count and summed
 * milliseconds of the spans other than ``root``, for categories that have such spans). */
static int sum_durations(PyObject *by_category, PyObject *root, PyObject *total_ns, PyObject *longest_ns,
                         PyObject *breakdown) {
    Py_ssize_t pos = 0;
    PyObject *category, *group; /* borrowed */
    while (PyDict_Next(by_category, &pos, &category, &group)) {
        long long total = 0, longest = 0;
        Py_ssize_t count = 0;
        double ms = 0.0;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(group); i++) {
            PyObject *span = PyList_GET_ITEM(group, i);
            long long duration;
            if (duration_of(span, &duration) != DONE || __builtin_add_overflow(total, duration, &total)) {
                return DECLINED;
            }
            if (i == 0 || duration > longest) {
                longest = duration;
            }
            if (span != root) {
                count++;
                ms += (double)duration / 1e6;
            }
        }
        if (set_int(total_ns, category, total) < 0 || set_int(longest_ns, category, longest) < 0) {
            return FAILED;
        }
        if (count > 0) {
            PyObject *entry = Py_BuildValue("(nd)", count, ms);
            if (entry == NULL) {
                return FAILED;
            }
            int rc = PyDict_SetItem(breakdown, category, entry);
            Py_DECREF(entry);
            if (rc < 0) {
                return FAILED;
            }
        }
    }
    return DONE;
}

/* File the spans by category into by_category, and set *error when one failed. */
static int file_spans(PyObject *spans, PyObject *by_category, int *error) {
    PyTypeObject *view_type = apm_view_type();
    struct memo memo = {0};
    int outcome = DONE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (!PyObject_TypeCheck(span, view_type)) {
            return DECLINED;
        }
        PyObject *category = apm_view_get(span, APM_VIEW_CATEGORY);
        PyObject *failed = apm_view_get(span, APM_VIEW_ERROR);
        PyObject *exception_type = apm_view_get(span, APM_VIEW_EXCEPTION_TYPE);
        int failed_flag = failed == NULL ? DECLINED : flag(failed);
        if (category == NULL || exception_type == NULL || !PyUnicode_CheckExact(category) ||
            failed_flag == DECLINED) {
            outcome = DECLINED;
            break;
        }
        *error |= failed_flag || exception_type != Py_None;
        if (file_under(&memo, by_category, category, NULL, span) < 0) {
            outcome = FAILED;
            break;
        }
    }
    memo_clear(&memo);
    return outcome;
}

/* File the DB spans by (service, statement text) into texts, and set *has_cached when one was a
 * cache hit. */
static int file_texts(PyObject *db_spans, PyObject *texts, int *has_cached) {
    struct memo memo = {0};
    int outcome = DONE;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(db_spans); i++) {
        PyObject *span = PyList_GET_ITEM(db_spans, i);
        PyObject *service = apm_view_get(span, APM_VIEW_SERVICE);
        PyObject *statement = apm_view_get(span, APM_VIEW_STATEMENT);
        PyObject *cached = apm_view_get(span, APM_VIEW_CACHED);
        int cached_flag = cached == NULL ? DECLINED : flag(cached);
        if (service == NULL || statement == NULL || !PyUnicode_CheckExact(service) ||
            !(statement == Py_None || PyUnicode_CheckExact(statement)) || cached_flag == DECLINED) {
            outcome = DECLINED;
            break;
        }
        *has_cached |= cached_flag;
        if (file_under(&memo, texts, service, statement, span) < 0) {
            outcome = FAILED;
            break;
        }
    }
    memo_clear(&memo);
    return outcome;
}

/* Whether Python already filed part of the trace (it would reuse that), or the slots are not
 * what Trace.__init__ sets.  1, 0, or -1 with an exception set. */
static int already_filed(PyObject *trace) {
    PyObject *spans = TRACE_SLOT(trace, TRACE_SPANS), *root = TRACE_SLOT(trace, TRACE_ROOT);
    PyObject *derived = TRACE_SLOT(trace, TRACE_DERIVED);
    if (spans == NULL || root == NULL || derived == NULL || !PyList_CheckExact(spans) ||
        !PyDict_CheckExact(derived) || TRACE_SLOT(trace, TRACE_BY_CATEGORY) != Py_None ||
        TRACE_SLOT(trace, TRACE_BREAKDOWN) != Py_None) {
        return 1;
    }
    return PyDict_Contains(derived, s_db_texts);
}

/* Replace a slot of the trace, stealing ``value``. */
static void set_trace_slot(PyObject *trace, enum trace_slot slot, PyObject *value) {
    PyObject *old = TRACE_SLOT(trace, slot);
    TRACE_SLOT(trace, slot) = value;
    Py_XDECREF(old);
}

static PyObject *index_trace(PyObject *module, PyObject *trace) {
    (void)module;
    if (!PyObject_TypeCheck(trace, trace_type)) {
        PyErr_Format(PyExc_TypeError, "index_trace() takes a Trace, not %.200s", Py_TYPE(trace)->tp_name);
        return NULL;
    }
    int filed = already_filed(trace);
    if (filed != 0) {
        if (filed < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *spans = TRACE_SLOT(trace, TRACE_SPANS);
    Py_INCREF(spans);
    PyObject *result = NULL;
    PyObject *by_category = PyDict_New(), *texts = PyDict_New(), *total_ns = PyDict_New();
    PyObject *longest_ns = PyDict_New(), *breakdown = PyDict_New();
    int error = 0, has_cached = 0;
    int outcome = FAILED;
    if (by_category == NULL || texts == NULL || total_ns == NULL || longest_ns == NULL || breakdown == NULL) {
        goto done;
    }
    outcome = file_spans(spans, by_category, &error);
    if (outcome == DONE) {
        outcome = sum_durations(by_category, TRACE_SLOT(trace, TRACE_ROOT), total_ns, longest_ns, breakdown);
    }
    if (outcome == DONE) {
        PyObject *db_spans = PyDict_GetItemWithError(by_category, db_category); /* borrowed */
        if (db_spans != NULL) {
            outcome = file_texts(db_spans, texts, &has_cached);
        } else if (PyErr_Occurred()) {
            outcome = FAILED;
        }
    }
    if (outcome == DONE) {
        result = Py_BuildValue("(OOOOOO)", by_category, texts, error ? Py_True : Py_False, total_ns,
                               longest_ns, has_cached ? Py_True : Py_False);
        /* The trace is changed last, and only when nothing can fail after. */
        if (result == NULL || PyDict_SetItem(TRACE_SLOT(trace, TRACE_DERIVED), s_db_texts, texts) < 0) {
            Py_CLEAR(result);
            outcome = FAILED;
        }
    }
    if (outcome == DONE) {
        Py_INCREF(by_category);
        set_trace_slot(trace, TRACE_BY_CATEGORY, by_category);
#if PY_VERSION_HEX < 0x030C0000
        Py_INCREF(breakdown);
        set_trace_slot(trace, TRACE_BREAKDOWN, breakdown);
#endif
    }
done:
    Py_DECREF(spans);
    Py_XDECREF(by_category);
    Py_XDECREF(texts);
    Py_XDECREF(total_ns);
    Py_XDECREF(longest_ns);
    Py_XDECREF(breakdown);
    if (outcome == DECLINED) {
        Py_RETURN_NONE;
    }
    return result;
}

/* db_shape(span) (a new reference), straight from parse_sql's cache when that is all it does. */
static PyObject *shape_of(PyObject *span) {
    if (!PyObject_TypeCheck(span, apm_view_type())) {
        return PyObject_CallOneArg(db_shape, span);
    }
    PyObject *statement = apm_view_get(span, APM_VIEW_STATEMENT);
    PyObject *table = apm_view_get(span, APM_VIEW_DB_TABLE);
    if (statement == NULL || table == NULL || !PyUnicode_CheckExact(statement) ||
        PyUnicode_GET_LENGTH(statement) == 0 || PyUnicode_GET_LENGTH(statement) > max_statement_chars) {
        return PyObject_CallOneArg(db_shape, span);
    }
    PyObject *shape = PyObject_CallOneArg(parse_cached, statement);
    if (shape == NULL || table == Py_None) {
        return shape;
    }
    int wants_table = PyObject_IsTrue(table);
    if (wants_table > 0) {
        PyObject *tables = PyObject_GetAttr(shape, s_tables);
        int has_tables = tables == NULL ? -1 : PyObject_IsTrue(tables);
        Py_XDECREF(tables);
        wants_table = has_tables < 0 ? -1 : !has_tables;
    }
    if (wants_table == 0) {
        return shape;
    }
    Py_DECREF(shape);
    return wants_table < 0 ? NULL : PyObject_CallOneArg(db_shape, span);
}

/* The spans group[start:stop] filed in out under (service, their shape's fingerprint): with
 * the shape of group[start] when the key is new, else appended to the spans filed there. */
static int file_shape(PyObject *out, PyObject *service, PyObject *group, Py_ssize_t start, Py_ssize_t stop) {
    PyObject *shape = shape_of(PyList_GET_ITEM(group, start));
    if (shape == NULL) {
        return -1;
    }
    PyObject *fingerprint = PyObject_GetAttr(shape, s_fingerprint);
    PyObject *key = fingerprint == NULL ? NULL : PyTuple_Pack(2, service, fingerprint);
    Py_XDECREF(fingerprint);
    PyObject *spans = key == NULL ? NULL : PyList_GetSlice(group, start, stop);
    int rc = -1;
    if (spans != NULL) {
        PyObject *filed = PyDict_GetItemWithError(out, key); /* borrowed */
        if (filed != NULL) {
            PyObject *list = PyTuple_GET_ITEM(filed, 1);
            rc = PyList_SetSlice(list, PyList_GET_SIZE(list), PyList_GET_SIZE(list), spans);
        } else if (!PyErr_Occurred()) {
            PyObject *entry = PyTuple_Pack(2, shape, spans);
            rc = entry == NULL ? -1 : PyDict_SetItem(out, key, entry);
            Py_XDECREF(entry);
        }
    }
    Py_XDECREF(spans);
    Py_XDECREF(key);
    Py_DECREF(shape);
    return rc;
}

static PyObject *by_fingerprint(PyObject *module, PyObject *by_text) {
    (void)module;
    if (!PyDict_CheckExact(by_text)) {
        PyErr_SetString(PyExc_TypeError, "by_fingerprint() takes a dict");
        return NULL;
    }
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *group; /* borrowed */
    while (PyDict_Next(by_text, &pos, &key, &group)) {
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 || !PyList_CheckExact(group) ||
            PyList_GET_SIZE(group) == 0) {
            PyErr_SetString(PyExc_TypeError, "by_fingerprint() takes {(service, text): [span, ...]}");
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(key); /* held: db_shape runs Python code */
        Py_INCREF(group);
        PyObject *service = PyTuple_GET_ITEM(key, 0);
        int has_text = PyObject_IsTrue(PyTuple_GET_ITEM(key, 1));
        int rc = -1;
        if (has_text > 0) {
            rc = file_shape(out, service, group, 0, PyList_GET_SIZE(group));
        } else if (has_text == 0) {
            /* Without a text each span's shape comes from its own operation and table. */
            rc = 0;
            for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(group); i++) {
                rc = file_shape(out, service, group, i, i + 1);
            }
        }
        Py_DECREF(key);
        Py_DECREF(group);
        if (rc < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* counts[key] += n, counts[key] = n when new; the counts are ints this file stored.  0, or -1
 * with an exception set. */
static int count_under(PyObject *counts, PyObject *key, Py_ssize_t n) {
    PyObject *count = PyDict_GetItemWithError(counts, key); /* borrowed */
    if (count == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *value = PyLong_FromSsize_t(n + (count == NULL ? 0 : PyLong_AsSsize_t(count)));
    int rc = value == NULL ? -1 : PyDict_SetItem(counts, key, value);
    Py_XDECREF(value);
    return rc;
}

static PyObject *fingerprint_counts(PyObject *module, PyObject *groups) {
    (void)module;
    if (!PyDict_CheckExact(groups)) {
        Py_RETURN_NONE;
    }
    PyObject *counts = PyDict_New();
    if (counts == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *entry; /* borrowed */
    while (PyDict_Next(groups, &pos, &key, &entry)) {
        if (!PyTuple_CheckExact(key) || PyTuple_GET_SIZE(key) != 2 || !PyTuple_CheckExact(entry) ||
            PyTuple_GET_SIZE(entry) != 2 || !PyList_CheckExact(PyTuple_GET_ITEM(entry, 1))) {
            Py_DECREF(counts);
            Py_RETURN_NONE;
        }
        if (count_under(counts, PyTuple_GET_ITEM(key, 1), PyList_GET_SIZE(PyTuple_GET_ITEM(entry, 1))) < 0) {
            Py_DECREF(counts);
            return NULL;
        }
    }
    return counts;
}

/* shape.<name> tested for truth: 1, 0, or -1 with an exception set. */
static int shape_flag(PyObject *shape, PyObject *name) {
    PyObject *value = PyObject_GetAttr(shape, name);
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    Py_XDECREF(value);
    return truth;
}

/* Whether a text's runs can be known alike (repeated_query.can_fire's test of one text that ran
 * often enough): 1 when its shape has no placeholders, 0 when it is truncated, else 2 (only
 * recorded parameters tell); -1 with an exception set. */
static int text_verdict(PyObject *text) {
    PyObject *parse = PyUnicode_GET_LENGTH(text) > max_statement_chars ? parse_sql : parse_cached;
    PyObject *shape = PyObject_CallOneArg(parse, text);
    if (shape == NULL) {
        return -1;
    }
    int truncated = shape_flag(shape, s_truncated);
    int placeholders = truncated != 0 ? 0 : shape_flag(shape, s_placeholders);
    Py_DECREF(shape);
    if (truncated != 0) {
        return truncated < 0 ? -1 : 0;
    }
    return placeholders < 0 ? -1 : (placeholders ? 2 : 1);
}

static PyObject *repeats_knowable(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    PyObject *statements = args[0];
    int overflow;
    long long threshold = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    if (overflow) {
        Py_RETURN_NONE;
    }
    PyTypeObject *view_type = apm_view_type();
    PyObject *counts = PyDict_New(); /* text -> its runs, over every service */
    if (counts == NULL) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *spans; /* borrowed */
    while (PyDict_Next(statements, &pos, &key, &spans)) {
        int pair = PyTuple_CheckExact(key) && PyTuple_GET_SIZE(key) == 2;
        PyObject *text = pair ? PyTuple_GET_ITEM(key, 1) : NULL;
        if (text == NULL || !PyList_CheckExact(spans) || !(text == Py_None || PyUnicode_CheckExact(text))) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
            PyObject *span = PyList_GET_ITEM(spans, i);
            if (!PyObject_TypeCheck(span, view_type) || apm_view_get(span, APM_VIEW_DB_PARAMS) == NULL) {
                result = Py_NewRef(Py_None);
                goto done;
            }
        }
        if (text == Py_None || PyUnicode_GET_LENGTH(text) == 0) {
            continue; /* texts() leaves out the spans without one */
        }
        if (count_under(counts, text, PyList_GET_SIZE(spans)) < 0) {
            goto done;
        }
    }
    /* Each text that ran often enough, judged once; its spans looked at in each service's list. */
    pos = 0;
    while (PyDict_Next(statements, &pos, &key, &spans)) {
        PyObject *text = PyTuple_GET_ITEM(key, 1);
        PyObject *count = text == Py_None ? NULL : PyDict_GetItemWithError(counts, text); /* borrowed */
        if (count == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            continue;
        }
        if (PyLong_AsSsize_t(count) < threshold) {
            continue;
        }
        int verdict = text_verdict(text);
        if (verdict < 0) {
            goto done;
        }
        if (verdict == 1) {
            result = Py_NewRef(Py_True);
            goto done;
        }
        for (Py_ssize_t i = 0; verdict == 2 && i < PyList_GET_SIZE(spans); i++) {
            if (apm_view_get(PyList_GET_ITEM(spans, i), APM_VIEW_DB_PARAMS) != Py_None) {
                result = Py_NewRef(Py_True);
                goto done;
            }
        }
    }
    result = Py_NewRef(Py_False);
done:
    Py_DECREF(counts);
    return result;
}

static PyObject *by_parent(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_CheckExact(args[0])) {
        Py_RETURN_NONE;
    }
    PyObject *spans = args[0], *category = args[1];
    PyTypeObject *view_type = apm_view_type();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (!PyObject_TypeCheck(span, view_type) || apm_view_get(span, APM_VIEW_CATEGORY) == NULL ||
            apm_view_get(span, APM_VIEW_PARENT_ID) == NULL) {
            Py_RETURN_NONE;
        }
    }
    PyObject *filed = PyDict_New();
    if (filed == NULL) {
        return NULL;
    }
    Py_INCREF(spans); /* held: comparing or hashing may run Python code */
    Py_INCREF(category);
    /* A parent's children mostly come one after another: a parent id equal to the last one's
     * (the same object, or an int of the same value, which is the same dict key) is filed with
     * it without a lookup.  Both are held, as is the last object found equal to the category. */
    PyObject *last_parent = NULL, *last_group = NULL, *matching = Py_NewRef(category);
    int rc = 0;
    for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        PyObject *of = apm_view_get(span, APM_VIEW_CATEGORY);
        int same = of == matching ? 1 : PyObject_RichCompareBool(of, category, Py_EQ);
        if (same <= 0) {
            rc = same;
            continue;
        }
        Py_SETREF(matching, Py_NewRef(of));
        PyObject *parent = apm_view_get(span, APM_VIEW_PARENT_ID);
        if (last_group != NULL &&
            (parent == last_parent || (PyLong_CheckExact(parent) && PyLong_CheckExact(last_parent) &&
                                       PyObject_RichCompareBool(parent, last_parent, Py_EQ) == 1))) {
            rc = PyList_Append(last_group, span);
            continue;
        }
        PyObject *group = PyDict_GetItemWithError(filed, parent); /* borrowed: filed is ours alone */
        if (group != NULL) {
            rc = PyList_Append(group, span);
        } else if (PyErr_Occurred() || (group = PyList_New(1)) == NULL) {
            rc = -1;
        } else {
            PyList_SET_ITEM(group, 0, Py_NewRef(span));
            rc = PyDict_SetItem(filed, parent, group);
            Py_DECREF(group); /* the dict holds it */
        }
        Py_XSETREF(last_parent, Py_NewRef(parent));
        last_group = group;
    }
    Py_XDECREF(last_parent);
    Py_DECREF(matching);
    Py_DECREF(spans);
    Py_DECREF(category);
    if (rc < 0) {
        Py_CLEAR(filed);
    }
    return filed;
}

/* A span of a parent's sequence: its start, its place in the list (sorting by both is stable). */
struct started {
    long long start;
    Py_ssize_t index;
    PyObject *span; /* borrowed from the list */
};

static int by_start_then_index(const void *a, const void *b) {
    const struct started *x = a, *y = b;
    if (x->start != y->start) {
        return x->start < y->start ? -1 : 1;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The siblings sorted in place by start, stably, or DECLINED (nothing changed) for what
 * db_sequence leaves to Python; FAILED with an exception set. */
static int sort_by_start(PyObject *siblings) {
    Py_ssize_t n = PyList_GET_SIZE(siblings);
    struct started *order = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof *order);
    if (order == NULL) {
        PyErr_NoMemory();
        return FAILED;
    }
    PyTypeObject *view_type = apm_view_type();
    int sorted = 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PyList_GET_ITEM(siblings, i);
        PyObject *start = PyObject_TypeCheck(span, view_type) ? apm_view_get(span, APM_VIEW_START_NS) : NULL;
        PyObject *statement = start == NULL ? NULL : apm_view_get(span, APM_VIEW_STATEMENT);
        PyObject *cached = start == NULL ? NULL : apm_view_get(span, APM_VIEW_CACHED);
        int overflow = 1;
        long long value = 0;
        if (start != NULL && PyLong_CheckExact(start)) {
            value = PyLong_AsLongLongAndOverflow(start, &overflow);
        }
        if (overflow || statement == NULL || cached == NULL || flag(cached) == DECLINED ||
            !(statement == Py_None || PyUnicode_CheckExact(statement))) {
            PyMem_Free(order);
            return DECLINED;
        }
        order[i] = (struct started){value, i, span};
        sorted &= i == 0 || order[i - 1].start <= value;
    }
    if (!sorted) {
        qsort(order, (size_t)n, sizeof *order, by_start_then_index);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyList_SET_ITEM(siblings, i, order[i].span); /* a permutation: the references stay */
        }
    }
    PyMem_Free(order);
    return DONE;
}

static PyObject *db_sequence(PyObject *module, PyObject *siblings) {
    (void)module;
    if (!PyList_CheckExact(siblings)) {
        PyErr_SetString(PyExc_TypeError, "db_sequence() takes a list of spans");
        return NULL;
    }
    int outcome = sort_by_start(siblings);
    if (outcome != DONE) {
        if (outcome == DECLINED) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    PyObject *spans = PyList_New(0), *shapes = PyList_New(0), *by_text = PyDict_New();
    PyObject *result = NULL, *last_shape = NULL; /* held: its address must not come back */
    int last_truncated = 0;
    if (spans == NULL || shapes == NULL || by_text == NULL) {
        goto done;
    }
    Py_INCREF(siblings); /* held: db_shape runs Python code */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(siblings); i++) {
        PyObject *span = PyList_GET_ITEM(siblings, i);
        if (apm_view_get(span, APM_VIEW_CACHED) == Py_True) {
            continue; /* no round trip */
        }
        Py_INCREF(span);
        PyObject *text = apm_view_get(span, APM_VIEW_STATEMENT);
        PyObject *shape = NULL;
        if (text != Py_None && PyUnicode_GET_LENGTH(text) > 0) {
            shape = Py_XNewRef(PyDict_GetItemWithError(by_text, text));
            if (shape == NULL && !PyErr_Occurred() && (shape = shape_of(span)) != NULL &&
                PyDict_SetItem(by_text, text, shape) < 0) {
                Py_CLEAR(shape);
            }
        } else {
            shape = shape_of(span); /* without a text the shape comes from operation and table */
        }
        int truncated = -1;
        if (shape != NULL && shape == last_shape) {
            truncated = last_truncated;
        } else if (shape != NULL) {
            PyObject *value = PyObject_GetAttr(shape, s_truncated);
            truncated = value == NULL ? -1 : PyObject_IsTrue(value);
            Py_XDECREF(value);
        }
        int rc = truncated;
        if (truncated == 0) {
            rc = PyList_Append(spans, span) < 0 || PyList_Append(shapes, shape) < 0 ? -1 : 0;
        }
        if (rc >= 0 && shape != last_shape) {
            Py_XSETREF(last_shape, Py_NewRef(shape));
            last_truncated = truncated;
        }
        Py_DECREF(span);
        Py_XDECREF(shape);
        if (rc < 0) {
            Py_DECREF(siblings);
            goto done;
        }
    }
    Py_DECREF(siblings);
    result = PyTuple_Pack(2, spans, shapes);
done:
    Py_XDECREF(last_shape);
    Py_XDECREF(spans);
    Py_XDECREF(shapes);
    Py_XDECREF(by_text);
    return result;
}

#define MIN_PERIOD 2 /* mn_plus_one.MIN_PERIOD and MAX_PERIOD, checked at load */
#define MAX_PERIOD 8

/* mn_plus_one._repeat_at over the numbered fingerprints ``ids``: the period and repetitions at
 * ``i``, or 0 in *period when none. */
static void repeat_at(const Py_ssize_t *ids, const Py_ssize_t *other, Py_ssize_t n, Py_ssize_t i,
                      Py_ssize_t threshold, Py_ssize_t *period, Py_ssize_t *reps) {
    Py_ssize_t first = other[i] - i + 1 > MIN_PERIOD ? other[i] - i + 1 : MIN_PERIOD;
    for (Py_ssize_t p = first; p <= MAX_PERIOD; p++) {
        if (i + p * threshold > n) {
            break;
        }
        Py_ssize_t end = i + p;
        while (end < n && ids[end] == ids[end - p]) {
            end++;
        }
        if ((end - i) / p >= threshold) {
            *period = p;
            *reps = (end - i) / p;
            return;
        }
    }
    *period = 0;
}

static PyObject *repetitions(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyLong_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    PyObject *fingerprints = args[0];
    int overflow;
    long long threshold = PyLong_AsLongLongAndOverflow(args[1], &overflow);
    Py_ssize_t n = PyList_GET_SIZE(fingerprints);
    if (overflow || threshold < 1 || threshold > n + 1) {
        if (!overflow && threshold > n + 1) {
            return PyList_New(0); /* no fingerprint can occur threshold times */
        }
        Py_RETURN_NONE;
    }
    Py_ssize_t *ids = PyMem_Malloc(3 * (size_t)(n > 0 ? n : 1) * sizeof *ids);
    PyObject *numbers = PyDict_New();
    PyObject *found = NULL;
    if (ids == NULL || numbers == NULL) {
        if (ids == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    Py_ssize_t *other = ids + n, *counts = ids + 2 * n;
    Py_ssize_t distinct = 0;
    /* Each fingerprint numbered in order of first appearance, and counted. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fingerprint = PyList_GET_ITEM(fingerprints, i);
        if (!PyUnicode_CheckExact(fingerprint)) {
            Py_DECREF(numbers);
            PyMem_Free(ids);
            Py_RETURN_NONE;
        }
        PyObject *number = PyDict_GetItemWithError(numbers, fingerprint); /* borrowed */
        if (number != NULL) {
            ids[i] = PyLong_AsSsize_t(number);
        } else {
            PyObject *next = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(distinct);
            int rc = next == NULL ? -1 : PyDict_SetItem(numbers, fingerprint, next);
            Py_XDECREF(next);
            if (rc < 0) {
                goto done;
            }
            counts[distinct] = 0;
            ids[i] = distinct++;
        }
        counts[ids[i]]++;
    }
    Py_ssize_t frequent = 0;
    for (Py_ssize_t k = 0; k < distinct; k++) {
        frequent += counts[k] >= threshold;
    }
    found = PyList_New(0);
    if (found == NULL || frequent < 2) {
        goto done;
    }
    if (n > 0) {
        other[n - 1] = n;
    }
    for (Py_ssize_t i = n - 2; i >= 0; i--) {
        other[i] = ids[i + 1] != ids[i] ? i + 1 : other[i + 1];
    }
    for (Py_ssize_t i = 0; i + MIN_PERIOD * threshold <= n;) {
        Py_ssize_t period = 0, reps = 0;
        if (counts[ids[i]] >= threshold) {
            repeat_at(ids, other, n, i, (Py_ssize_t)threshold, &period, &reps);
        }
        if (period == 0) {
            i++;
            continue;
        }
        PyObject *hit = Py_BuildValue("(nnn)", i, period, reps);
        if (hit == NULL || PyList_Append(found, hit) < 0) {
            Py_XDECREF(hit);
            Py_CLEAR(found);
            goto done;
        }
        Py_DECREF(hit);
        i += period * reps;
    }
done:
    Py_XDECREF(numbers);
    PyMem_Free(ids);
    return found;
}

/* The durations in milliseconds of every span of groups ({key: (shape, [span, ...])}), in
 * order, as one list of floats per group (a new list of lists), or NULL: DECLINED in *outcome
 * for what add_trips leaves to Python, FAILED with an exception set. */
static PyObject *trip_durations(PyObject *groups, int *outcome) {
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        *outcome = FAILED;
        return NULL;
    }
    PyTypeObject *view_type = apm_view_type();
    Py_ssize_t pos = 0;
    PyObject *key, *entry; /* borrowed */
    while (PyDict_Next(groups, &pos, &key, &entry)) {
        int pair = PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2;
        PyObject *spans = pair ? PyTuple_GET_ITEM(entry, 1) : NULL;
        if (spans == NULL || !PyList_CheckExact(spans)) {
            *outcome = DECLINED;
            goto fail;
        }
        Py_ssize_t n = PyList_GET_SIZE(spans);
        PyObject *ms = PyList_New(n);
        if (ms == NULL || PyList_Append(out, ms) < 0) {
            Py_XDECREF(ms);
            *outcome = FAILED;
            goto fail;
        }
        Py_DECREF(ms); /* out holds it */
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *span = PyList_GET_ITEM(spans, i);
            int view = PyObject_TypeCheck(span, view_type);
            PyObject *start = view ? apm_view_get(span, APM_VIEW_START_NS) : NULL;
            PyObject *end = view ? apm_view_get(span, APM_VIEW_END_NS) : NULL;
            long long duration;
            /* Exactly ints: a subclass's subtraction may be its own. */
            if (start == NULL || end == NULL || !PyLong_CheckExact(start) ||
                !PyLong_CheckExact(end) || duration_of(span, &duration) != DONE) {
                *outcome = DECLINED;
                goto fail;
            }
            PyObject *value = PyFloat_FromDouble((double)duration / 1e6);
            if (value == NULL) {
                *outcome = FAILED;
                goto fail;
            }
            PyList_SET_ITEM(ms, i, value);
        }
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* by_key[key]'s _Samples taken out of by_key (a new reference), or a new one made, the oldest
 * key evicted first when by_key holds max_keys already.  NULL with an exception set. */
static PyObject *take_samples(PyObject *by_key, PyObject *key, Py_ssize_t max_keys) {
    PyObject *samples = PyDict_GetItemWithError(by_key, key); /* borrowed */
    if (samples != NULL) {
        Py_INCREF(samples);
        if (PyDict_DelItem(by_key, key) < 0) {
            Py_CLEAR(samples);
        }
        return samples;
    }
    if (PyErr_Occurred()) {
        return NULL;
    }
    samples = PyObject_CallNoArgs((PyObject *)samples_type);
    if (samples != NULL && PyDict_GET_SIZE(by_key) >= max_keys) {
        Py_ssize_t pos = 0;
        PyObject *oldest, *value; /* borrowed */
        if (PyDict_Next(by_key, &pos, &oldest, &value)) {
            Py_INCREF(oldest);
            int rc = PyDict_DelItem(by_key, oldest);
            Py_DECREF(oldest);
            if (rc < 0) {
                Py_CLEAR(samples);
            }
        }
    }
    return samples;
}

/* The durations ``ms`` (a list of floats) written into the ring of ``samples``, exactly a
 * _Samples holding an array('d'), as QueryHistory.add_trips writes them: appended while the ring
 * holds fewer than SAMPLES_PER_QUERY, then each over the oldest, at added % SAMPLES_PER_QUERY;
 * ``added`` counts them.  0, or -1 with an exception set. */
static int write_ring(PyObject *samples, PyObject *ms) {
    PyObject **added_slot = (PyObject **)((char *)samples + samples_added_offset);
    PyObject *ring = *(PyObject **)((char *)samples + samples_ring_offset);
    if (!Py_IS_TYPE(samples, samples_type) || ring == NULL || !Py_IS_TYPE(ring, array_type) ||
        *added_slot == NULL || !PyLong_CheckExact(*added_slot)) {
        PyErr_SetString(PyExc_TypeError, "the query history holds a value that is not a _Samples");
        return -1;
    }
    Py_ssize_t added = PyLong_AsSsize_t(*added_slot);
    if (added == -1 && PyErr_Occurred()) {
        return -1;
    }
    Py_buffer buffer;
    if (PyObject_GetBuffer(ring, &buffer, PyBUF_FORMAT) < 0) {
        return -1;
    }
    Py_ssize_t held = buffer.len / (buffer.itemsize > 0 ? buffer.itemsize : 1);
    int doubles = buffer.itemsize == sizeof(double) && buffer.format != NULL &&
                  strcmp(buffer.format, "d") == 0;
    PyBuffer_Release(&buffer);
    if (!doubles) {
        PyErr_SetString(PyExc_TypeError, "a _Samples ring is not an array('d')");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(ms), i = 0;
    for (; i < n && held < samples_per_query; i++, held++) { /* filling: append, as Python does */
        PyObject *none = PyObject_CallMethodOneArg(ring, s_append, PyList_GET_ITEM(ms, i));
        if (none == NULL) {
            return -1;
        }
        Py_DECREF(none);
    }
    if (i < n) { /* full: each over the oldest, through the buffer (no resizing from here) */
        if (PyObject_GetBuffer(ring, &buffer, PyBUF_WRITABLE) < 0) {
            return -1;
        }
        double *values = (double *)buffer.buf;
        Py_ssize_t at = added + i;
        for (; i < n; i++, at++) {
            values[at % samples_per_query] = PyFloat_AS_DOUBLE(PyList_GET_ITEM(ms, i));
        }
        PyBuffer_Release(&buffer);
    }
    PyObject *sum = PyLong_FromSsize_t(added + n);
    if (sum == NULL) {
        return -1;
    }
    Py_SETREF(*added_slot, sum);
    return 0;
}

static PyObject *add_trips(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyDict_CheckExact(args[0]) || !PyLong_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "add_trips() takes (by_key: dict, groups, max_keys: int)");
        return NULL;
    }
    PyObject *by_key = args[0], *groups = args[1];
    Py_ssize_t max_keys = PyLong_AsSsize_t(args[2]);
    if (max_keys == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyDict_CheckExact(groups)) {
        Py_RETURN_NONE;
    }
    /* Every duration first: a trace declined leaves the history as it was. */
    int outcome = DONE;
    PyObject *durations = trip_durations(groups, &outcome);
    if (durations == NULL) {
        if (outcome == DECLINED) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    Py_ssize_t pos = 0, index = 0;
    PyObject *key, *entry; /* borrowed */
    while (PyDict_Next(groups, &pos, &key, &entry) && index < PyList_GET_SIZE(durations)) {
        PyObject *ms = PyList_GET_ITEM(durations, index++);
        Py_INCREF(key); /* held: making a _Samples runs Python code */
        PyObject *samples = take_samples(by_key, key, max_keys);
        int rc = -1;
        if (samples != NULL) {
            rc = write_ring(samples, ms);
            if (rc == 0) {
                rc = PyDict_SetItem(by_key, key, samples);
            }
            Py_DECREF(samples);
        }
        Py_DECREF(key);
        if (rc < 0) {
            Py_DECREF(durations);
            return NULL;
        }
    }
    Py_DECREF(durations);
    Py_RETURN_TRUE;
}

/* The last span of ``spans`` whose id equals ``id`` (borrowed), NULL when none, or FAILED set
 * in *outcome with an exception.  The ids are exact ints: comparing them runs no Python. */
static PyObject *span_with_id(PyObject *spans, PyObject *id, int *outcome) {
    for (Py_ssize_t i = PyList_GET_SIZE(spans) - 1; i >= 0; i--) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        PyObject *span_id = apm_view_get(span, APM_VIEW_SPAN_ID);
        int same = span_id == id ? 1 : PyObject_RichCompareBool(span_id, id, Py_EQ);
        if (same != 0) {
            *outcome = same < 0 ? FAILED : DONE;
            return same < 0 ? NULL : span;
        }
    }
    return NULL;
}

/* Trace.entry_of(first) over ``spans`` (read already: SpanViews with int ids and str services)
 * into *entry (borrowed: a span or Py_None): DONE, FAILED with an exception set, or DECLINED
 * when ``first`` is not one of the spans, the walk comes back to its id, or it takes more than
 * ENTRY_STEPS steps (each scans the spans: a deep chain or a parent cycle, which Python walks
 * through its dict).  Otherwise the spans walked have distinct ids, all in Python's dict of the
 * spans by id, so its bound (that dict's size) is not reached before this walk ends. */
#define ENTRY_STEPS 32
static int entry_of(PyObject *spans, PyObject *first, PyObject **entry) {
    Py_ssize_t n = PyList_GET_SIZE(spans), at = 0;
    while (at < n && PyList_GET_ITEM(spans, at) != first) {
        at++;
    }
    if (at == n) {
        return DECLINED;
    }
    PyObject *first_id = apm_view_get(first, APM_VIEW_SPAN_ID), *current = first;
    *entry = Py_None;
    for (Py_ssize_t step = 0; step < n; step++) {
        if (step == ENTRY_STEPS) {
            return DECLINED;
        }
        PyObject *parent_id = apm_view_get(current, APM_VIEW_PARENT_ID);
        int has_parent = PyObject_IsTrue(parent_id); /* an exact int: no Python code */
        if (has_parent <= 0) {
            *entry = current;
            return has_parent < 0 ? FAILED : DONE;
        }
        int outcome = DONE;
        PyObject *parent = span_with_id(spans, parent_id, &outcome);
        if (outcome == FAILED) {
            return FAILED;
        }
        if (parent == NULL) {
            return DONE;
        }
        int back = PyObject_RichCompareBool(apm_view_get(parent, APM_VIEW_SPAN_ID), first_id, Py_EQ);
        if (back != 0) {
            return back < 0 ? FAILED : DECLINED;
        }
        int differ = PyUnicode_Compare(apm_view_get(parent, APM_VIEW_SERVICE), apm_view_get(current, APM_VIEW_SERVICE));
        if (differ == -1 && PyErr_Occurred()) {
            return FAILED;
        }
        if (differ != 0) {
            *entry = current;
            return DONE;
        }
        current = parent;
    }
    *entry = Py_None;
    return DONE;
}

/* Whether every item of ``spans`` is a SpanView with int ids and a str service (and, when
 * ``times``, int times and a code location that is None or a str). */
static int readable(PyObject *spans, int times) {
    PyTypeObject *view_type = apm_view_type();
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        if (!PyObject_TypeCheck(span, view_type)) {
            return 0;
        }
        PyObject *span_id = apm_view_get(span, APM_VIEW_SPAN_ID), *parent_id = apm_view_get(span, APM_VIEW_PARENT_ID);
        PyObject *service = apm_view_get(span, APM_VIEW_SERVICE);
        if (span_id == NULL || parent_id == NULL || service == NULL || !PyLong_CheckExact(span_id) ||
            !PyLong_CheckExact(parent_id) || !PyUnicode_CheckExact(service)) {
            return 0;
        }
        if (times) {
            PyObject *code = apm_view_get(span, APM_VIEW_CODE);
            long long duration;
            if (code == NULL || !(code == Py_None || PyUnicode_CheckExact(code)) || duration_of(span, &duration) != DONE) {
                return 0;
            }
        }
    }
    return 1;
}

/* The trace's distinct non-empty services, sorted, as a tuple: a new reference or NULL. */
static PyObject *services_of(PyObject *spans) {
    PyObject *names = PySet_New(NULL);
    if (names == NULL) {
        return NULL;
    }
    PyObject *last = NULL; /* borrowed: the spans of one service mostly hold one str object */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spans); i++) {
        PyObject *service = apm_view_get(PyList_GET_ITEM(spans, i), APM_VIEW_SERVICE);
        if (service == last || PyUnicode_GET_LENGTH(service) == 0) {
            continue;
        }
        if (PySet_Add(names, service) < 0) {
            Py_DECREF(names);
            return NULL;
        }
        last = service;
    }
    PyObject *sorted = PySequence_List(names);
    Py_DECREF(names);
    if (sorted == NULL || PyList_Sort(sorted) < 0) {
        Py_XDECREF(sorted);
        return NULL;
    }
    PyObject *out = PyList_AsTuple(sorted);
    Py_DECREF(sorted);
    return out;
}

static PyObject *finding_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyList_CheckExact(args[1]) || PyList_GET_SIZE(args[1]) == 0) {
        Py_RETURN_NONE;
    }
    PyObject *trace_spans = args[0], *spans = args[1];
    Py_ssize_t n = PyList_GET_SIZE(spans);
    /* Made before the spans are read: nothing after it runs Python until the services. */
    PyObject *ids = PyTuple_New(n);
    if (ids == NULL) {
        return NULL;
    }
    if (!readable(trace_spans, 0) || !readable(spans, 1)) {
        Py_DECREF(ids); /* its items are NULL: freed as they are */
        Py_RETURN_NONE;
    }
    long long longest = 0;
    PyObject *code = Py_None; /* borrowed until held below */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = PyList_GET_ITEM(spans, i);
        long long duration;
        duration_of(span, &duration); /* readable() checked it is DONE */
        if (i == 0 || duration > longest) {
            longest = duration;
        }
        PyObject *location = apm_view_get(span, APM_VIEW_CODE);
        if (code == Py_None && location != Py_None && PyUnicode_GET_LENGTH(location) > 0) {
            code = location;
        }
        PyTuple_SET_ITEM(ids, i, Py_NewRef(apm_view_get(span, APM_VIEW_SPAN_ID)));
    }
    PyObject *entry = NULL;
    int outcome = entry_of(trace_spans, PyList_GET_ITEM(spans, 0), &entry);
    if (outcome == DECLINED) {
        Py_DECREF(ids);
        Py_RETURN_NONE;
    }
    if (outcome == FAILED) {
        Py_DECREF(ids);
        return NULL;
    }
    /* Held: making the services allocates, which may collect garbage, whose finalizers run
     * Python that could change a span's slots. */
    Py_INCREF(entry);
    Py_INCREF(code);
    PyObject *services = services_of(trace_spans);
    if (services == NULL) {
        Py_DECREF(entry);
        Py_DECREF(code);
        Py_DECREF(ids);
        return NULL;
    }
    return Py_BuildValue("(NNNLN)", entry, services, ids, longest, code); /* N: stolen, even on failure */
}

PyDoc_STRVAR(index_trace_doc,
             "index_trace(trace) -> (by_category, texts, error, total_ns, longest_ns, has_cached) or None\n\n"
             "The twin of otel_apm.detectors.summary.index_trace; None leaves the trace to it.");
PyDoc_STRVAR(by_fingerprint_doc,
             "by_fingerprint(by_text) -> {(service, fingerprint): (shape, spans)}\n\n"
             "The twin of otel_apm.detectors.dbshape.by_fingerprint, for a dict of lists.");

PyDoc_STRVAR(add_trips_doc,
             "add_trips(by_key, groups, max_keys) -> True or None\n\n"
             "The twin of otel_apm.detectors.history.QueryHistory.add_trips on its dict of\n"
             "_Samples; None leaves the groups to it, the history unchanged.");

PyDoc_STRVAR(db_sequence_doc,
             "db_sequence(siblings) -> (spans, shapes) or None\n\n"
             "The twin of otel_apm.detectors.loops._sequence; None leaves the siblings to it.");

PyDoc_STRVAR(repetitions_doc,
             "repetitions(fingerprints, threshold) -> [(start, period, repetitions), ...] or None\n\n"
             "The twin of otel_apm.detectors.mn_plus_one.repetitions; None leaves it to it.");

PyDoc_STRVAR(fingerprint_counts_doc,
             "fingerprint_counts(groups) -> {fingerprint: round trips} or None\n\n"
             "The twin of otel_apm.detectors.summary.count_by_fingerprint; None leaves it to it.");

PyDoc_STRVAR(repeats_knowable_doc,
             "repeats_knowable(statements, threshold) -> bool or None\n\n"
             "The twin of otel_apm.detectors.repeated_query.repeats_knowable; None leaves it to it.");

PyDoc_STRVAR(by_parent_doc,
             "by_parent(spans, category) -> {parent_id: [span, ...]} or None\n\n"
             "The twin of the filing in otel_apm.model.Trace.siblings; None leaves it to it.");

PyDoc_STRVAR(finding_spans_doc,
             "finding_spans(trace_spans, spans) -> (entry, services, span_ids, longest_ns, code) or None\n\n"
             "The twin of otel_apm.detectors.base.finding_spans; None leaves it to it.");

static PyMethodDef traceindex_methods[] = {
    {"finding_spans", (PyCFunction)(void (*)(void))finding_spans, METH_FASTCALL, finding_spans_doc},
    {"index_trace", (PyCFunction)index_trace, METH_O, index_trace_doc},
    {"by_fingerprint", (PyCFunction)by_fingerprint, METH_O, by_fingerprint_doc},
    {"add_trips", (PyCFunction)(void (*)(void))add_trips, METH_FASTCALL, add_trips_doc},
    {"db_sequence", (PyCFunction)db_sequence, METH_O, db_sequence_doc},
    {"by_parent", (PyCFunction)(void (*)(void))by_parent, METH_FASTCALL, by_parent_doc},
    {"repeats_knowable", (PyCFunction)(void (*)(void))repeats_knowable, METH_FASTCALL, repeats_knowable_doc},
    {"fingerprint_counts", (PyCFunction)fingerprint_counts, METH_O, fingerprint_counts_doc},
    {"repetitions", (PyCFunction)(void (*)(void))repetitions, METH_FASTCALL, repetitions_doc},
    {NULL, NULL, 0, NULL},
};

int apm_traceindex_init(PyObject *module) {
    trace_type = apm_class_of("otel_apm.model", "Trace");
    if (trace_type == NULL) {
        return -1;
    }
    for (int slot = 0; slot < TRACE_SLOTS; slot++) {
        trace_offsets[slot] = apm_member_offset(trace_type, TRACE_SLOT_NAMES[slot]);
        if (trace_offsets[slot] < 0) {
            return -1;
        }
    }
    PyObject *max_chars = apm_attr_of("otel_apm.sql", "MAX_STATEMENT_CHARS");
    if (max_chars == NULL) {
        return -1;
    }
    max_statement_chars = PyLong_Check(max_chars) ? PyLong_AsSsize_t(max_chars) : -1;
    Py_DECREF(max_chars);
    if (max_statement_chars < 0) {
        PyErr_SetString(PyExc_ImportError, "otel_apm._native: otel_apm.sql.MAX_STATEMENT_CHARS is not a size");
        return -1;
    }
    db_category = apm_attr_of("otel_apm.model", "DB");
    parse_cached = apm_attr_of("otel_apm.sql", "_parse_sql_cached");
    db_shape = apm_attr_of("otel_apm.detectors.dbshape", "db_shape");
    s_db_texts = apm_attr_of("otel_apm.detectors.dbshape", "DB_TEXTS");
    s_fingerprint = PyUnicode_InternFromString("fingerprint");
    s_tables = PyUnicode_InternFromString("tables");
    s_truncated = PyUnicode_InternFromString("truncated");
    s_placeholders = PyUnicode_InternFromString("placeholders");
    parse_sql = apm_attr_of("otel_apm.sql", "parse_sql");
    if (db_category == NULL || parse_cached == NULL || db_shape == NULL || s_db_texts == NULL ||
        s_fingerprint == NULL || s_tables == NULL || s_truncated == NULL || s_placeholders == NULL ||
        parse_sql == NULL) {
        return -1;
    }
    samples_type = apm_class_of("otel_apm.detectors.history", "_Samples");
    array_type = apm_class_of("array", "array");
    PyObject *per_query = apm_attr_of("otel_apm.detectors.history", "SAMPLES_PER_QUERY");
    samples_per_query = per_query == NULL ? -1 : PyLong_AsSsize_t(per_query);
    Py_XDECREF(per_query);
    s_append = PyUnicode_InternFromString("append");
    if (samples_type == NULL || array_type == NULL || s_append == NULL || samples_per_query < 1) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError, "otel_apm._native: SAMPLES_PER_QUERY is not a count");
        }
        return -1;
    }
    PyObject *min_period = apm_attr_of("otel_apm.detectors.mn_plus_one", "MIN_PERIOD");
    PyObject *max_period = apm_attr_of("otel_apm.detectors.mn_plus_one", "MAX_PERIOD");
    int periods_agree = min_period != NULL && max_period != NULL && PyLong_Check(min_period) &&
                        PyLong_Check(max_period) && PyLong_AsLong(min_period) == MIN_PERIOD &&
                        PyLong_AsLong(max_period) == MAX_PERIOD;
    Py_XDECREF(min_period);
    Py_XDECREF(max_period);
    if (!periods_agree) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ImportError, "otel_apm._native: mn_plus_one's periods are not 2..8");
        }
        return -1;
    }
    samples_added_offset = apm_member_offset(samples_type, "added");
    samples_ring_offset = apm_member_offset(samples_type, "ring");
    if (samples_added_offset < 0 || samples_ring_offset < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, traceindex_methods);
}
