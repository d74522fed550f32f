"""The compiled hot paths (``otel_apm._native``, built from csrc/), when they are there.

Each compiled function has a Python twin that stays the reference: the fallback when the
extension was not built (no C compiler at install time) or ``APM_NATIVE_ENABLED=false`` turns it
off, and what the tests compare it with.  Components ask :func:`native` when they are built,
never at import time.
"""

from __future__ import annotations

from types import ModuleType


def native(enabled: bool = True) -> ModuleType | None:
    """The extension module, or None when it is not built or ``enabled`` (the config's
    ``native_enabled``) is False."""
    if not enabled:
        return None
    try:
        from otel_apm import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native  # type: ignore[no-any-return]
