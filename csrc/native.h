/* The parts of otel_apm._native: one init function per file, called from module.c. */
#ifndef OTEL_APM_NATIVE_H
#define OTEL_APM_NATIVE_H

#include <Python.h>

/* csrc/callsite.c: CallSiteRecorder, the twin of otel_apm.ingest.callsite.CallSite.record. */
int apm_callsite_init(PyObject *module);

#endif
