"""The application line that issued a DB query or HTTP call, read off the stack at span start.

Instrumentations start client spans deep inside the ORM or HTTP library; the line a developer
must change is the first frame below them that is the application's own: not the standard
library, not an installed package, not otel_apm.  Each file is classified once; the walk itself
is a few attribute reads per frame (its cost is measured in bench/bench_callsite.py).

The line found is kept aside by span id (``CallSite.pending``), not written into the span: the
processor gives it to the span's view when it reads the span, and adds the code.* attributes to
the exported span only when the call was slow (APM_CODE_ATTRIBUTES_MIN_MS).  Three attributes on
every client span cost the OTLP exporter about 8 µs a span to encode, three times the rest of the
processor (bench/README.md, session 11); Sentry's query source is kept for slow queries alike.

:func:`recorder` picks the compiled twin of :meth:`CallSite.record` (csrc/callsite.c) when the
extension has it: it walks the interpreter's frames without making a frame object for each.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Callable
from types import CodeType, FrameType, ModuleType

from opentelemetry.sdk.trace import Span

import otel_apm
from otel_apm.contain import in_forked_children
from otel_apm.ingest.sdk import plain_attributes
from otel_apm.semconv import code_location

# semantic conventions 1.33+: the stable code.* names
CODE_FILE_PATH = "code.file.path"
CODE_LINE_NUMBER = "code.line.number"
CODE_FUNCTION_NAME = "code.function.name"

MAX_DEPTH = 128  # frames walked before giving up: a recursion must not make a span expensive
MAX_SITES = 4096  # application lines whose attributes are kept, past which the memo starts over
# Started client spans whose line waits to be read: far more than a process has open at once, so
# reaching it means spans that never end (or are never read); the waiting lines are then let go.
MAX_PENDING = 65536

# A call site: its code.* attributes and the same as the view's "path:line:function" (one object
# per line, shared by every span it starts).
Site = tuple[dict[str, str | int], str]


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        roots.add(user_site)
    roots.add(os.path.dirname(os.path.abspath(otel_apm.__file__)))
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots if r))


class CallSite:
    """Finds the first application frame on the calling thread's stack."""

    def __init__(self, callers: tuple[CodeType, ...] = ()) -> None:
        # The code of the functions that call record() on the SDK's behalf (the processor's
        # on_start): the walk starts below them, at the SDK's frame, however the SDK reached
        # record(), so MAX_DEPTH counts the same frames with or without a Python frame of ours.
        self.callers = callers
        self._roots = _library_roots()
        self._is_app: dict[str, bool] = {}
        # The attributes of each application call seen, so a loop's thousandth query costs a
        # lookup rather than a line-table decoding, a new dict and a name.  Keyed by the code
        # object's id, as hashing a code object hashes its bytecode and constants each time; the
        # entry holds the code object, so the id cannot be reused while it is remembered.
        # Bounded: call sites are few, but code built at run time could mint them without end.
        self._sites: dict[tuple[int, int], tuple[CodeType, Site]] = {}
        # The site of each started client span, by span id, until the processor reads the span.
        # A dict the compiled recorder writes into too: never rebound, only emptied.
        self.pending: dict[int, Site] = {}
        in_forked_children(self._forget_pending)

    def _forget_pending(self) -> None:
        """In a forked child: the parent's spans end in the parent, whose sites these are."""
        self.pending.clear()

    def is_app(self, filename: str) -> bool:
        known = self._is_app.get(filename)
        if known is None:
            known = self._is_app[filename] = self._classify(filename)
        return known

    def _classify(self, filename: str) -> bool:
        if not filename or filename.startswith("<"):  # <frozen importlib...>, <string>, <stdin>
            return False
        path = os.path.realpath(filename)
        if "site-packages" in path or "dist-packages" in path:
            return False
        return not path.startswith(self._roots)

    def _app_frame(self, frame: FrameType | None) -> FrameType | None:
        """The first application frame from ``frame`` up, within MAX_DEPTH frames."""
        is_app = self._is_app
        for _ in range(MAX_DEPTH):
            if frame is None:
                return None
            filename = frame.f_code.co_filename
            app = is_app.get(filename)
            if app is None:
                app = self.is_app(filename)
            if app:
                return frame
            frame = frame.f_back
        return None

    def find(self, frame: FrameType | None) -> tuple[str, int, str] | None:
        """(file, line, qualified function) of the first application frame from ``frame`` up."""
        found = self._app_frame(frame)
        if found is None:
            return None
        return found.f_code.co_filename, found.f_lineno, qualname(found.f_code)

    def site(self, frame: FrameType | None) -> Site | None:
        """The site of the first application frame from ``frame`` up; the same tuple for every
        call from one line, which callers never change."""
        found = self._app_frame(frame)
        if found is None:
            return None
        # Keyed by the instruction offset: f_lineno decodes the line table on every read, which
        # cost more than the rest of the walk (measured), while one offset is one line.
        code, key = found.f_code, (id(found.f_code), found.f_lasti)
        known = self._sites.get(key)
        if known is None:
            if len(self._sites) >= MAX_SITES:
                self._sites.clear()
            attrs: dict[str, str | int] = {
                CODE_FILE_PATH: code.co_filename,
                CODE_LINE_NUMBER: found.f_lineno,
                CODE_FUNCTION_NAME: qualname(code),
            }
            known = self._sites[key] = (code, (attrs, code_location(attrs) or ""))
        return known[1]

    def record(self, span: Span) -> None:
        """Keep in ``pending`` the site of the first application frame from the caller of
        ``record`` up (past it when it is one of ``callers``) for ``span``, being started, unless
        the instrumentation set code.* attributes itself (they are read as they are) or the span
        has ended."""
        if CODE_FILE_PATH not in plain_attributes(span) and span.is_recording():
            frame: FrameType | None = sys._getframe(1)
            if frame is not None and any(frame.f_code is code for code in self.callers):
                frame = frame.f_back
            found = self.site(frame)
            if found is not None:
                pending = self.pending
                if len(pending) >= MAX_PENDING:
                    pending.clear()
                pending[span.context.span_id] = found


def recorder(callsite: CallSite, compiled: ModuleType | None) -> Callable[[Span], None]:
    """``callsite.record``, or its C twin when ``compiled`` (:func:`otel_apm.native.native`) has
    one: it is built for the interpreters whose frame layout it knows (3.11)."""
    make = getattr(compiled, "CallSiteRecorder", None)
    if make is None:
        return callsite.record
    record: Callable[[Span], None] = make(callsite).record
    return record


def qualname(code: object) -> str:
    """The function's qualified name, as code.function.name and the CPU profiler show it."""
    name = getattr(code, "co_qualname", None)  # Python 3.11+: Class.method, not just method
    return name if isinstance(name, str) else str(getattr(code, "co_name", "?"))
