/* An instance's own attribute read from where the instance keeps it: see fields.h. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "fields.h"
#include "native.h"

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define APM_FIELDS_LAYOUT 1
#endif

#ifdef APM_FIELDS_LAYOUT
#define Py_BUILD_CORE 1
#include "internal/pycore_dict.h"
#undef Py_BUILD_CORE

/* pycore_object.h's _PyObject_ValuesPointer (that header cannot be included beside Python.h):
 * a managed dict's values pointer is the fourth word before the object.  The load-time check
 * proves it. */
static inline PyDictValues **values_pointer(PyObject *obj) { return ((PyDictValues **)obj) - 4; }

/* Where ``tp`` keeps the field, read as _PyObject_GenericGetAttrWithDict would find it: only a
 * class whose getattr is the generic one, with a valid version tag (so a later change to the
 * class shows), and either nothing by that name on the class (the instance's values, at the
 * name's index in the shared keys) or a __slots__ member.  Anything else leaves index -1 and
 * offset 0: getattr.  Sets f->type to tp without a reference; changes no reference count. */
static void learn(struct apm_field *f, PyTypeObject *tp) {
    f->type = tp;
    f->version = 0;
    f->keys = NULL;
    f->index = -1;
    f->offset = 0;
    if (tp->tp_getattro != PyObject_GenericGetAttr) {
        return;
    }
    PyObject *attr = _PyType_Lookup(tp, f->name); /* borrowed; assigns the version tag */
    if (!PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG)) {
        return;
    }
    f->version = tp->tp_version_tag;
    if (attr == NULL) {
        if (!PyType_HasFeature(tp, Py_TPFLAGS_MANAGED_DICT) ||
            !PyType_HasFeature(tp, Py_TPFLAGS_HEAPTYPE)) {
            return;
        }
        PyDictKeysObject *keys = ((PyHeapTypeObject *)tp)->ht_cached_keys;
        if (keys == NULL || keys->dk_kind != DICT_KEYS_SPLIT) {
            return;
        }
        PyDictUnicodeEntry *entries = DK_UNICODE_ENTRIES(keys);
        for (Py_ssize_t i = 0; i < keys->dk_nentries; i++) {
            PyObject *key = entries[i].me_key;
            if (key == f->name ||
                (key != NULL && PyUnicode_CheckExact(key) && PyUnicode_Compare(key, f->name) == 0)) {
                f->keys = keys;
                f->index = i;
                return;
            }
        }
        return;
    }
    if (Py_IS_TYPE(attr, &PyMemberDescr_Type) && PyType_IsSubtype(tp, PyDescr_TYPE(attr))) {
        PyMemberDef *member = ((PyMemberDescrObject *)attr)->d_member;
        if ((member->type == T_OBJECT_EX || member->type == T_OBJECT) && member->offset > 0) {
            f->offset = member->offset;
        }
    }
}
#endif

PyObject *apm_field_get(PyObject *obj, struct apm_field *f) {
#ifdef APM_FIELDS_LAYOUT
    PyTypeObject *tp = Py_TYPE(obj);
    struct apm_field at = *f; /* read from this copy: releasing a class below may run Python code */
    if (tp != at.type || at.version != tp->tp_version_tag ||
        !PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG)) {
        learn(&at, tp);
        PyTypeObject *old = f->type;
        Py_INCREF(tp);
        *f = at; /* whole before the old class is released */
        Py_XDECREF(old);
    }
    PyObject *value = NULL;
    if (at.index >= 0) {
        /* NULL once the instance's __dict__ was made: then the dict holds the values. */
        PyDictValues *values = *values_pointer(obj);
        if (values != NULL && ((PyHeapTypeObject *)tp)->ht_cached_keys == at.keys) {
            value = values->values[at.index]; /* NULL: not set on this instance */
        }
    } else if (at.offset > 0) {
        value = *(PyObject **)((char *)obj + at.offset);
    }
    if (value != NULL) {
        Py_INCREF(value);
        return value;
    }
#endif
    return PyObject_GetAttr(obj, f->name);
}

int apm_fields_intern(struct apm_field *fields, size_t count) {
    for (size_t i = 0; i < count; i++) {
        fields[i].name = PyUnicode_InternFromString(fields[i].text);
        if (fields[i].name == NULL) {
            return -1;
        }
    }
    return 0;
}

#ifdef APM_FIELDS_LAYOUT
/* A new class named ``name`` deriving from object, with ``slots`` as its __slots__ if not NULL. */
static PyObject *probe_class(const char *name, PyObject *slots) {
    PyObject *ns = PyDict_New();
    if (ns == NULL || (slots != NULL && PyDict_SetItemString(ns, "__slots__", slots) < 0)) {
        Py_XDECREF(ns);
        return NULL;
    }
    PyObject *cls = PyObject_CallFunction((PyObject *)&PyType_Type, "s(O)O", name, &PyBaseObject_Type, ns);
    Py_DECREF(ns);
    return cls;
}

/* Whether ``field`` of ``obj`` reads ``expected`` through the learned layout (not getattr):
 * 1, 0, or -1 with an exception set. */
static int reads_back(PyObject *obj, struct apm_field *field, PyObject *expected) {
    PyObject *value = apm_field_get(obj, field);
    if (value == NULL) {
        return -1;
    }
    Py_DECREF(value);
    return value == expected && (field->index >= 0 || field->offset > 0);
}

/* Set obj.<name> to a new empty list (returned, borrowed from obj), or NULL. */
static PyObject *set_fresh(PyObject *obj, PyObject *name) {
    PyObject *value = PyList_New(0);
    if (value == NULL) {
        return NULL;
    }
    int failed = PyObject_SetAttr(obj, name, value);
    Py_DECREF(value);
    return failed ? NULL : value;
}
#endif

int apm_fields_init(PyObject *module) {
    (void)module;
#ifdef APM_FIELDS_LAYOUT
    /* Two probe classes, one plain and one with __slots__: their fields must read back, by the
     * layout, as the objects set.  Otherwise this interpreter keeps them elsewhere. */
    struct apm_field probe[] = {{.text = "_first"}, {.text = "_second"}, {.text = "_slot"}};
    int ok = -1;
    PyObject *plain = NULL, *slotted = NULL, *a = NULL, *b = NULL, *slots = NULL;
    if (apm_fields_intern(probe, 3) < 0 || (plain = probe_class("apm_fields_plain", NULL)) == NULL ||
        (slots = Py_BuildValue("(s)", "_slot")) == NULL ||
        (slotted = probe_class("apm_fields_slotted", slots)) == NULL ||
        (a = PyObject_CallNoArgs(plain)) == NULL || (b = PyObject_CallNoArgs(slotted)) == NULL) {
        goto done;
    }
    PyObject *first = set_fresh(a, probe[0].name);
    PyObject *second = first == NULL ? NULL : set_fresh(a, probe[1].name);
    PyObject *slot = second == NULL ? NULL : set_fresh(b, probe[2].name);
    if (slot == NULL) {
        goto done;
    }
    PyObject *objects[3] = {a, a, b}, *expected[3] = {first, second, slot};
    for (int i = 0; i < 3; i++) {
        int agrees = reads_back(objects[i], &probe[i], expected[i]);
        if (agrees < 0) {
            goto done;
        }
        if (!agrees) {
            PyErr_Format(PyExc_ImportError,
                         "otel_apm._native: instance field %s is not kept where csrc/fields.c reads it",
                         probe[i].text);
            goto done;
        }
    }
    ok = 0;
done:
    for (int i = 0; i < 3; i++) {
        Py_CLEAR(probe[i].type);
        Py_CLEAR(probe[i].name);
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(plain);
    Py_XDECREF(slotted);
    Py_XDECREF(slots);
    return ok;
#else
    return 0;
#endif
}
