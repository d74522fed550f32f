/* The statistics' per-span work compiled: DDSketch.add (otel_apm/stats/sketch.py) and
 * Tally.add_spans (otel_apm/stats/rollup.py), which Statistics.emit calls for a request's root
 * and for each statement of the trace.
 *
 * DDSketch and Tally are Python classes with __slots__: here their slots are read and written in
 * place (offsets loaded at import, which fails when the classes' slots change), and the sketch's
 * array('q') of bucket counts is incremented through the buffer protocol.  A value whose bucket
 * lies outside the array goes to the sketch's Python _reserve, the one place the range widens
 * and collapses.  A tally's values are summed in C doubles in the order Python adds them, and
 * stored once per call, which is where the time goes in Python (a new float per addition).
 *
 * tally_statements runs Statistics.emit's loop over a trace's statement groups (rollup.py
 * _tally_statements): the entry lookup, the tally update and the endpoint names, in C, calling
 * back into Python only to file a new entry or advance one whose tick closed.
 *
 * statement_totals is the metrics reporter's loop over the same groups (otel_apm/emit/metrics.py
 * _add_statements): each statement's nanoseconds and runs added to its totals.
 *
 * The Python methods stay the reference: whenever an argument or a slot is not what this path
 * handles exactly (an int value, a min an int made, counters or an offset past 64 bits, span
 * times that are not ints, a subclass), the call goes to the Python method, before anything was
 * changed, so the outcome is the one Python gives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>

#include "native.h"
#include "view.h"

/* DDSketch.__slots__ and Tally.__slots__, all of them (apm_slot_offsets checks there are no more). */
enum { SK_COUNTS, SK_GAMMA, SK_INV_LOG_GAMMA, SK_OFFSET, SK_ALPHA, SK_COUNT, SK_MAX, SK_MAX_BUCKETS,
       SK_MIN, SK_SUM, SK_ZERO_COUNT, SK_SLOT_COUNT };
static const char *const SKETCH_SLOT_NAMES[SK_SLOT_COUNT] = {
    "_counts", "_gamma", "_inv_log_gamma", "_offset", "alpha", "count",
    "max",     "max_buckets", "min",       "sum",     "zero_count",
};
enum { TA_COUNT, TA_DB_MS, TA_DB_QUERIES, TA_DURATION, TA_ENDPOINTS, TA_ERRORS, TA_EXTERNAL_MS, TA_SLOW,
       TA_SLOT_COUNT };
static const char *const TALLY_SLOT_NAMES[TA_SLOT_COUNT] = {
    "count", "db_ms", "db_queries", "duration", "endpoints", "errors", "external_ms", "slow",
};

/* rollup._Rolling.__slots__ */
enum { RO_RINGS, RO_TICK, RO_TICK_INDEX, RO_TOTAL, RO_SLOT_COUNT };
static const char *const ROLLING_SLOT_NAMES[RO_SLOT_COUNT] = {"rings", "tick", "tick_index", "total"};

static PyTypeObject *sketch_type, *tally_type, *rolling_type, *array_type; /* strong references */
static Py_ssize_t sketch_offsets[SK_SLOT_COUNT], tally_offsets[TA_SLOT_COUNT], rolling_offsets[RO_SLOT_COUNT];
static PyObject *python_tally_statements; /* rollup._tally_statements, the reference (strong) */
static double min_value;                                /* otel_apm.stats.sketch.MIN_VALUE */
static PyObject *str_add, *str_add_spans, *str_reserve; /* method names, interned */

/* Keys are ceil(log(value) * _inv_log_gamma) with |log(value)| < 746 for any positive double: an
 * _inv_log_gamma up to this keeps every key, and a key minus an offset of the same size, within a
 * long long. */
#define MAX_KEY 4e18
#define MAX_INV_LOG_GAMMA (MAX_KEY / 746.0)
/* An int threshold converts to a double exactly up to 2^53; past it Python compares exactly. */
#define EXACT_DOUBLE_INT 9007199254740992LL

#define SLOT(obj, offsets, slot) (*(PyObject **)((char *)(obj) + (offsets)[slot]))

/* Replace a slot's value, stealing ``value``. */
static void slot_set(PyObject *obj, const Py_ssize_t *offsets, int slot, PyObject *value) {
    PyObject **where = (PyObject **)((char *)obj + offsets[slot]);
    PyObject *old = *where;
    *where = value;
    Py_XDECREF(old);
}

/* An exact int that fits a long long, into *out: 1; 0 when it is anything else. */
static int as_long_long(PyObject *value, long long *out) {
    if (value == NULL || !PyLong_CheckExact(value)) {
        return 0;
    }
#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
    /* 3.11's ints: the sign and digit count in ob_size, 30-bit digits.  Read here up to 63 bits
     * (span times in nanoseconds take three digits), as PyLong_AsLongLongAndOverflow's loop with
     * its checks per digit costs a fifth of a query's statistics. */
    Py_ssize_t size = Py_SIZE(value);
    const digit *digits = ((PyLongObject *)value)->ob_digit;
    Py_ssize_t length = size < 0 ? -size : size;
    if (length <= 2 || (length == 3 && digits[2] < 8)) {
        unsigned long long magnitude = 0;
        for (Py_ssize_t i = length; i-- > 0;) {
            magnitude = magnitude << PyLong_SHIFT | digits[i];
        }
        *out = size < 0 ? -(long long)magnitude : (long long)magnitude;
        return 1;
    }
#endif
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    return !overflow; /* an exact int raises nothing: overflow is the only way out */
}

/* Store a counter's new value (a slot that held an int fitting a long long). */
static int set_count(PyObject *obj, const Py_ssize_t *offsets, int slot, long long value) {
    PyObject *number = PyLong_FromLongLong(value);
    if (number == NULL) {
        return -1;
    }
    slot_set(obj, offsets, slot, number);
    return 0;
}

static int set_double(PyObject *obj, const Py_ssize_t *offsets, int slot, double value) {
    PyObject *number = PyFloat_FromDouble(value);
    if (number == NULL) {
        return -1;
    }
    slot_set(obj, offsets, slot, number);
    return 0;
}

/* One sketch being added to: its scalars in C, its counts array's buffer held between buckets. */
typedef struct {
    PyObject *sketch; /* borrowed */
    double inv_log_gamma, sum, min, max;
    long long offset, count, zero_count;
    int min_changed, max_changed, zeros_changed;
    Py_buffer counts; /* counts.obj is NULL while not held */
} Adder;

static void release_counts(Adder *a) {
    if (a->counts.obj != NULL) {
        PyBuffer_Release(&a->counts);
        a->counts.obj = NULL;
    }
}

/* Hold the buffer of the sketch's current _counts array: 0; 1 when it is no array('q') (no
 * exception set); -1 with an exception set. */
static int hold_counts(Adder *a) {
    PyObject *counts = SLOT(a->sketch, sketch_offsets, SK_COUNTS);
    if (counts == NULL || !Py_IS_TYPE(counts, array_type)) {
        return 1;
    }
    if (PyObject_GetBuffer(counts, &a->counts, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0) {
        a->counts.obj = NULL;
        return -1;
    }
    if (a->counts.itemsize != sizeof(long long) || strcmp(a->counts.format, "q") != 0) {
        release_counts(a);
        return 1;
    }
    return 0;
}

/* Start adding ``n`` values to ``sketch``: 1; 0 when this path does not handle the sketch as it
 * is (the caller then uses the Python method; nothing was changed); -1 with an exception set. */
static int adder_open(Adder *a, PyObject *sketch, Py_ssize_t n) {
    a->sketch = sketch;
    a->counts.obj = NULL;
    a->min_changed = a->max_changed = a->zeros_changed = 0;
    if (!Py_IS_TYPE(sketch, sketch_type)) {
        return 0;
    }
    PyObject *ilg = SLOT(sketch, sketch_offsets, SK_INV_LOG_GAMMA);
    PyObject *sum = SLOT(sketch, sketch_offsets, SK_SUM);
    PyObject *min = SLOT(sketch, sketch_offsets, SK_MIN);
    PyObject *max = SLOT(sketch, sketch_offsets, SK_MAX);
    if (ilg == NULL || !PyFloat_CheckExact(ilg) || sum == NULL || !PyFloat_CheckExact(sum) ||
        min == NULL || !PyFloat_CheckExact(min) || max == NULL || !PyFloat_CheckExact(max) ||
        !as_long_long(SLOT(sketch, sketch_offsets, SK_OFFSET), &a->offset) ||
        !as_long_long(SLOT(sketch, sketch_offsets, SK_COUNT), &a->count) ||
        !as_long_long(SLOT(sketch, sketch_offsets, SK_ZERO_COUNT), &a->zero_count)) {
        return 0;
    }
    a->inv_log_gamma = PyFloat_AS_DOUBLE(ilg);
    /* The counters stay within a long long, as Python's ints would without bound; the offset is
     * within the keys' range, so a key minus it cannot overflow. */
    if (!(a->inv_log_gamma > 0.0 && a->inv_log_gamma <= MAX_INV_LOG_GAMMA) || a->count > LLONG_MAX - n ||
        a->zero_count > LLONG_MAX - n || a->offset > (long long)MAX_KEY || a->offset < -(long long)MAX_KEY) {
        return 0;
    }
    a->sum = PyFloat_AS_DOUBLE(sum);
    a->min = PyFloat_AS_DOUBLE(min);
    a->max = PyFloat_AS_DOUBLE(max);
    int held = hold_counts(a);
    return held < 0 ? -1 : !held;
}

/* Count one in bucket ``key``, widening the array through the sketch's _reserve when the key is
 * outside it (the array may be replaced then, and the offset moved). */
static int count_key(Adder *a, long long key) {
    long long i = key - a->offset;
    long long length = (long long)(a->counts.len / (Py_ssize_t)sizeof(long long));
    if (i < 0 || i >= length) {
        release_counts(a); /* an array with a buffer held refuses to resize */
        PyObject *number = PyLong_FromLongLong(key);
        if (number == NULL) {
            return -1;
        }
        PyObject *index = PyObject_CallMethodOneArg(a->sketch, str_reserve, number);
        Py_DECREF(number);
        if (index == NULL) {
            return -1;
        }
        i = PyLong_AsLongLong(index);
        Py_DECREF(index);
        if (i == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (!as_long_long(SLOT(a->sketch, sketch_offsets, SK_OFFSET), &a->offset)) {
            PyErr_SetString(PyExc_OverflowError, "DDSketch._offset left the range of keys");
            return -1;
        }
        int held = hold_counts(a);
        if (held != 0) {
            if (held > 0) {
                PyErr_SetString(PyExc_TypeError, "DDSketch._reserve left _counts no array('q')");
            }
            return -1;
        }
        length = (long long)(a->counts.len / (Py_ssize_t)sizeof(long long));
        if (i < 0 || i >= length) {
            PyErr_SetString(PyExc_IndexError, "array index out of range");
            return -1;
        }
    }
    long long *bucket = (long long *)a->counts.buf + i;
    if (*bucket == LLONG_MAX) { /* as array('q') refuses it */
        PyErr_SetString(PyExc_OverflowError, "a sketch bucket's count exceeds a long long");
        return -1;
    }
    ++*bucket;
    return 0;
}

/* DDSketch.add of a finite value (the callers refuse NaN and infinities, or cannot make them). */
static int adder_add(Adder *a, double value) {
    if (min_value < value) {
        if (count_key(a, (long long)ceil(log(value) * a->inv_log_gamma)) < 0) {
            return -1;
        }
    } else {
        if (0.0 > value) { /* max(value, 0.0): a -0.0 stays -0.0, as in Python */
            value = 0.0;
        }
        a->zero_count++;
        a->zeros_changed = 1;
    }
    a->count++;
    a->sum += value;
    if (value < a->min) {
        a->min = value;
        a->min_changed = 1;
    }
    if (value > a->max) {
        a->max = value;
        a->max_changed = 1;
    }
    return 0;
}

/* Release the counts and store the scalars of the values added so far (also after a failed
 * add: the values before it are counted, as the Python adds before a failing one would be). */
static int adder_close(Adder *a) {
    release_counts(a);
    PyObject *type, *value, *traceback; /* the failed add's exception, kept across the stores */
    PyErr_Fetch(&type, &value, &traceback);
    PyObject *s = a->sketch;
    if (set_count(s, sketch_offsets, SK_COUNT, a->count) < 0 ||
        (a->zeros_changed && set_count(s, sketch_offsets, SK_ZERO_COUNT, a->zero_count) < 0) ||
        set_double(s, sketch_offsets, SK_SUM, a->sum) < 0 ||
        (a->min_changed && set_double(s, sketch_offsets, SK_MIN, a->min) < 0) ||
        (a->max_changed && set_double(s, sketch_offsets, SK_MAX, a->max) < 0)) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return -1;
    }
    PyErr_Restore(type, value, traceback);
    return 0;
}

static PyObject *sketch_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "sketch_add(sketch, value) takes 2 arguments");
        return NULL;
    }
    PyObject *sketch = args[0], *value = args[1];
    if (PyFloat_CheckExact(value)) {
        double v = PyFloat_AS_DOUBLE(value);
        if (!isfinite(v)) {
            return PyErr_Format(PyExc_ValueError, "cannot add %R to a sketch: it has no rank", value);
        }
        Adder a;
        int ready = adder_open(&a, sketch, 1);
        if (ready < 0) {
            return NULL;
        }
        if (ready) {
            int failed = adder_add(&a, v) < 0;
            if (adder_close(&a) < 0 || failed) {
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    return PyObject_CallMethodOneArg(sketch, str_add, value);
}

/* The threshold as a double that compares with durations as the Python object does: 1, or 0. */
static int as_threshold(PyObject *value, double *out) {
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 1;
    }
    long long number;
    if (as_long_long(value, &number) && number <= EXACT_DOUBLE_INT && number >= -EXACT_DOUBLE_INT) {
        *out = (double)number;
        return 1;
    }
    return 0;
}

/* Tally.add_spans on the compiled path: 1 done; 0 not handled (nothing changed); -1 error. */
static int add_spans(PyObject *tally, PyObject *spans, PyObject *slow_ms, double *durations) {
    Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
    PyObject **items = PySequence_Fast_ITEMS(spans);
    long long count, errors, slow;
    double threshold;
    if (!Py_IS_TYPE(tally, tally_type) || !as_threshold(slow_ms, &threshold) ||
        !as_long_long(SLOT(tally, tally_offsets, TA_COUNT), &count) || count > LLONG_MAX - n ||
        !as_long_long(SLOT(tally, tally_offsets, TA_ERRORS), &errors) || errors > LLONG_MAX - n ||
        !as_long_long(SLOT(tally, tally_offsets, TA_SLOW), &slow) || slow > LLONG_MAX - n) {
        return 0;
    }
    PyTypeObject *view_type = apm_view_type();
    long long new_errors = 0, new_slow = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *span = items[i];
        long long start, end, spent;
        if (!Py_IS_TYPE(span, view_type) || !as_long_long(apm_view_get(span, APM_VIEW_START_NS), &start) ||
            !as_long_long(apm_view_get(span, APM_VIEW_END_NS), &end) ||
            __builtin_sub_overflow(end, start, &spent)) {
            return 0;
        }
        PyObject *error = apm_view_get(span, APM_VIEW_ERROR);
        if (error != Py_True && error != Py_False) {
            return 0;
        }
        /* (end_ns - start_ns) / 1e6: the int difference rounded to a double, as Python's
         * int / float rounds it, then divided. */
        durations[i] = (double)spent / 1e6;
        new_errors += error == Py_True;
        new_slow += durations[i] >= threshold;
    }
    PyObject *sketch = SLOT(tally, tally_offsets, TA_DURATION);
    if (sketch == NULL) {
        return 0;
    }
    Adder a;
    Py_INCREF(sketch); /* held across _reserve, Python code */
    int ready = adder_open(&a, sketch, n);
    int failed = ready < 0;
    for (Py_ssize_t i = 0; ready > 0 && i < n && !failed; i++) {
        failed = adder_add(&a, durations[i]) < 0;
    }
    if (ready > 0) {
        failed = adder_close(&a) < 0 || failed;
    }
    Py_DECREF(sketch);
    if (ready <= 0 || failed) {
        return failed ? -1 : 0;
    }
    /* A counter that did not change keeps its int (a store makes a new one past 256). */
    if (set_count(tally, tally_offsets, TA_COUNT, count + n) < 0 ||
        (new_errors && set_count(tally, tally_offsets, TA_ERRORS, errors + new_errors) < 0) ||
        (new_slow && set_count(tally, tally_offsets, TA_SLOW, slow + new_slow) < 0)) {
        return -1;
    }
    return 1;
}

/* Tally.add_spans, compiled when it can be, else the Python method: 0, or -1 with an exception. */
static int tally_add(PyObject *tally, PyObject *spans, PyObject *slow_ms) {
    if (PyList_CheckExact(spans) || PyTuple_CheckExact(spans)) {
        double few[32];
        Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
        double *durations = n <= 32 ? few : PyMem_New(double, n);
        if (durations == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        int done = add_spans(tally, spans, slow_ms, durations);
        if (durations != few) {
            PyMem_Free(durations);
        }
        if (done != 0) {
            return done < 0 ? -1 : 0;
        }
    }
    PyObject *result = PyObject_CallMethodObjArgs(tally, str_add_spans, spans, slow_ms, NULL);
    Py_XDECREF(result);
    return result == NULL ? -1 : 0;
}

static PyObject *tally_add_spans(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "tally_add_spans(tally, spans, slow_ms) takes 3 arguments");
        return NULL;
    }
    if (tally_add(args[0], args[1], args[2]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* The _Rolling of a statements entry, (StatementInfo, _Rolling): borrowed, or NULL (no exception)
 * when ``filed`` is not such a pair. */
static PyObject *rolling_of(PyObject *filed) {
    if (filed == NULL || !PyTuple_CheckExact(filed) || PyTuple_GET_SIZE(filed) != 2 ||
        !Py_IS_TYPE(PyTuple_GET_ITEM(filed, 1), rolling_type)) {
        return NULL;
    }
    return PyTuple_GET_ITEM(filed, 1);
}

/* Add ``name`` to the endpoint names unless there or the names are at ``cap``. */
static int add_name(PyObject *names, PyObject *name, long long cap) {
    int present = PyDict_Contains(names, name);
    if (present != 0) {
        return present < 0 ? -1 : 0;
    }
    return (long long)PyDict_GET_SIZE(names) < cap ? PyDict_SetItem(names, name, Py_None) : 0;
}

/* One group of _tally_statements: 0, or -1 with an exception set. */
static int tally_group(PyObject *const *args, long long tick, long long cap, PyObject *key, PyObject *group) {
    PyObject *statements = args[0], *tick_obj = args[2], *slow_ms = args[3], *endpoint = args[4];
    PyObject *service = args[5], *names_of = args[6], *trace = args[7], *refile = args[9];
    PyObject *shape = PyTuple_GET_ITEM(group, 0), *spans = PyTuple_GET_ITEM(group, 1);
    PyObject *filed = PyDict_GetItemWithError(statements, key); /* borrowed */
    if (filed == NULL && PyErr_Occurred()) {
        return -1;
    }
    PyObject *rolling = rolling_of(filed);
    long long index;
    if (rolling == NULL || !as_long_long(SLOT(rolling, rolling_offsets, RO_TICK_INDEX), &index) ||
        tick > index) {
        /* New, past the bound, or a tick closed: the Python method files or advances it (and
         * takes any case this path does not, as it repeats the lookup and the comparison). */
        filed = PyObject_CallFunctionObjArgs(refile, key, shape, spans, tick_obj, NULL);
        if (filed == NULL) {
            return -1;
        }
        rolling = rolling_of(filed);
        if (rolling == NULL) {
            Py_DECREF(filed);
            PyErr_SetString(PyExc_TypeError, "a statement entry is not (StatementInfo, _Rolling)");
            return -1;
        }
    } else {
        Py_INCREF(filed);
    }
    PyObject *tally = SLOT(rolling, rolling_offsets, RO_TICK);
    Py_XINCREF(tally);
    Py_DECREF(filed);
    if (tally == NULL || !Py_IS_TYPE(tally, tally_type)) {
        Py_XDECREF(tally);
        PyErr_SetString(PyExc_TypeError, "a statement entry's tick is not a Tally");
        return -1;
    }
    int failed = tally_add(tally, spans, slow_ms) < 0;
    PyObject *names = failed ? NULL : SLOT(tally, tally_offsets, TA_ENDPOINTS);
    if (!failed && (names == NULL || !PyDict_CheckExact(names))) {
        PyErr_SetString(PyExc_TypeError, "Tally.endpoints is not a dict");
        failed = 1;
    }
    PyObject *theirs = NULL; /* another service's statement: the names names_of gives */
    if (!failed) {
        int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(key, 0), service, Py_EQ);
        failed = same < 0;
        if (same == 0) {
            theirs = PyObject_CallFunctionObjArgs(names_of, trace, endpoint, spans, NULL);
            failed = theirs == NULL;
        }
    }
    if (!failed && theirs == NULL) {
        failed = add_name(names, endpoint, cap) < 0;
    } else if (!failed) {
        PyObject *iterator = PyObject_GetIter(theirs), *name;
        failed = iterator == NULL;
        while (!failed && (name = PyIter_Next(iterator)) != NULL) {
            failed = add_name(names, name, cap) < 0;
            Py_DECREF(name);
        }
        failed = failed || PyErr_Occurred() != NULL;
        Py_XDECREF(iterator);
    }
    Py_XDECREF(theirs);
    Py_DECREF(tally);
    return failed ? -1 : 0;
}

static PyObject *tally_statements(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "tally_statements(statements, groups, tick, slow_ms, endpoint, service, names_of, trace, "
                        "cap, refile) takes 10 arguments");
        return NULL;
    }
    PyObject *groups = args[1], *key, *group;
    long long tick, cap;
    int handled = PyDict_CheckExact(args[0]) && PyDict_CheckExact(groups) && as_long_long(args[2], &tick) &&
                  as_long_long(args[8], &cap);
    /* Every group a (shape, spans) pair under a (service, ...) key, checked before the first is
     * counted. */
    for (Py_ssize_t pos = 0; handled && PyDict_Next(groups, &pos, &key, &group);) {
        handled = PyTuple_CheckExact(group) && PyTuple_GET_SIZE(group) == 2 && PyTuple_CheckExact(key) &&
                  PyTuple_GET_SIZE(key) > 0;
    }
    if (!handled) {
        return PyObject_Vectorcall(python_tally_statements, args, (size_t)nargs, NULL);
    }
    Py_INCREF(groups); /* the groups and their items held across the Python calls */
    Py_ssize_t pos = 0;
    int failed = 0;
    while (!failed && PyDict_Next(groups, &pos, &key, &group)) {
        Py_INCREF(key);
        Py_INCREF(group);
        failed = tally_group(args, tick, cap, key, group) < 0;
        Py_DECREF(key);
        Py_DECREF(group);
    }
    Py_DECREF(groups);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* One group's runs and summed nanoseconds, read before any totals change. */
typedef struct {
    PyObject *key, *shape, *first; /* strong references, held across the calls to entry */
    Py_ssize_t runs;
    long long nanoseconds;
} GroupSum;

/* The spans' summed end_ns - start_ns: 1; 0 when a span is no SpanView with int times, or a sum
 * leaves a long long (then Python sums them, without bound). */
static int sum_spans(PyObject *spans, long long *out) {
    PyTypeObject *view_type = apm_view_type();
    Py_ssize_t n = PySequence_Fast_GET_SIZE(spans);
    PyObject **items = PySequence_Fast_ITEMS(spans);
    long long total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        long long start, end, spent;
        if (!Py_IS_TYPE(items[i], view_type) || !as_long_long(apm_view_get(items[i], APM_VIEW_START_NS), &start) ||
            !as_long_long(apm_view_get(items[i], APM_VIEW_END_NS), &end) ||
            __builtin_sub_overflow(end, start, &spent) || __builtin_add_overflow(total, spent, &total)) {
            return 0;
        }
    }
    *out = total;
    return 1;
}

/* ``entry[index] += amount``, as Python's augmented assignment does it: 0, or -1. */
static int add_at(PyObject *entry, Py_ssize_t index, long long amount) {
    long long total;
    if (PyList_CheckExact(entry) && index < PyList_GET_SIZE(entry) &&
        as_long_long(PyList_GET_ITEM(entry, index), &total) && !__builtin_add_overflow(total, amount, &total)) {
        /* The common case, an int list's int: the sum made once, in C. */
        PyObject *sum = PyLong_FromLongLong(total);
        if (sum == NULL) {
            return -1;
        }
        PyObject *was = PyList_GET_ITEM(entry, index);
        PyList_SET_ITEM(entry, index, sum);
        Py_DECREF(was);
        return 0;
    }
    PyObject *was = PySequence_GetItem(entry, index);
    PyObject *number = was == NULL ? NULL : PyLong_FromLongLong(amount);
    PyObject *sum = number == NULL ? NULL : PyNumber_InPlaceAdd(was, number);
    int failed = sum == NULL || PySequence_SetItem(entry, index, sum) < 0;
    Py_XDECREF(was);
    Py_XDECREF(number);
    Py_XDECREF(sum);
    return failed ? -1 : 0;
}

static PyObject *statement_totals(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "statement_totals(totals, groups, entry) takes 3 arguments");
        return NULL;
    }
    PyObject *totals = args[0], *groups = args[1], *entry = args[2], *key, *group;
    if (!PyDict_CheckExact(totals) || !PyDict_CheckExact(groups)) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t count = PyDict_GET_SIZE(groups);
    GroupSum few[16];
    GroupSum *sums = count <= 16 ? few : PyMem_New(GroupSum, count);
    if (sums == NULL) {
        return PyErr_NoMemory();
    }
    /* Every group read first: a group this path does not hold leaves the whole trace to Python,
     * before anything was added. */
    Py_ssize_t pos = 0, n = 0;
    int handled = 1;
    while (handled && PyDict_Next(groups, &pos, &key, &group)) {
        PyObject *spans = NULL;
        handled = PyTuple_CheckExact(group) && PyTuple_GET_SIZE(group) == 2;
        if (handled) {
            spans = PyTuple_GET_ITEM(group, 1);
            handled = (PyList_CheckExact(spans) || PyTuple_CheckExact(spans)) && PySequence_Fast_GET_SIZE(spans) > 0;
        }
        if (handled && (handled = sum_spans(spans, &sums[n].nanoseconds))) {
            sums[n].key = Py_NewRef(key);
            sums[n].shape = Py_NewRef(PyTuple_GET_ITEM(group, 0));
            sums[n].first = Py_NewRef(PySequence_Fast_ITEMS(spans)[0]);
            sums[n].runs = PySequence_Fast_GET_SIZE(spans);
            n++;
        }
    }
    int failed = 0;
    if (handled) {
        for (Py_ssize_t i = 0; i < n && !failed; i++) {
            PyObject *filed = PyDict_GetItemWithError(totals, sums[i].key); /* borrowed */
            if (filed != NULL) {
                Py_INCREF(filed);
            } else if (!PyErr_Occurred()) {
                filed = PyObject_CallFunctionObjArgs(entry, sums[i].key, sums[i].shape, sums[i].first, NULL);
            }
            failed = filed == NULL || add_at(filed, 0, sums[i].nanoseconds) < 0 ||
                     add_at(filed, 1, (long long)sums[i].runs) < 0;
            Py_XDECREF(filed);
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(sums[i].key);
        Py_DECREF(sums[i].shape);
        Py_DECREF(sums[i].first);
    }
    if (sums != few) {
        PyMem_Free(sums);
    }
    if (failed) {
        return NULL;
    }
    return PyBool_FromLong(handled);
}

static PyMethodDef sketch_methods[] = {
    {"sketch_add", (PyCFunction)(void (*)(void))sketch_add, METH_FASTCALL,
     "sketch_add(sketch, value): DDSketch.add compiled (otel_apm/stats/sketch.py is the reference)."},
    {"tally_add_spans", (PyCFunction)(void (*)(void))tally_add_spans, METH_FASTCALL,
     "tally_add_spans(tally, spans, slow_ms): Tally.add_spans compiled (otel_apm/stats/rollup.py)."},
    {"tally_statements", (PyCFunction)(void (*)(void))tally_statements, METH_FASTCALL,
     "tally_statements(statements, groups, tick, slow_ms, endpoint, service, names_of, trace, cap, refile): "
     "rollup._tally_statements compiled."},
    {"statement_totals", (PyCFunction)(void (*)(void))statement_totals, METH_FASTCALL,
     "statement_totals(totals, groups, entry): otel_apm/emit/metrics.py _add_statements compiled; "
     "False when it declines (nothing added)."},
    {NULL, NULL, 0, NULL},
};

int apm_sketch_init(PyObject *module) {
    sketch_type = apm_class_of("otel_apm.stats.sketch", "DDSketch");
    tally_type = sketch_type == NULL ? NULL : apm_class_of("otel_apm.stats.rollup", "Tally");
    rolling_type = tally_type == NULL ? NULL : apm_class_of("otel_apm.stats.rollup", "_Rolling");
    array_type = rolling_type == NULL ? NULL : apm_class_of("array", "array");
    if (array_type == NULL ||
        apm_slot_offsets(sketch_type, SKETCH_SLOT_NAMES, SK_SLOT_COUNT, sketch_offsets) < 0 ||
        apm_slot_offsets(tally_type, TALLY_SLOT_NAMES, TA_SLOT_COUNT, tally_offsets) < 0 ||
        apm_slot_offsets(rolling_type, ROLLING_SLOT_NAMES, RO_SLOT_COUNT, rolling_offsets) < 0) {
        return -1;
    }
    python_tally_statements = apm_attr_of("otel_apm.stats.rollup", "_tally_statements");
    if (python_tally_statements == NULL) {
        return -1;
    }
    PyObject *floor = apm_attr_of("otel_apm.stats.sketch", "MIN_VALUE");
    if (floor == NULL) {
        return -1;
    }
    min_value = PyFloat_AsDouble(floor);
    Py_DECREF(floor);
    if (min_value == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (!(min_value > 0.0)) { /* the log of what is above it must be defined */
        PyErr_SetString(PyExc_ImportError, "otel_apm._native: DDSketch's MIN_VALUE is not positive");
        return -1;
    }
    str_add = PyUnicode_InternFromString("add");
    str_add_spans = PyUnicode_InternFromString("add_spans");
    str_reserve = PyUnicode_InternFromString("_reserve");
    if (str_add == NULL || str_add_spans == NULL || str_reserve == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(module, sketch_methods);
}
