"""What the in-process CPU profiler does with each period: hot-spot findings through the
processor's emitters, flame graph files into ``APM_PROFILING_DIR`` when it is set."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding
from otel_apm.ingest.callsite import CallSite
from otel_apm.profiling.cpu import CpuProfiler, Profile
from otel_apm.profiling.flamegraph import FlameGraphWriter
from otel_apm.profiling.hotspots import hot_spots


def start_cpu_profiler(config: APMConfig, emit_findings: Callable[[Sequence[Finding]], None]) -> CpuProfiler:
    """A running profiler reporting every ``APM_PROFILING_INTERVAL`` and once more at ``stop``."""
    callsite = CallSite()
    writer = None
    if config.profiling_dir:
        writer = FlameGraphWriter(config.profiling_dir, config.profiling_formats)

    def report(profile: Profile) -> None:
        if not profile.samples:
            return
        if writer is not None:
            writer.write(profile)
        findings = hot_spots(profile, config, callsite)
        if findings:
            emit_findings(findings)

    profiler = CpuProfiler(config, report)
    profiler.start()
    return profiler
