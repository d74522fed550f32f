"""Emission: findings and per-trace measures leave the analyzer through Emitters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from otel_apm.detectors.base import Finding
from otel_apm.model import Trace


class Emitter(Protocol):
    """Told of every analyzed trace, with or without findings (metrics need them all)."""

    def emit(self, trace: Trace, findings: Sequence[Finding]) -> None: ...
