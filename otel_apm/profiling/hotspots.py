"""``cpu_hot_spot`` findings: the functions an endpoint's CPU samples are found in, themselves.

Self time (the innermost frame), not inclusive time: every request handler "contains" all of its
endpoint's CPU, while the function whose own code runs is the one to change.  When that
function is a library's (``json.encoder``, the ORM), the finding also names the application
function that called it, the one a developer can change.
"""

from __future__ import annotations

from collections import Counter

from otel_apm.config import APMConfig
from otel_apm.detectors.base import Finding, make_fingerprint, severity_for
from otel_apm.ingest.callsite import CallSite
from otel_apm.profiling.cpu import Endpoint, Frame, Profile, Stack

TYPE = "cpu_hot_spot"


def hot_spots(profile: Profile, config: APMConfig, callsite: CallSite) -> list[Finding]:
    """The findings of one period, hottest first within each endpoint."""
    findings: list[Finding] = []
    minutes = max(profile.end_s - profile.start_s, 1e-9) / 60
    for endpoint, samples in profile.samples.items():
        total = sum(samples.values())
        if total < config.cpu_hot_spot_min_samples:
            continue
        own: Counter[Frame] = Counter()
        lines: Counter[tuple[Frame, int]] = Counter()
        callers: Counter[tuple[Frame, Frame]] = Counter()
        for (stack, line), n in samples.items():
            leaf = stack[-1]
            own[leaf] += n
            lines[(leaf, line)] += n
            caller = _app_caller(stack, callsite)
            if caller is not None and caller != leaf:
                callers[(leaf, caller)] += n
        for function, n in own.most_common():
            share = n / total
            if share < config.cpu_hot_spot_share:
                break
            line = max((ln for (f, ln) in lines if f == function), key=lambda ln: lines[(function, ln)])
            caller = max(
                (c for (f, c) in callers if f == function),
                key=lambda c: callers[(function, c)],
                default=None,
            )
            findings.append(
                _finding(profile, config, endpoint, function, line, caller, n, total, share, minutes)
            )
    return findings


def _app_caller(stack: Stack, callsite: CallSite) -> Frame | None:
    """The innermost frame of the stack that is the application's own code."""
    for frame in reversed(stack):
        if callsite.is_app(frame.file):
            return frame
    return None


def _finding(
    profile: Profile,
    config: APMConfig,
    endpoint: Endpoint,
    function: Frame,
    line: int,
    caller: Frame | None,
    n: int,
    total: int,
    share: float,
    minutes: float,
) -> Finding:
    service, name = endpoint
    cpu_ms = n * profile.sample_period_s * 1000
    requests = profile.requests.get(endpoint, 0)
    impact_ms = cpu_ms / requests if requests else 0.0
    severity = severity_for(share, config.cpu_hot_spot_share, config.critical_factor)
    if impact_ms >= config.critical_impact_ms:  # as for every finding: the time a request loses
        severity = "critical"
    evidence: dict[str, str | int | float | bool | tuple[str, ...]] = {
        "samples": n,
        "endpoint_samples": total,
        "share": round(share, 4),
        "sample_hz": round(1 / profile.sample_period_s, 2),
        "period_s": round(profile.end_s - profile.start_s, 3),
        "requests": requests,
    }
    if caller is not None:
        # The line is the function's first: stacks keep lines only for their innermost frame.
        evidence["app_function"] = f"{caller.file}:{caller.line}:{caller.function}"
    return Finding(
        type=TYPE,
        title=f"{function.function} takes {share:.0%} of the CPU sampled in {name}",
        severity=severity,
        fingerprint=make_fingerprint(TYPE, service, name, function.file, function.function),
        service=service,
        endpoint=name,
        trace_id=0,
        span_ids=(),
        count=n,
        total_duration_ms=round(cpu_ms, 3),
        max_duration_ms=0.0,
        recommendation=(
            f"{name} spends {share:.0%} of its CPU time in {function.function} itself: make it do "
            "less per request (a better algorithm, caching its result, moving the work off the "
            "request path); the endpoint's flame graph shows who calls it"
        ),
        services=(service,),
        evidence=evidence,
        impact_ms=round(impact_ms, 3),
        rate_per_min=round(requests / minutes, 3),
        code_location=f"{function.file}:{line}:{function.function}",
    )
