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
# Ctrl-C again, as a person would, when the program goes on after one: a KeyboardInterrupt that
# lands in a finalizer or a broad ``except`` is lost.  Then SIGTERM, so the command ends.
_INTERRUPTS = 3
_INTERRUPT_GRACE_S = 5.0
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
        status = _interrupt(proc)
    except KeyboardInterrupt:  # Ctrl-C reached the program too: let it write its files
        status = proc.wait()
    written = sorted(p for p in Path(out).glob("*") if p.name.endswith(tuple(SUFFIXES.values())))
    if written:
        print(f"otel-apm: {len(written)} flame graph files in {out}", file=sys.stderr)
    else:
        print(f"otel-apm: no CPU samples were taken, nothing written to {out}", file=sys.stderr)
    return status


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    """Stop the program as Ctrl-C does, so it writes its files; 0 once it has stopped."""
    for _ in range(_INTERRUPTS):
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=_INTERRUPT_GRACE_S)
            return 0
        except subprocess.TimeoutExpired:
            continue
    proc.terminate()
    proc.wait()
    print("otel-apm: the program ignored Ctrl-C; stopped it with SIGTERM", file=sys.stderr)
    return 0
