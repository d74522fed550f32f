/* SpanView (otel_apm/model.py) objects made and filled from C.
 *
 * SpanView is a Python class with __slots__; its slots are member descriptors whose offsets C
 * can write to directly, which costs a store per field instead of an attribute call.  The class
 * stays the one definition of the model: apm_view_init reads the offsets of its slots by name
 * and the defaults of a blank view, and refuses to load (ImportError, so otel_apm.native falls
 * back to Python) when the class and APM_VIEW_SLOTS below no longer agree.
 */
#ifndef OTEL_APM_VIEW_H
#define OTEL_APM_VIEW_H

#include <Python.h>

/* Every slot of SpanView, in the order of APM_VIEW_SLOT_NAMES in view.c. */
enum apm_view_slot {
    APM_VIEW_TRACE_ID,
    APM_VIEW_SPAN_ID,
    APM_VIEW_PARENT_ID,
    APM_VIEW_NAME,
    APM_VIEW_KIND,
    APM_VIEW_START_NS,
    APM_VIEW_END_NS,
    APM_VIEW_ERROR,
    APM_VIEW_SERVICE,
    APM_VIEW_CATEGORY,
    APM_VIEW_DB_SYSTEM,
    APM_VIEW_STATEMENT,
    APM_VIEW_DB_OPERATION,
    APM_VIEW_DB_TABLE,
    APM_VIEW_HTTP_METHOD,
    APM_VIEW_URL,
    APM_VIEW_HTTP_ROUTE,
    APM_VIEW_HTTP_STATUS,
    APM_VIEW_SERVER_ADDRESS,
    APM_VIEW_SCOPE,
    APM_VIEW_CODE,
    APM_VIEW_EXCEPTION_TYPE,
    APM_VIEW_DB_PARAMS,
    APM_VIEW_CACHED,
    APM_VIEW_REQUEST_SIZE,
    APM_VIEW_RESPONSE_SIZE,
    APM_VIEW_SLOT_COUNT
};

/* The byte offsets of the object slots of ``type``, whose __slots__ must be exactly the ``count``
 * ``names`` (in any order), written to ``out`` in the order of ``names``: 0, or -1 with an
 * ImportError set, so that the extension refuses to load when a class it writes into changed. */
int apm_slot_offsets(PyTypeObject *type, const char *const *names, int count, Py_ssize_t *out);

/* ``module_name``'s attribute ``name``, importing the module: a new reference, or NULL with an
 * exception set. */
PyObject *apm_attr_of(const char *module_name, const char *name);

/* The same when it is a class; else NULL with an ImportError set. */
PyTypeObject *apm_class_of(const char *module_name, const char *name);

/* The part's init (module.c PARTS): load SpanView's layout.  0, or -1 with an exception set. */
int apm_view_init(PyObject *module);

/* The SpanView class (borrowed). */
PyTypeObject *apm_view_type(void);

/* A new SpanView with every slot at the value SpanView.__init__ gives it, trace_id..service
 * included (0, "", False): the caller sets those.  New reference, or NULL with an exception. */
PyObject *apm_view_new(void);

/* Stop the cycle collector following ``view`` when every slot holds an atomic value (str, int,
 * float, bool, None), as CPython does for tuples and dicts of atomic values: such a view is in no
 * cycle, and a closed trace waiting for its batch's analysis (or a collector's trace waiting for
 * its root) would otherwise be walked by every collection it lives through.  SpanView's slots
 * hold only such values (model.py says so); a view holding anything else stays tracked. */
void apm_view_untrack_if_atomic(PyObject *view);

/* Set one slot, stealing the reference to value (which must not be NULL). */
void apm_view_set(PyObject *view, enum apm_view_slot slot, PyObject *value);

/* A slot's current value (borrowed; never NULL on a view made by apm_view_new). */
PyObject *apm_view_get(PyObject *view, enum apm_view_slot slot);

/* The byte offset of the slot ``name`` (a T_OBJECT_EX member descriptor in the class's own
 * __dict__) in instances of ``type``, or -1 with ImportError set: how a part reads and writes some
 * of a Python class's slots directly and refuses to load when the class no longer has them. */
Py_ssize_t apm_member_offset(PyTypeObject *type, const char *name);

/* The slot a name (a str) stands for, or -1 when it names none (no exception set). */
int apm_view_slot_of(PyObject *name);

#endif
