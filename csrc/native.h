/* The parts of otel_apm._native: one init function per file, called from module.c. */
#ifndef OTEL_APM_NATIVE_H
#define OTEL_APM_NATIVE_H

#include <Python.h>

/* csrc/sdkviews.c: read_sdk_spans, SDK spans -> SpanViews (otel_apm/ingest/sdk.py). */
int apm_sdkviews_init(PyObject *module);

#endif
