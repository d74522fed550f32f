"""otel_apm._native, the compiled hot paths: built by the install, and switchable off."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pyproject, require_native

from otel_apm import APMConfig
from otel_apm.native import native


def test_the_install_built_the_extension() -> None:
    module = require_native()  # under CI=true a missing build fails here
    assert module.__name__ == "otel_apm._native"


def test_native_enabled_false_runs_the_python_versions() -> None:
    require_native()
    assert native(APMConfig(native_enabled=False).native_enabled) is None
    assert native(APMConfig().native_enabled) is not None


# -- every CPython the package supports ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SUPPORTED_MINORS = range(10, 14)  # requires-python >= 3.10; csrc is checked against 3.10-3.13


def other_pythons() -> dict[str, Path]:
    """An interpreter of each supported version other than this one found here, on PATH or
    under pyenv, that runs (a pyenv shim of a version not selected does not)."""
    found: dict[str, Path] = {}
    for minor in SUPPORTED_MINORS:
        version = f"3.{minor}"
        if sys.version_info[:2] == (3, minor):
            continue
        on_path = shutil.which(f"python{version}")
        candidates = [Path(on_path)] if on_path else []
        candidates += sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))
        for candidate in candidates:
            probe = subprocess.run([candidate, "-c", "import sysconfig"], capture_output=True)
            if probe.returncode == 0:
                found[version] = candidate
                break
    return found


@pytest.mark.parametrize("version", [f"3.{m}" for m in SUPPORTED_MINORS])
def test_the_extension_compiles_and_links_for_every_supported_python(version: str, tmp_path: Path) -> None:
    """Built by another version, the extension may call what that version does not have: 3.10
    has no public PyFloat_Pack8 (the module built, then failed to import), 3.13 no longer
    declares _Py_HashBytes.  Each version found here compiles pyproject.toml's sources with its
    flags and links them with no symbol left undefined against that version's libpython."""
    if sys.version_info[:2] == tuple(int(p) for p in version.split(".")):
        python = Path(sys.executable)  # the install built it already; checked the same way
    else:
        pythons = other_pythons()
        if version not in pythons:
            pytest.skip(f"no Python {version} found on PATH or under ~/.pyenv/versions")
        python = pythons[version]
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    paths = json.loads(
        subprocess.run(
            [
                python,
                "-c",
                "import json, sysconfig; v = sysconfig.get_config_var; print(json.dumps([sysconfig."
                "get_paths()['include'], v('LIBDIR'), v('LDVERSION'), v('Py_ENABLE_SHARED')]))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    include, libdir, ldversion, shared = paths
    if not shared:
        pytest.skip(f"Python {version} at {python} has no shared libpython to link against")
    (extension,) = pyproject()["tool"]["setuptools"]["ext-modules"]
    result = subprocess.run(
        [
            compiler,
            "-shared",
            "-fPIC",
            "-O0",
            *extension["extra-compile-args"],
            f"-I{include}",
            *[str(ROOT / source) for source in extension["sources"]],
            f"-L{libdir}",
            f"-lpython{ldversion}",
            "-lm",
            "-Wl,--no-undefined",
            "-o",
            str(tmp_path / "_native.so"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
