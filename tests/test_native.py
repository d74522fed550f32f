"""otel_apm._native, the compiled hot paths: built by the install, and switchable off."""

from __future__ import annotations

from conftest import require_native

from otel_apm import APMConfig
from otel_apm.native import native


def test_the_install_built_the_extension() -> None:
    module = require_native()  # under CI=true a missing build fails here
    assert module.__name__ == "otel_apm._native"


def test_native_enabled_false_runs_the_python_versions() -> None:
    require_native()
    assert native(APMConfig(native_enabled=False).native_enabled) is None
    assert native(APMConfig().native_enabled) is not None
