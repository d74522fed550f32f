"""``otel-apm profile``: run a Python program with the CPU profiler on and keep its flame graphs.

The program runs under ``opentelemetry-instrument`` with our configurator, as in production, so
its instrumented frameworks make the server spans that tell the profiler each sample's endpoint.
The whole run is one profile period: the processor's shutdown at exit writes the files.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from otel_apm.config import APMConfig, ConfigError
from otel_apm.profiling.flamegraph import SUFFIXES

# One period for the whole run (the longest the setting's int keeps meaningful, ~24 days).
_WHOLE_RUN_MS = 2**31 - 1
# Not sent anywhere unless asked: the program's findings show on the console.
_EXPORTERS = ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_LOGS_EXPORTER")
# A one-off profile wants detail from a short run more than the always-on default's low cost.
_ONE_OFF_HZ = 100.0


def profile_program(
    command: Sequence[str], out: str, formats: str | None, hz: float | None, duration_s: float | None
) -> int:
    """Run ``python command...`` profiled; after ``duration_s`` it is interrupted (SIGINT, as
    Ctrl-C) so that a server stops and writes its files.  Returns the program's exit status,
    0 when it was stopped for the duration."""
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("otel-apm profile: name the program, e.g. otel-apm profile -- app.py --port 8000")
    env = {
        **os.environ,
        "APM_PROFILING_ENABLED": "true",
        "APM_PROFILING_DIR": os.path.abspath(out),
        "APM_PROFILING_INTERVAL": str(_WHOLE_RUN_MS),
    }
    if hz is not None:
        env["APM_PROFILING_SAMPLE_HZ"] = str(hz)
    else:
        env.setdefault("APM_PROFILING_SAMPLE_HZ", str(_ONE_OFF_HZ))
    if formats is not None:
        env["APM_PROFILING_FORMATS"] = formats
    env.setdefault("OTEL_PYTHON_CONFIGURATOR", "otel_apm")
    for name in _EXPORTERS:
        env.setdefault(name, "none")
    APMConfig.from_env(env)  # a bad setting stops here, naming its variable
    instrument = shutil.which("opentelemetry-instrument", path=os.path.dirname(sys.executable))
    if instrument is None:
        raise ConfigError("otel-apm profile: opentelemetry-instrument is not installed beside this Python")
    proc = subprocess.Popen([instrument, sys.executable, *command], env=env)
    try:
        status = proc.wait(timeout=duration_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        status = 0
    except KeyboardInterrupt:  # Ctrl-C reached the program too: let it write its files
        status = proc.wait()
    written = sorted(p for p in Path(out).glob("*") if p.name.endswith(tuple(SUFFIXES.values())))
    if written:
        print(f"otel-apm: {len(written)} flame graph files in {out}", file=sys.stderr)
    else:
        print(f"otel-apm: no CPU samples were taken, nothing written to {out}", file=sys.stderr)
    return status
