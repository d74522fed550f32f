"""The deployment files agree with each other, with their schemas and with the analyzer's config.

No Docker engine runs here, so nothing is started: these tests read docker-compose.yml,
collector_config/*.yaml, prometheus.yml and the Dockerfiles, and check what would otherwise only
fail at ``docker compose up``: a component used in a pipeline but never defined, a loadbalancing
exporter that does not route by trace ID or resolves a name no analyzer answers to, a port that
differs between the analyzer's config and the services that talk to it, a scrape target that is
not a service.

docker-compose.yml is validated against the Compose Specification's JSON Schema: a copy in
tests/testdata/schemas (so a clone needs nothing beside it), checked against the workplace's
``shared/schemas/compose-spec.json`` beside the repository (``../shared``) wherever that exists.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.metadata
import json
import re
import sys
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from conftest import in_ci, pyproject
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "collector_config"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ANALYZER_CONFIG = CONFIG_DIR / "otel-apm.yaml"
GATEWAY_CONFIG = CONFIG_DIR / "gateway.yaml"
DOWNSTREAM_CONFIG = CONFIG_DIR / "analyzer-downstream.yaml"
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus.yml"
ANALYZER_DOCKERFILE = "docker/Dockerfile.analyzer"
COMPOSE_SCHEMA = ROOT / "tests" / "testdata" / "schemas" / "compose-spec.json"
SHARED_COMPOSE_SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"

# Pipeline sections of an OpenTelemetry Collector config and where their components are defined;
# a connector is both an exporter (of one pipeline) and a receiver (of another).
PIPELINE_SECTIONS = {
    "receivers": ("receivers", "connectors"),
    "processors": ("processors",),
    "exporters": ("exporters", "connectors"),
}
COMPONENT_SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
SIGNALS = ("traces", "metrics", "logs", "profiles")
# The exporter's type name, and the name it has carried since the collector's snake_case rename.
LOADBALANCING_TYPES = ("loadbalancing", "load_balancing")
OTLP_EXPORTER_TYPES = ("otlp", "otlp_grpc")
ALL_INTERFACES = ("0.0.0.0", "::", "")


# -- loading -------------------------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently, so a second ``exporters:`` would hide the first). Keys brought in by a merge
    (``<<: *anchor``) may be overridden: that is what merges are for."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=StrictLoader)  # a SafeLoader


def yaml_files() -> list[Path]:
    return sorted([*CONFIG_DIR.glob("*.yaml"), *CONFIG_DIR.glob("*.yml"), COMPOSE_FILE])


def is_collector_config(doc: Any) -> TypeGuard[Mapping[str, Any]]:
    """An OpenTelemetry Collector config: a mapping with service.pipelines."""
    return (
        isinstance(doc, Mapping) and isinstance(doc.get("service"), Mapping) and "pipelines" in doc["service"]
    )


def collector_configs() -> list[Path]:
    """The OpenTelemetry Collector configs among the YAML files (for parametrizing: a file that
    does not parse is left out here and fails test_yaml_parses_... instead of the collection)."""
    found = []
    for path in yaml_files():
        try:
            if is_collector_config(load_yaml(path)):
                found.append(path)
        except yaml.YAMLError:
            continue
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE_FILE)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def analyzer() -> dict[str, Any]:
    doc = load_yaml(ANALYZER_CONFIG)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def gateway() -> dict[str, Any]:
    doc = load_yaml(GATEWAY_CONFIG)
    assert is_collector_config(doc)
    return dict(doc)


@pytest.fixture(scope="module")
def downstream() -> dict[str, Any]:
    doc = load_yaml(DOWNSTREAM_CONFIG)
    assert is_collector_config(doc)
    return dict(doc)


# -- small parsers -------------------------------------------------------------------------------


def split_host_port(endpoint: str) -> tuple[str, int]:
    """``host:port``, ``[::]:port`` or a URL with a port -> (host, port)."""
    text = endpoint if "://" in endpoint else "//" + endpoint
    parts = urlsplit(text)
    assert parts.port is not None, f"{endpoint!r} has no port"
    return parts.hostname or "", parts.port


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_s(value: str) -> float:
    """A Compose duration (``1m30s``, ``500ms``) in seconds."""
    assert _DURATION.sub("", value) == "" and value, f"not a Compose duration: {value!r}"
    return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(value))


# -- the compose model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigMount:
    service: str
    config: Path  # the file in the repository that the service runs with


def service_networks(service: Mapping[str, Any]) -> dict[str, list[str]]:
    """network -> aliases (a service without ``networks`` is on ``default``)."""
    networks = service.get("networks", ["default"])
    if isinstance(networks, list):
        return {name: [] for name in networks}
    return {name: list((spec or {}).get("aliases", [])) for name, spec in networks.items()}


def dns_names(compose: Mapping[str, Any], service_name: str) -> dict[str, set[str]]:
    """network -> every name that resolves to this service's containers there."""
    service = compose["services"][service_name]
    names = {service_name} | ({service["hostname"]} if "hostname" in service else set())
    return {net: names | set(aliases) for net, aliases in service_networks(service).items()}


def resolves_to(compose: Mapping[str, Any], name: str, from_service: str) -> set[str]:
    """The services whose containers answer to ``name`` on a network ``from_service`` is on."""
    networks = set(service_networks(compose["services"][from_service]))
    return {
        other
        for other in compose["services"]
        for net, names in dns_names(compose, other).items()
        if net in networks and name in names
    }


def config_mounts(compose: Mapping[str, Any]) -> Iterator[ConfigMount]:
    """Services started with ``--config <file>`` where the file is bind-mounted from the repository."""
    for name, service in compose["services"].items():
        command = service.get("command", [])
        args = command.split() if isinstance(command, str) else list(command)
        targets: list[str] = []
        for i, arg in enumerate(args):
            if arg.startswith(("--config=", "--config.file=")):
                targets.append(arg.split("=", 1)[1])
            elif arg in ("--config", "--config.file") and i + 1 < len(args):
                targets.append(args[i + 1])
        for volume in service.get("volumes", []):
            if isinstance(volume, Mapping) and volume.get("type") == "bind" and volume["target"] in targets:
                yield ConfigMount(name, (ROOT / volume["source"]).resolve())


def services_running(compose: Mapping[str, Any], config: Path) -> list[str]:
    return sorted({m.service for m in config_mounts(compose) if m.config == config.resolve()})


def analyzer_services(compose: Mapping[str, Any]) -> list[str]:
    return sorted(
        name
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), Mapping)
        and service["build"].get("dockerfile") == ANALYZER_DOCKERFILE
    )


def exposed_ports(service: Mapping[str, Any]) -> set[int]:
    """Container ports a service declares (``expose`` and the container side of ``ports``)."""
    ports = {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    for p in service.get("ports", []):
        container = p.get("target") if isinstance(p, Mapping) else str(p).split("/")[0].rsplit(":", 1)[-1]
        assert container is not None, f"{p!r} has no target"
        ports.add(int(container))
    return ports


# -- the collector-config model ------------------------------------------------------------------


def pipeline_problems(config: Mapping[str, Any]) -> list[str]:
    """What is wrong with a collector config's wiring: a component a pipeline names that its
    section does not define, a defined component no pipeline (or service.extensions) uses,
    a pipeline of an unknown signal, a pipeline without receivers or exporters."""
    problems: list[str] = []
    service = config.get("service") or {}
    pipelines = service.get("pipelines") or {}
    used: dict[str, set[str]] = {section: set() for section in COMPONENT_SECTIONS}
    if not pipelines:
        problems.append("service.pipelines is empty")
    for pipeline_id, pipeline in pipelines.items():
        if component_type(pipeline_id) not in SIGNALS:
            problems.append(f"pipeline {pipeline_id}: unknown signal (expected one of {', '.join(SIGNALS)})")
        pipeline = pipeline or {}
        for key in ("receivers", "exporters"):
            if not pipeline.get(key):
                problems.append(f"pipeline {pipeline_id}: no {key}")
        for key in pipeline:
            if key not in PIPELINE_SECTIONS:
                problems.append(f"pipeline {pipeline_id}: unknown key {key}")
        for key, sections in PIPELINE_SECTIONS.items():
            for component in pipeline.get(key) or []:
                where = [s for s in sections if component in (config.get(s) or {})]
                if not where:
                    problems.append(f"pipeline {pipeline_id}: {key} {component} is not defined")
                for section in where:
                    used[section].add(component)
    for extension in service.get("extensions") or []:
        if extension not in (config.get("extensions") or {}):
            problems.append(f"service.extensions: {extension} is not defined")
        used["extensions"].add(extension)
    for section in COMPONENT_SECTIONS:
        for component in config.get(section) or {}:
            if component not in used[section]:
                problems.append(f"{section}.{component} is defined but not used")
    return problems


def pipelines_using(config: Mapping[str, Any], section: str, component: str) -> list[str]:
    return sorted(
        pid
        for pid, p in config["service"]["pipelines"].items()
        if component in ((p or {}).get(section) or [])
    )


def components_of_type(config: Mapping[str, Any], section: str, types: tuple[str, ...]) -> dict[str, Any]:
    return {
        cid: spec or {} for cid, spec in (config.get(section) or {}).items() if component_type(cid) in types
    }


def otlp_receiver_ports(config: Mapping[str, Any]) -> dict[str, set[int]]:
    """protocol (grpc, http) -> ports of the config's otlp receivers (defaults 4317, 4318)."""
    ports: dict[str, set[int]] = {"grpc": set(), "http": set()}
    defaults = {"grpc": 4317, "http": 4318}
    for spec in components_of_type(config, "receivers", ("otlp",)).values():
        for protocol, settings in (spec.get("protocols") or {}).items():
            endpoint = (settings or {}).get("endpoint")
            ports[protocol].add(split_host_port(endpoint)[1] if endpoint else defaults[protocol])
    return ports


def metrics_ports(config: Mapping[str, Any]) -> set[int]:
    """Ports a collector serves Prometheus metrics on: prometheus exporters and pull readers."""
    ports = {
        split_host_port(spec["endpoint"])[1]
        for spec in components_of_type(config, "exporters", ("prometheus",)).values()
    }
    telemetry_metrics = ((config.get("service") or {}).get("telemetry") or {}).get("metrics") or {}
    for reader in telemetry_metrics.get("readers") or []:
        prometheus = (((reader or {}).get("pull") or {}).get("exporter") or {}).get("prometheus")
        if prometheus:
            ports.add(int(prometheus["port"]))
    return ports


# -- every file parses -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_to_a_mapping_without_duplicate_keys(path: Path) -> None:
    doc = load_yaml(path)
    assert isinstance(doc, dict) and doc, f"{path.name}: expected a non-empty mapping"


def test_strict_loader_refuses_duplicate_keys_and_allows_merge_overrides() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'exporters'"):
        yaml.load("exporters: {a: 1}\nexporters: {b: 2}\n", Loader=StrictLoader)
    merged = yaml.load("base: &b {x: 1, y: 2}\nthing: {<<: *b, y: 3}\n", Loader=StrictLoader)
    assert merged["thing"] == {"x": 1, "y": 3}


def test_the_expected_collector_configs_are_checked() -> None:
    found = {p.name for p in collector_configs()}
    assert {GATEWAY_CONFIG.name, DOWNSTREAM_CONFIG.name} <= found, found
    assert ANALYZER_CONFIG.name not in found  # otel-apm's own schema, not a collector's


# -- docker-compose.yml against the Compose Specification ------------------------------------------


def test_the_schema_copy_matches_the_shared_schema() -> None:
    if not SHARED_COMPOSE_SCHEMA.is_file():
        pytest.skip(f"no shared schema at {SHARED_COMPOSE_SCHEMA} to compare the copy with")
    assert COMPOSE_SCHEMA.read_bytes() == SHARED_COMPOSE_SCHEMA.read_bytes()


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    # The file is draft-07 (shared/schemas/README.md), but its $schema URI lacks the "#" that
    # jsonschema.validators.validator_for() matches on, which would then pick the latest draft.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_spec(
    compose_validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    errors = sorted(compose_validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_compose_schema_rejects_what_compose_would(
    compose_validator: jsonschema.protocols.Validator, compose: dict[str, Any]
) -> None:
    """The schema really is enforced: an unknown service key, a network option that does not
    exist and a duration written as a number are errors."""
    broken = copy.deepcopy(compose)
    broken["services"]["otel-apm-1"]["replica"] = 2
    assert not compose_validator.is_valid(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["otel-apm-1"]["networks"]["apm"]["alias"] = ["otel-apm"]
    assert not compose_validator.is_valid(broken)
    broken = copy.deepcopy(compose)
    broken["services"]["otel-apm-1"]["stop_grace_period"] = 30
    assert not compose_validator.is_valid(broken)


def test_compose_bind_mounts_and_build_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if isinstance(volume, Mapping) and volume.get("type") == "bind":
                assert (ROOT / volume["source"]).is_file(), (
                    f"{name}: bind source {volume['source']} is missing"
                )
        build = service.get("build")
        if isinstance(build, Mapping):
            context = ROOT / build.get("context", ".")
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"


def test_services_depend_only_on_services_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown service {dependency}"


# -- the collector configs' wiring ---------------------------------------------------------------


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: p.name)
def test_collector_pipelines_use_exactly_the_defined_components(path: Path) -> None:
    assert pipeline_problems(load_yaml(path)) == []


def test_pipeline_check_finds_undefined_and_unused_components(gateway: dict[str, Any]) -> None:
    broken = copy.deepcopy(gateway)
    broken["service"]["pipelines"]["traces"]["exporters"].append("otlp/nowhere")
    broken["processors"]["attributes/unused"] = {"actions": []}
    broken["service"]["pipelines"]["spans"] = {"receivers": ["otlp"], "exporters": ["loadbalancing"]}
    problems = pipeline_problems(broken)
    assert "pipeline traces: exporters otlp/nowhere is not defined" in problems
    assert "processors.attributes/unused is defined but not used" in problems
    assert any(p.startswith("pipeline spans: unknown signal") for p in problems)


@pytest.mark.parametrize("path", collector_configs(), ids=lambda p: p.name)
def test_collector_receivers_listen_on_every_interface(path: Path) -> None:
    """Since collector 0.104 a receiver without an endpoint listens on localhost only: in a
    container, nothing else could reach it. Every otlp receiver states 0.0.0.0."""
    config = load_yaml(path)
    receivers = components_of_type(config, "receivers", ("otlp",))
    assert receivers
    for cid, spec in receivers.items():
        for protocol, settings in (spec.get("protocols") or {}).items():
            endpoint = (settings or {}).get("endpoint")
            assert endpoint, f"{cid}.protocols.{protocol}: no endpoint (the default is localhost)"
            assert split_host_port(endpoint)[0] in ALL_INTERFACES, f"{cid}.{protocol} listens on {endpoint}"


# -- the gateway spreads traces over the analyzers by trace ID -----------------------------------


def test_gateway_routes_traces_by_trace_id_over_dns(gateway: dict[str, Any]) -> None:
    balancers = components_of_type(gateway, "exporters", LOADBALANCING_TYPES)
    assert len(balancers) == 1, balancers
    ((cid, spec),) = balancers.items()
    assert spec.get("routing_key") == "traceID"
    assert set(spec["protocol"]) == {"otlp"}, "OTLP is the exporter's only protocol"
    otlp = spec["protocol"]["otlp"] or {}
    assert "endpoint" not in otlp, "the exporter sets the endpoint per backend"
    assert otlp.get("tls", {}).get("insecure") is True, "the analyzers serve plain gRPC in compose"
    assert set(spec["resolver"]) == {"dns"}, "one resolver, dns"
    assert spec["resolver"]["dns"].get("hostname")
    # Every traces pipeline goes to the analyzers; traceID routing is not for metrics.
    traces = [pid for pid in gateway["service"]["pipelines"] if component_type(pid) == "traces"]
    assert traces and pipelines_using(gateway, "exporters", cid) == sorted(traces)


def test_gateway_dns_name_resolves_to_every_analyzer_and_nothing_else(
    gateway: dict[str, Any], compose: dict[str, Any]
) -> None:
    ((spec),) = components_of_type(gateway, "exporters", LOADBALANCING_TYPES).values()
    hostname = spec["resolver"]["dns"]["hostname"]
    analyzers = analyzer_services(compose)
    assert len(analyzers) >= 2, f"a load balancer over {analyzers} balances nothing"
    (gateway_service,) = services_running(compose, GATEWAY_CONFIG)
    for name in analyzers:
        aliases = {a for aliases in service_networks(compose["services"][name]).values() for a in aliases}
        assert hostname in aliases, f"{name} lacks the network alias {hostname!r}"
    assert resolves_to(compose, hostname, gateway_service) == set(analyzers)


def test_gateway_dns_port_is_the_analyzers_grpc_port(
    gateway: dict[str, Any], analyzer: dict[str, Any]
) -> None:
    ((spec),) = components_of_type(gateway, "exporters", LOADBALANCING_TYPES).values()
    port = spec["resolver"]["dns"].get("port", "4317")  # the exporter's documented default
    _, grpc_port = split_host_port(analyzer["receivers"]["grpc"]["endpoint"])
    assert int(port) == grpc_port


def test_gateway_batch_timeout_is_well_under_the_assembly_idle_timeout(
    gateway: dict[str, Any], analyzer: dict[str, Any]
) -> None:
    """Spans a batch holds back arrive late at the analyzer: the hold must be much shorter than
    the idle time after which the analyzer judges a trace complete."""
    idle_s = float(analyzer["assembly"]["idle_timeout_s"])
    for cid, spec in components_of_type(gateway, "processors", ("batch",)).items():
        timeout = duration_s(str(spec.get("timeout", "200ms")))
        assert timeout * 4 <= idle_s, f"{cid}.timeout {timeout}s vs idle_timeout_s {idle_s}s"


# -- the analyzers, their config and where they forward ------------------------------------------


def test_analyzer_services_run_the_analyzer_config(compose: dict[str, Any]) -> None:
    analyzers = analyzer_services(compose)
    assert analyzers and services_running(compose, ANALYZER_CONFIG) == analyzers


def test_analyzer_config_states_the_container_endpoints(analyzer: dict[str, Any]) -> None:
    """The defaults (localhost) are right for a laptop and wrong in a container: the file says it."""
    for key in ("grpc", "http"):
        host, _ = split_host_port(analyzer["receivers"][key]["endpoint"])
        assert host in ALL_INTERFACES, f"receivers.{key}.endpoint"
    host, _ = split_host_port(analyzer["telemetry"]["endpoint"])
    assert host in ALL_INTERFACES, "telemetry.endpoint"


def test_analyzer_ports_are_exposed(compose: dict[str, Any], analyzer: dict[str, Any]) -> None:
    ports = {
        split_host_port(analyzer["receivers"]["grpc"]["endpoint"])[1],
        split_host_port(analyzer["receivers"]["http"]["endpoint"])[1],
        split_host_port(analyzer["telemetry"]["endpoint"])[1],
    }
    for name in analyzer_services(compose):
        assert ports <= exposed_ports(compose["services"][name]), name
    dockerfile = (ROOT / ANALYZER_DOCKERFILE).read_text(encoding="utf-8")
    exposed = {
        int(p) for line in dockerfile.splitlines() if line.startswith("EXPOSE") for p in line.split()[1:]
    }
    assert ports <= exposed


def test_analyzer_forwards_to_the_downstream_collectors_otlp_receiver(
    analyzer: dict[str, Any], compose: dict[str, Any], downstream: dict[str, Any]
) -> None:
    endpoint = analyzer["downstream"]["endpoint"]
    protocol = analyzer["downstream"]["protocol"]
    host, port = split_host_port(endpoint)
    downstream_services = services_running(compose, DOWNSTREAM_CONFIG)
    assert len(downstream_services) == 1
    for name in analyzer_services(compose):
        assert resolves_to(compose, host, name) == set(downstream_services), f"{host} from {name}"
    assert port in otlp_receiver_ports(downstream)["grpc" if protocol == "grpc" else "http"]


def test_analyzer_stop_grace_period_outlasts_its_drain(
    compose: dict[str, Any], analyzer: dict[str, Any]
) -> None:
    """docker stop sends SIGTERM, then SIGKILL after stop_grace_period (10 s by default): the
    analyzer's drain (shutdown.timeout_s) must fit, or what it holds is lost."""
    drain_s = float(analyzer["shutdown"]["timeout_s"])
    for name in analyzer_services(compose):
        grace = compose["services"][name].get("stop_grace_period", "10s")
        assert duration_s(grace) > drain_s, (
            f"{name}: stop_grace_period {grace} vs shutdown.timeout_s {drain_s}"
        )


def test_analyzer_config_passes_the_projects_validation(analyzer: dict[str, Any]) -> None:
    """otel-apm's own loader accepts the file and reads the values the other files rely on."""
    try:
        from otel_apm.collector.config import load_config
    except ImportError as exc:  # only while the collector is being written; never in CI
        reason = f"otel_apm.collector.config.load_config is not importable: {exc}"
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    config = load_config(str(ANALYZER_CONFIG), environ={})
    assert config.receivers.grpc.endpoint == analyzer["receivers"]["grpc"]["endpoint"]
    assert config.receivers.http.endpoint == analyzer["receivers"]["http"]["endpoint"]
    assert config.telemetry.endpoint == analyzer["telemetry"]["endpoint"]
    assert config.downstream.protocol == analyzer["downstream"]["protocol"]
    assert split_host_port(str(config.downstream.endpoint)) == split_host_port(
        analyzer["downstream"]["endpoint"]
    )
    assert config.shutdown.timeout_s == analyzer["shutdown"]["timeout_s"]
    assert config.assembly.idle_timeout_s == analyzer["assembly"]["idle_timeout_s"]
    for key, value in analyzer.get("analysis", {}).items():
        assert getattr(config.analysis, key) == value


# -- every OTLP hop lands on a service that listens there ----------------------------------------


def otlp_hops(compose: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(service, what, endpoint) for every OTLP exporter in the collector configs compose runs,
    and every OTEL_EXPORTER_OTLP_ENDPOINT in compose environments."""
    for mount in config_mounts(compose):
        config = load_yaml(mount.config)
        if not is_collector_config(config):
            continue
        for cid, spec in components_of_type(config, "exporters", OTLP_EXPORTER_TYPES).items():
            yield mount.service, f"{mount.config.name} {cid}", spec["endpoint"]
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, Mapping) and "OTEL_EXPORTER_OTLP_ENDPOINT" in environment:
            yield name, "OTEL_EXPORTER_OTLP_ENDPOINT", str(environment["OTEL_EXPORTER_OTLP_ENDPOINT"])


def test_every_otlp_endpoint_is_a_service_listening_on_that_port(compose: dict[str, Any]) -> None:
    hops = list(otlp_hops(compose))
    assert len(hops) >= 4, hops  # gateway -> downstream, downstream -> jaeger, shop and storefront -> gateway
    configs = {m.service: m.config for m in config_mounts(compose)}
    for source, what, endpoint in hops:
        host, port = split_host_port(endpoint)
        targets: Collection[str | None] = resolves_to(compose, host, source) or {None}
        (target,) = targets
        assert target is not None, f"{source} ({what}): {host} is no service on its networks"
        config = load_yaml(configs[target]) if target in configs else None
        if is_collector_config(config):
            assert port in otlp_receiver_ports(config)["grpc"], f"{source} ({what}) -> {target}:{port}"
        else:
            assert port in exposed_ports(compose["services"][target]), f"{source} ({what}) -> {target}:{port}"


def test_apps_export_to_the_gateway(compose: dict[str, Any], gateway: dict[str, Any]) -> None:
    (gateway_service,) = services_running(compose, GATEWAY_CONFIG)
    apps = [(s, e) for s, what, e in otlp_hops(compose) if what == "OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert apps
    for source, endpoint in apps:
        host, port = split_host_port(endpoint)
        assert resolves_to(compose, host, source) == {gateway_service}, source
        assert port in otlp_receiver_ports(gateway)["grpc"]


# -- Prometheus scrapes what exists ----------------------------------------------------------------


def scrape_targets() -> list[tuple[str, str]]:
    config = load_yaml(PROMETHEUS_CONFIG)
    return [
        (job["job_name"], target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]


def test_prometheus_runs_with_this_file(compose: dict[str, Any]) -> None:
    assert len(services_running(compose, PROMETHEUS_CONFIG)) == 1


def test_prometheus_targets_are_services_and_their_metrics_ports(
    compose: dict[str, Any], analyzer: dict[str, Any]
) -> None:
    (prometheus,) = services_running(compose, PROMETHEUS_CONFIG)
    serves: dict[str, set[int]] = {}
    for mount in config_mounts(compose):
        config = load_yaml(mount.config)
        if is_collector_config(config):
            serves[mount.service] = metrics_ports(config)
    telemetry_port = split_host_port(analyzer["telemetry"]["endpoint"])[1]
    for name in analyzer_services(compose):
        serves[name] = {telemetry_port}
    targets = scrape_targets()
    scraped: set[str] = set()
    for job, target in targets:
        host, port = split_host_port(target)
        services: Collection[str | None] = resolves_to(compose, host, prometheus) or {None}
        (service,) = services
        assert service is not None, f"job {job}: {host} is no service Prometheus can reach"
        assert port in serves.get(service, set()), f"job {job}: {service} serves no metrics on {port}"
        scraped.add(service)
    missing = set(analyzer_services(compose)) | set(services_running(compose, DOWNSTREAM_CONFIG))
    assert missing <= scraped, f"not scraped: {missing - scraped}"


# -- Dockerfiles copy what exists ----------------------------------------------------------------


DOCKERFILES = sorted(p for p in (ROOT / "docker").glob("Dockerfile*") if p.suffix != ".dockerignore")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_are_in_its_build_context(dockerfile: Path) -> None:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    allowed = (
        {
            line[1:].rstrip("/")
            for line in ignore.read_text(encoding="utf-8").splitlines()
            if line.startswith("!")
        }
        if ignore.is_file()
        else None
    )
    copies = [
        line.split()[1:-1]
        for line in dockerfile.read_text(encoding="utf-8").splitlines()
        if line.startswith("COPY ")
    ]
    assert copies
    for sources in copies:
        for source in sources:
            if source.startswith("--"):
                continue
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
            if allowed is not None:
                parts = PurePosixPath(source).parts
                assert any(str(PurePosixPath(*parts[: i + 1])) in allowed for i in range(len(parts))), (
                    f"{dockerfile.name}: {source} is excluded by {ignore.name}"
                )


# -- the analyzer image has what the collector imports --------------------------------------------


def imported_modules(package: Path, skip: set[str]) -> dict[str, set[str]]:
    """Third-party modules imported anywhere in ``package`` (except the ``skip`` subpackages)
    -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        if skip & set(path.relative_to(package).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("__future__", package.name):
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions ``pip install`` of these requirements brings, by the installed metadata
    (extras not asked for are left out)."""
    seen: set[str] = set()
    todo = list(requirements)
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # then its own deps are unknown
            todo.extend(importlib.metadata.requires(name) or [])
    return seen


def providers(module: str) -> set[str]:
    """The installed distributions that ship ``module`` (namespace packages such as
    ``opentelemetry`` are shared: only those with files under the module's path count)."""
    top, path = module.split(".")[0], module.replace(".", "/")
    return {
        canonicalize_name(dist)
        for dist in importlib.metadata.packages_distributions().get(top, [])
        if any(
            str(f).startswith(path + "/") or str(f) == path + ".py"
            for f in importlib.metadata.files(dist) or []
        )
    }


def test_analyzer_image_installs_every_module_the_collector_imports() -> None:
    """The analyzer image installs the project with the extras its Dockerfile names
    (``pip install ".[postgres]"``): a module the package imports (the demo aside, which needs the
    demo extra) that is not brought by [project].dependencies and those extras is missing in the
    image, and ``otel-apm collector`` fails there (PyYAML, for --config, is the one to watch)."""
    project = pyproject()["project"]
    dockerfile = (ROOT / ANALYZER_DOCKERFILE).read_text(encoding="utf-8")
    installed = re.search(r'^RUN pip install "?\.(?:\[([a-z,]+)\])?"?(\s|$)', dockerfile, re.MULTILINE)
    assert installed, "the image installs `.`"
    extras = installed.group(1).split(",") if installed.group(1) else []
    image = requirement_closure(
        [*project["dependencies"], *(r for e in extras for r in project["optional-dependencies"][e])]
    )
    missing = {
        module: sorted(files)
        for module, files in imported_modules(ROOT / "otel_apm", skip={"demo"}).items()
        if not providers(module) & image
    }
    assert not missing, f"imported, but not installed by [project].dependencies: {missing}"
