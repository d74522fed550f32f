/* otel_apm._native: compiled versions of the per-span hot paths, each beside a Python version.
 *
 * The Python versions stay the reference and the fallback (no compiler at install time, another
 * interpreter): otel_apm/native.py loads this module when it was built and APM_NATIVE_ENABLED is
 * not false, and tests compare each compiled function with its Python twin.
 *
 * Each part lives in its own file and adds its functions to the module in its init function,
 * listed in PARTS below.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "native.h"
#include "view.h"

typedef int (*part_init)(PyObject *module);

static const part_init PARTS[] = {
    apm_view_init,
    apm_intake_init,
    apm_otlpviews_init, /* after apm_view_init: it makes SpanViews */
    apm_fields_init,    /* before the parts that read fields.h's fields */
    apm_sdkviews_init,  /* after apm_view_init: it makes SpanViews */
    apm_callsite_init,
    apm_traceindex_init, /* after apm_view_init: it reads SpanViews */
    apm_sketch_init,     /* after apm_view_init: it reads SpanViews */
    NULL, /* the list ends here */
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "otel_apm._native",
    .m_doc = "Compiled hot paths of otel-apm (see otel_apm/native.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *module = PyModule_Create(&native_module);
    if (module == NULL) {
        return NULL;
    }
    for (const part_init *init = PARTS; *init != NULL; init++) {
        if ((*init)(module) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    return module;
}
