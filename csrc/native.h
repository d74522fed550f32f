/* The parts of otel_apm._native: one init function per file, called from module.c. */
#ifndef OTEL_APM_NATIVE_H
#define OTEL_APM_NATIVE_H

#include <Python.h>

/* intake.c: Intake, the processor's common span hooks. */
int apm_intake_init(PyObject *module);
/* otlpviews.c: otlp_views, OTLP protobuf bytes -> SpanViews for the collector. */
int apm_otlpviews_init(PyObject *module);
/* csrc/sdkviews.c: read_sdk_spans, SDK spans -> SpanViews (otel_apm/ingest/sdk.py). */
int apm_sdkviews_init(PyObject *module);
/* One span's view, as read_sdk_spans(spans, service, *setup) reads each (setup: SpanReader.setup);
 * a new reference, or NULL with an exception set. */
PyObject *apm_sdk_view(PyObject *span, PyObject *service, PyObject *setup);
/* csrc/fields.c: the load-time check of the instance layout fields.h reads (no functions). */
int apm_fields_init(PyObject *module);
/* csrc/callsite.c: CallSiteRecorder, the twin of otel_apm.ingest.callsite.CallSite.record. */
int apm_callsite_init(PyObject *module);
/* csrc/traceindex.c: index_trace and by_fingerprint, the twins of the per-trace index and the
 * statement regrouping in otel_apm/detectors/summary.py and dbshape.py, and of the detectors'
 * per-trace steps (bounds, sequences, siblings, the query history's write). */
int apm_traceindex_init(PyObject *module);
/* csrc/sketch.c: sketch_add, tally_add_spans, tally_statements and statement_totals, the twins of
 * DDSketch.add, Tally.add_spans, rollup._tally_statements and metrics._add_statements. */
int apm_sketch_init(PyObject *module);

#endif
