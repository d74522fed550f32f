"""Runtime profiling: what the process as a whole does (memory, CPU), beside what the traces say.

Its findings are about the process, not one trace: ``trace_id`` 0, no spans, endpoint
``process``; they leave through the processor's emitters (``APMSpanProcessor.emit_findings``).
"""
