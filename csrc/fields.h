/* An instance's own attribute read from where the instance keeps it, not through getattr.
 *
 * The SDK's objects (Span, Status, BoundedAttributes, BoundedList, InstrumentationScope) are
 * plain Python classes, and reading one of their fields with PyObject_GetAttr costs about 190
 * instructions (the type's MRO lookup, then the instance's attribute lookup by name), measured
 * with callgrind: 14 of them a span were a third of the compiled SDK reader.  CPython 3.11 keeps
 * the attributes of a class without __slots__ in an array beside the object, indexed by the
 * position of the name in the keys the class's instances share, and those of a __slots__ member
 * at a fixed offset; an apm_field learns where, once per class, and then reads the pointer.
 *
 * The reading is the interpreter's internal layout, so it is compiled for 3.11 only (as
 * callsite.c's frame walk) and apm_fields_init refuses to load the module when a probe class's
 * fields do not read back as getattr reads them.  Everywhere the layout does not hold (another
 * version, another class, a field the class defines itself, an instance whose dict was made, a
 * field not set) it is PyObject_GetAttr, with its result and its errors.
 */
#ifndef OTEL_APM_FIELDS_H
#define OTEL_APM_FIELDS_H

#include <Python.h>

/* One field name, and where the last class it was read from keeps it.  Zero-initialize all but
 * the name, which apm_fields_intern sets; the struct is used with the GIL held. */
struct apm_field {
    const char *text;   /* the attribute's name */
    PyObject *name;     /* the same, interned */
    PyTypeObject *type; /* the class learned (a strong reference), or NULL */
    unsigned int version; /* its tp_version_tag when learned: any change to the class resets it */
    void *keys;           /* its shared keys when learned (a managed dict), compared, never read */
    Py_ssize_t index;     /* the field's position in the shared values, or -1 */
    Py_ssize_t offset;    /* the __slots__ member's offset in the object, or 0 */
};

/* Intern the names of ``count`` fields.  0, or -1 with an exception set. */
int apm_fields_intern(struct apm_field *fields, size_t count);

/* ``getattr(obj, field)``: a new reference, or NULL with getattr's exception set. */
PyObject *apm_field_get(PyObject *obj, struct apm_field *field);

#endif
