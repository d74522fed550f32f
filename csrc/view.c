/* SpanView objects made and filled from C: see view.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "view.h"

static const char *const APM_VIEW_SLOT_NAMES[APM_VIEW_SLOT_COUNT] = {
    "trace_id",  "span_id",     "parent_id",      "name",        "kind",         "start_ns",
    "end_ns",    "error",       "service",        "category",    "db_system",    "statement",
    "db_operation", "db_table", "http_method",    "url",         "http_route",   "http_status",
    "server_address", "scope",  "code",           "exception_type", "db_params", "cached",
    "request_size", "response_size",
};

static PyTypeObject *view_type = NULL;          /* otel_apm.model.SpanView, a strong reference */
static Py_ssize_t offsets[APM_VIEW_SLOT_COUNT]; /* byte offset of each slot in the object */
static PyObject *defaults[APM_VIEW_SLOT_COUNT]; /* a blank view's value of each slot (strong) */
static PyObject *slot_by_name = NULL;           /* name -> slot number, for apm_view_slot_of */

#define SLOT_PTR(view, slot) ((PyObject **)((char *)(view) + offsets[slot]))

Py_ssize_t apm_member_offset(PyTypeObject *type, const char *name) {
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_ImportError, "otel_apm._native: %s has no slot %s", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_ImportError, "otel_apm._native: %s.%s is not an object slot", type->tp_name,
                     name);
        return -1;
    }
    return member->offset;
}

int apm_slot_offsets(PyTypeObject *type, const char *const *names, int count, Py_ssize_t *out) {
    /* Every slot known to the caller, and no other: a slot added to the class needs adding in C. */
    PyObject *slots = PyObject_GetAttrString((PyObject *)type, "__slots__");
    if (slots == NULL) {
        return -1;
    }
    Py_ssize_t found = PySequence_Size(slots);
    Py_DECREF(slots);
    if (found < 0) {
        return -1;
    }
    if (found != count) {
        PyErr_Format(PyExc_ImportError, "otel_apm._native: %s has %zd slots, csrc knows %d", type->tp_name,
                     found, count);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        out[i] = apm_member_offset(type, names[i]);
        if (out[i] < 0) {
            return -1;
        }
    }
    return 0;
}

PyObject *apm_attr_of(const char *module_name, const char *name) {
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return value;
}

PyTypeObject *apm_class_of(const char *module_name, const char *name) {
    PyObject *cls = apm_attr_of(module_name, name);
    if (cls != NULL && !PyType_Check(cls)) {
        PyErr_Format(PyExc_ImportError, "otel_apm._native: %s.%s is not a class", module_name, name);
        Py_CLEAR(cls);
    }
    return (PyTypeObject *)cls;
}

int apm_view_init(PyObject *module) {
    (void)module;
    view_type = apm_class_of("otel_apm.model", "SpanView");
    if (view_type == NULL) {
        return -1;
    }
    PyObject *cls = (PyObject *)view_type;
    if (apm_slot_offsets(view_type, APM_VIEW_SLOT_NAMES, APM_VIEW_SLOT_COUNT, offsets) < 0) {
        return -1;
    }
    slot_by_name = PyDict_New();
    if (slot_by_name == NULL) {
        return -1;
    }
    for (int slot = 0; slot < APM_VIEW_SLOT_COUNT; slot++) {
        PyObject *number = PyLong_FromLong(slot);
        if (number == NULL || PyDict_SetItemString(slot_by_name, APM_VIEW_SLOT_NAMES[slot], number) < 0) {
            Py_XDECREF(number);
            return -1;
        }
        Py_DECREF(number);
    }
    /* The defaults are whatever SpanView.__init__ sets: one definition, in Python. */
    PyObject *blank = PyObject_CallFunction(cls, "iiisiiiOs", 0, 0, 0, "", 0, 0, 0, Py_False, "");
    if (blank == NULL) {
        return -1;
    }
    for (int slot = 0; slot < APM_VIEW_SLOT_COUNT; slot++) {
        PyObject *value = *SLOT_PTR(blank, slot);
        if (value == NULL) {
            Py_DECREF(blank);
            PyErr_Format(PyExc_ImportError, "otel_apm._native: SpanView() leaves %s unset",
                         APM_VIEW_SLOT_NAMES[slot]);
            return -1;
        }
        Py_INCREF(value);
        defaults[slot] = value;
    }
    Py_DECREF(blank);
    return 0;
}

PyTypeObject *apm_view_type(void) { return view_type; }

PyObject *apm_view_new(void) {
    PyObject *view = view_type->tp_alloc(view_type, 0);
    if (view == NULL) {
        return NULL;
    }
    for (int slot = 0; slot < APM_VIEW_SLOT_COUNT; slot++) {
        Py_INCREF(defaults[slot]);
        *SLOT_PTR(view, slot) = defaults[slot];
    }
    return view;
}

void apm_view_untrack_if_atomic(PyObject *view) {
    for (int slot = 0; slot < APM_VIEW_SLOT_COUNT; slot++) {
        PyObject *value = *SLOT_PTR(view, slot);
        if (!(value == Py_None || PyUnicode_CheckExact(value) || PyLong_CheckExact(value) ||
              PyBool_Check(value) || PyFloat_CheckExact(value))) {
            return;
        }
    }
    PyObject_GC_UnTrack(view);
}

void apm_view_set(PyObject *view, enum apm_view_slot slot, PyObject *value) {
    PyObject **where = SLOT_PTR(view, slot);
    PyObject *old = *where;
    *where = value;
    Py_XDECREF(old);
}

PyObject *apm_view_get(PyObject *view, enum apm_view_slot slot) { return *SLOT_PTR(view, slot); }

int apm_view_slot_of(PyObject *name) {
    PyObject *number = PyDict_GetItemWithError(slot_by_name, name); /* borrowed */
    if (number == NULL) {
        PyErr_Clear();
        return -1;
    }
    return (int)PyLong_AsLong(number);
}
