"""The compose stack (`compose/`) agrees with itself and with Prism. No Docker
runs here, so what can be checked without it is checked: every service,
volume and file the compose file refers to exists; the ports in Prism's
config are the ports compose publishes, Prometheus scrapes, the collector
receives on and Grafana's data source reads from; and every PromQL query of
the Grafana dashboard names series and labels that a real `prism`, running
the stack's own config on real Redis, NATS JetStream and the test OIDC
issuer, exposes after a little traffic (parsed with the Prometheus project's
text-format parser). The shipped config also starts a real `prism` as it is,
tracing keys included (collector and backends unreachable here; Prism
connects to them lazily)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import REPO, NatsServer, PrismProcess, RedisServer, _free_port
from oidc_issuer import OidcIssuer, client_credentials_token
from prometheus_client.parser import text_string_to_metric_families

from prism_client import PrismClient

COMPOSE = REPO / "compose"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"
PRISM_TOML = COMPOSE / "prism.toml"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "prism.json"

#: Labels Prometheus adds to every series it scrapes (the target's, not Prism's).
TARGET_LABELS = {"instance", "job"}


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    return document


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    assert {"prism", "oidc", "redis", "nats", "otel-collector", "jaeger", "prometheus", "grafana"} <= set(found)
    return found


@pytest.fixture(scope="module")
def prism_config() -> dict[str, Any]:
    return tomllib.loads(PRISM_TOML.read_text())


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def port_of(address: str) -> int:
    """The port of `host:port` or of a URL."""
    if "://" in address:
        port = urlsplit(address).port
        assert port is not None, address
        return port
    return int(address.rsplit(":", 1)[1])


def host_of(address: str) -> str:
    if "://" in address:
        host = urlsplit(address).hostname
        assert host is not None, address
        return host
    return address.rsplit(":", 1)[0]


def published(service: dict[str, Any]) -> dict[int, int]:
    """{container port: host port} of a service's `ports` ("[ip:]host:container")."""
    ports = {}
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{entry}: publish on the host's loopback only"
        ports[int(parts[2])] = int(parts[1])
    return ports


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """{container path: host path} of a service's bind mounts (sources relative to compose/)."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        if source.startswith("."):
            mounts[target] = (COMPOSE / source).resolve()
    return mounts


# -- the compose file on its own -------------------------------------------------------


def test_every_service_volume_and_file_referenced_exists(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        dependencies = service.get("depends_on", {})
        # Either a list of names or {name: {condition: ...}}.
        conditions = dependencies if isinstance(dependencies, dict) else {d: {} for d in dependencies}
        for dependency, spec in conditions.items():
            assert dependency in services, f"{name} depends on {dependency}, which is not a service"
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency} to be healthy, which has no healthcheck"
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, f"{name}: {mode}"
            assert "ports" not in service, f"{name} shares another's network: publish on that service"
        assert "image" in service or "build" in service, name
        for entry in service.get("volumes", []):
            source = str(entry).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        test = service.get("healthcheck", {}).get("test")
        if test is not None:
            assert test[0] in ("CMD", "CMD-SHELL"), f"{name}: {test}"
    # Prism is built from the repo's Dockerfile.
    build = services["prism"]["build"]
    assert (COMPOSE / build["context"]).resolve() == REPO
    assert (COMPOSE / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == REPO / "Dockerfile"


def test_prism_reads_the_mounted_config_and_is_health_checked(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    prism = services["prism"]
    command = prism["command"]
    config_path = command[command.index("--config") + 1]
    assert bind_mounts(prism)[config_path] == PRISM_TOML
    # The same path the image's default command reads.
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f'CMD ["serve", "--config", "{config_path}"]' in dockerfile
    assert 'ENTRYPOINT ["prism"]' in dockerfile
    # `prism health` on the gRPC port, as the Dockerfile's HEALTHCHECK.
    test = prism["healthcheck"]["test"]
    assert test[:3] == ["CMD", "prism", "health"]
    assert port_of(test[test.index("--addr") + 1]) == port_of(prism_config["server"]["listen"])
    # Admin state lives on the data volume (XDG_CACHE_HOME in the image is there too).
    data = next(str(v).split(":")[1] for v in prism["volumes"] if str(v).startswith("prism-data:"))
    assert prism_config["admin"]["state_dir"].startswith(data + "/")
    assert f"ENV XDG_CACHE_HOME={data}/" in dockerfile


def test_prism_listens_where_compose_publishes(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    ports = published(services["prism"])
    for address in (prism_config["server"]["listen"], prism_config["telemetry"]["metrics_listen"]):
        assert host_of(address) == "0.0.0.0", f"{address}: other containers must reach it"
        assert port_of(address) in ports, f"{address} is not published"


def test_backends_are_the_compose_services(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    default_ports = {"redis": 6379, "nats": 4222}
    types = set()
    for name, backend in prism_config["backends"].items():
        kind = backend["type"]
        types.add(kind)
        assert kind in default_ports, f"backends.{name}: {kind} is not in the stack"
        assert host_of(backend["url"]) == kind, f"backends.{name}.url"
        assert port_of(backend["url"]) == default_ports[kind]
        assert default_ports[kind] in published(services[kind]), f"{kind} is not published for `prism serve` on the host"
    assert types == {"redis", "nats"}
    nats = [b for b in prism_config["backends"].values() if b["type"] == "nats"]
    assert all(b.get("jetstream") for b in nats), "the stack's PubSub is JetStream"
    assert "--jetstream" in services["nats"]["command"]
    patterns = {ns["pattern"] for ns in prism_config["namespaces"].values()}
    assert patterns == {"keyvalue", "pubsub", "multicast-registry"}


def test_prism_trusts_the_stack_issuer(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    auth = prism_config["auth"]
    assert auth["mode"] == "jwt"
    assert auth["audience"] == "prism"  # what tests/oidc issues for urn:prism
    oidc = services["oidc"]
    # tests/oidc names itself http://127.0.0.1:<port>: it must share Prism's
    # network namespace, listen on that port, and be published for browsers.
    assert oidc["network_mode"] == "service:prism"
    command = " ".join(oidc["command"])
    port = int(re.search(r"issuer\.mjs --port (\d+)", command).group(1))  # type: ignore[union-attr]
    assert auth["issuer"] == f"http://127.0.0.1:{port}"
    assert published(services["prism"])[port] == port
    assert port in [port_of(t) for t in oidc["healthcheck"]["test"] if t.startswith("http")]
    # The files it copies out of the read-only mount exist, and so does the preload.
    mounts = bind_mounts(oidc)
    source = mounts["/src"]
    assert source == REPO / "tests" / "oidc"
    for name in re.findall(r"/src/(\S+)", command):
        assert (source / name).is_file(), name
    for preload in re.findall(r"--import (\S+)", command):
        assert mounts[preload].is_file(), preload


def test_prometheus_scrapes_the_prism_metrics_port(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    mounts = bind_mounts(services["prometheus"])
    config = load_yaml(mounts["/etc/prometheus/prometheus.yml"])
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "prism"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"prism:{port_of(prism_config['telemetry']['metrics_listen'])}"]


def test_the_collector_receives_what_prism_sends(services: dict[str, dict[str, Any]], prism_config: dict[str, Any]) -> None:
    telemetry = prism_config["telemetry"]
    endpoint = telemetry["otlp_endpoint"]
    assert 0.0 <= telemetry["trace_sample_ratio"] <= 1.0
    assert urlsplit(endpoint).scheme == "http"
    assert host_of(endpoint) == "otel-collector" and "otel-collector" in services
    collector = services["otel-collector"]
    assert "opentelemetry-collector-contrib" in collector["image"]
    (flag,) = [a for a in collector["command"] if a.startswith("--config=")]
    config = load_yaml(bind_mounts(collector)[flag.removeprefix("--config=")])
    protocols = config["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["grpc"]["endpoint"]) == port_of(endpoint) == 4317
    assert port_of(protocols["http"]["endpoint"]) == 4318
    for protocol in protocols.values():
        assert host_of(protocol["endpoint"]) == "0.0.0.0", "other containers must reach the receivers"
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    for kind in ("receivers", "processors", "exporters"):
        for name in traces.get(kind, []):
            assert name in config[kind], f"pipeline uses undefined {kind[:-1]} {name}"
    for name in config["service"].get("extensions", []):
        assert name in config["extensions"], name
    # Traces go to Jaeger's OTLP/gRPC receiver.
    (jaeger,) = [config["exporters"][n] for n in traces["exporters"] if n.startswith(("otlp/", "otlp_grpc/"))]
    assert host_of(jaeger["endpoint"]) == "jaeger" and port_of(jaeger["endpoint"]) == 4317
    assert published(services["jaeger"]) == {16686: 16686}


def test_grafana_reads_prometheus_and_the_dashboard(services: dict[str, dict[str, Any]], dashboard: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    by_type = {d["type"]: d for d in datasources}
    prometheus_port = next(iter(published(services["prometheus"])))
    assert by_type["prometheus"]["url"] == f"http://prometheus:{prometheus_port}"
    assert by_type["jaeger"]["url"] == f"http://jaeger:{next(iter(published(services['jaeger'])))}"
    uids = {d["uid"] for d in datasources}
    (provider,) = load_yaml(provisioning / "dashboards" / "prism.yaml")["providers"]
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent.as_posix() == provider["options"]["path"] and (DASHBOARD.parent / Path(home).name).is_file()
    # Every panel and query names a provisioned data source.
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] in uids, variable["name"]


# -- PromQL, as far as the dashboard uses it -------------------------------------------

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[=<>+\-*/%^,(){}])
    )""",
    re.VERBOSE,
)
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile"}
FUNCTIONS = {"rate", "irate", "increase", "histogram_quantile", "time", "clamp_min", "clamp_max", "abs", "vector", "scalar"}
#: Functions over a counter's (or a histogram series') range.
COUNTER_FUNCTIONS = {"rate", "irate", "increase"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATOR_WORDS = {"and", "or", "unless", "bool"}


@dataclass
class Selector:
    metric: str
    #: (label, operator, value)
    matchers: list[tuple[str, str, str]]
    #: Functions and aggregations the selector sits in, outermost first.
    inside: tuple[str, ...]


@dataclass
class Query:
    expr: str
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    """Metric selectors (with their matchers and the functions around them) and
    grouping labels of a PromQL expression. Grafana's `$variables` may appear
    in label values and ranges only."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    while expr[pos:].strip():
        m = _TOKEN.match(expr, pos)
        assert m is not None and m.lastgroup is not None, f"cannot parse {expr[pos:]!r} in {expr!r}"
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    query = Query(expr)
    stack: list[str] = []
    pending: str | None = None
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in GROUPING:
            if following == "(":
                j = i + 2
                while tokens[j][1] != ")":
                    if tokens[j][0] == "ident":
                        query.grouping.add(tokens[j][1])
                    j += 1
                i = j + 1
            else:
                i += 1
            continue
        if kind == "ident" and text in OPERATOR_WORDS:
            i += 1
            continue
        if kind == "ident" and (text in AGGREGATIONS or following == "("):
            assert text in AGGREGATIONS | FUNCTIONS, f"unknown function {text} in {expr!r}"
            pending = text
            i += 1
            continue
        if kind == "ident":
            matchers = []
            j = i + 1
            if following == "{":
                j = i + 2
                while tokens[j][1] != "}":
                    (label_kind, label), (_, op), (value_kind, value) = tokens[j : j + 3]
                    assert label_kind == "ident" and op in ("=", "!=", "=~", "!~") and value_kind == "string", expr
                    matchers.append((label, op, value[1:-1]))
                    j += 3
                    if tokens[j][1] == ",":
                        j += 1
                j += 1
            query.selectors.append(Selector(text, matchers, tuple(f for f in stack if f != "(")))
            i = j
            continue
        assert "$" not in text or kind in ("string", "range"), f"Grafana variable outside a label value or range: {expr!r}"
        if text == "(":
            stack.append(pending or "(")
            pending = None
        elif text == ")":
            stack.pop()
        i += 1
    assert not stack, f"unbalanced parentheses in {expr!r}"
    assert query.selectors, f"no metric in {expr!r}"
    return query


def test_the_promql_reader_reads_what_it_should() -> None:
    q = parse_promql(
        'histogram_quantile(0.99, sum by (le, namespace) (rate(x_bucket{namespace=~"$namespace", a="b"}[$__rate_interval])))'
        " / ignoring(le) sum(y_total) by (backend) > 0"
    )
    assert [(s.metric, s.inside) for s in q.selectors] == [
        ("x_bucket", ("histogram_quantile", "sum", "rate")),
        ("y_total", ("sum",)),
    ]
    assert q.selectors[0].matchers == [("namespace", "=~", "$namespace"), ("a", "=", "b")]
    assert q.grouping == {"le", "namespace", "backend"}
    assert [s.metric for s in parse_promql("time() - max by (instance) (process_start_time_seconds)").selectors] == [
        "process_start_time_seconds"
    ]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


@dataclass
class DashboardQuery:
    where: str
    query: Query
    legend: str = ""


def dashboard_queries(dashboard: dict[str, Any]) -> list[DashboardQuery]:
    found = []
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            where = f"panel {panel['title']!r} {target['refId']}"
            found.append(DashboardQuery(where, parse_promql(target["expr"]), target.get("legendFormat", "")))
    for variable in dashboard["templating"]["list"]:
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert m is not None, variable
        query = Query(m.group(0), [Selector(m.group(1), [], ())], {m.group(2)})
        found.append(DashboardQuery(f"variable ${variable['name']}", query))
    return found


def test_the_dashboard_shows_what_an_operator_needs(dashboard: dict[str, Any]) -> None:
    used = {s.metric for q in dashboard_queries(dashboard) for s in q.query.selectors}
    assert {
        "grpc_server_handled_total",  # request rate by namespace/method/code, error ratio
        "grpc_server_handling_seconds_bucket",  # latency quantiles
        "prism_grpc_in_flight",
        "prism_namespace_instances",
        "prism_namespace_traps_total",
        "prism_namespace_quota_refusals_total",
        "prism_namespace_open_streams",
        "prism_namespace_dropped_messages_total",
        "prism_backend_up",
        "prism_backend_command_duration_seconds_bucket",
        "prism_build_info",
    } <= used
    quantiles = [q for q in dashboard_queries(dashboard) if "histogram_quantile" in q.query.expr]
    assert {"grpc_server_handling_seconds_bucket", "prism_backend_command_duration_seconds_bucket"} <= {
        s.metric for q in quantiles for s in q.query.selectors
    }
    for q in quantiles:
        assert "le" in q.query.grouping, q.where


# -- the dashboard against a real scrape -----------------------------------------------


@dataclass
class Scrape:
    #: sample name -> the family's type (counter, gauge, histogram, ...)
    types: dict[str, str]
    #: sample name -> label -> values seen
    labels: dict[str, dict[str, set[str]]]


def scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    result = Scrape({}, {})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            result.types[sample.name] = family.type
            labels = result.labels.setdefault(sample.name, {})
            for label, value in sample.labels.items():
                labels.setdefault(label, set()).add(value)
    return result


def dashboard_problems(queries: list[DashboardQuery], seen: Scrape) -> list[str]:
    """What in these queries does not fit the series and labels `seen`: unknown labels,
    equality matchers that match no value, grouping by a label the series lacks, rate of
    a gauge, a raw counter graphed, histogram_quantile over anything but _bucket, and
    legends naming labels the query drops. A query's grouping labels are checked on every
    series it reads (the dashboard combines only series with the same labels)."""
    problems: list[str] = []
    for q in queries:
        for s in q.query.selectors:
            kind = seen.types[s.metric]
            labels = seen.labels[s.metric]
            for label, op, value in s.matchers:
                if label not in labels:
                    problems.append(f"{q.where}: {s.metric} has no label {label} (it has {sorted(labels)})")
                elif op == "=" and "$" not in value and value not in labels[label]:
                    problems.append(f"{q.where}: {s.metric}{{{label}={value!r}}} matches nothing ({sorted(labels[label])})")
            for label in q.query.grouping - TARGET_LABELS:
                if label not in labels:
                    problems.append(f"{q.where}: groups by {label}, which {s.metric} does not have ({sorted(labels)})")
            over_range = COUNTER_FUNCTIONS & set(s.inside)
            if over_range and kind not in ("counter", "histogram"):
                problems.append(f"{q.where}: {sorted(over_range)} of {s.metric}, a {kind}")
            if kind in ("counter", "histogram") and not over_range and q.where.startswith("panel"):
                problems.append(f"{q.where}: {s.metric} is a {kind}: graph its rate or increase")
            if "histogram_quantile" in s.inside and not (kind == "histogram" and s.metric.endswith("_bucket")):
                problems.append(f"{q.where}: histogram_quantile over {s.metric}, not a histogram's _bucket series")
        # A legend names labels the query's result keeps.
        keeps = q.query.grouping or {label for s in q.query.selectors for label in seen.labels[s.metric]}
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", q.legend):
            if label not in keeps | TARGET_LABELS:
                problems.append(f"{q.where}: legend uses {label}, which the query drops (it keeps {sorted(keeps)})")
    return problems


def test_the_dashboard_checker_catches_mistakes() -> None:
    seen = Scrape(
        {"up_gauge": "gauge", "calls_total": "counter", "d_bucket": "histogram"},
        {"up_gauge": {"backend": {"redis"}}, "calls_total": {"code": {"OK"}}, "d_bucket": {"le": {"+Inf"}}},
    )
    mistakes = [
        'sum by (state) (rate(up_gauge{code="OK"}[5m]))',
        'histogram_quantile(0.5, sum by (le) (rate(calls_total[5m])))',
        'calls_total{code="Ok"}',
    ]
    problems = dashboard_problems([DashboardQuery(f"panel {e}", parse_promql(e), "{{backend}}") for e in mistakes], seen)
    for expected in (
        "has no label code",
        "groups by state",
        "of up_gauge, a gauge",
        "legend uses backend",
        "groups by le",
        "not a histogram's _bucket",
        "matches nothing",
        "graph its rate",
    ):
        assert any(expected in p for p in problems), (expected, problems)
    fine = ["histogram_quantile(0.9, sum by (le) (rate(d_bucket[5m])))", "max by (backend) (up_gauge) == 1"]
    assert dashboard_problems([DashboardQuery(f"panel {e}", parse_promql(e), "{{backend}}") for e in fine[1:]], seen) == []
    assert dashboard_problems([DashboardQuery(f"panel {e}", parse_promql(e)) for e in fine[:1]], seen) == []


def compose_config_for_tests(replacements: dict[str, str], *, drop_keys: tuple[str, ...] = ()) -> str:
    """compose/prism.toml with these quoted values replaced (each must occur) and these keys' lines removed."""
    text = PRISM_TOML.read_text()
    for old, new in replacements.items():
        assert f'"{old}"' in text, f"{old} is not in {PRISM_TOML}"
        text = text.replace(f'"{old}"', f'"{new}"')
    lines = [line for line in text.splitlines() if not any(re.match(rf"\s*{k}\s*=", line) for k in drop_keys)]
    return "\n".join(lines) + "\n"


async def test_every_dashboard_query_names_series_and_labels_prism_exposes(
    tmp_path: Path,
    dashboard: dict[str, Any],
    prism_config: dict[str, Any],
    redis_server: RedisServer,
    nats_server: NatsServer,
    oidc_issuer: OidcIssuer,
) -> None:
    redis_server.flush()
    nats_server.reset()
    replacements = {prism_config["admin"]["state_dir"]: str(tmp_path / "state"), prism_config["auth"]["issuer"]: oidc_issuer.issuer}
    for backend in prism_config["backends"].values():
        local = {"redis": f"redis://127.0.0.1:{redis_server.port}", "nats": nats_server.url}
        replacements[backend["url"]] = local[backend["type"]]
    # The stack's own config on real backends and a real issuer; tracing is
    # left out here (it changes no metric; the test below starts it as shipped).
    text = compose_config_for_tests(replacements, drop_keys=("otlp_endpoint", "trace_sample_ratio"))
    prism = PrismProcess(tmp_path, text, metrics=True)
    try:
        token = await asyncio.to_thread(client_credentials_token, oidc_issuer, "prism-test-all")
        async with PrismClient(prism.addr, token=token) as kv:
            await kv.keyvalue.set("compose:check", b"value")
            assert await kv.keyvalue.get("compose:check") == b"value"
        async with PrismClient(prism.addr, namespace="events", token=token) as events:
            await events.pubsub.publish("compose-check", b"hello")
        async with PrismClient(prism.addr, namespace="devices", token=token) as devices:
            await devices.registry.register("sensor-1", {"type": "sensor"})
            assert [i.identity for i in await devices.registry.enumerate({"type": "sensor"})] == ["sensor-1"]

        queries = dashboard_queries(dashboard)
        wanted = {s.metric for q in queries for s in q.query.selectors}
        # Backend health appears after the first ping (every 500 ms).
        deadline = time.monotonic() + 15
        while True:
            seen = await asyncio.to_thread(scrape, prism.metrics_url)
            missing = wanted - set(seen.types)
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert not missing, f"the dashboard uses series Prism does not expose: {sorted(missing)}"
    finally:
        prism.stop()

    problems = dashboard_problems(queries, seen)
    assert not problems, "\n".join(problems)


def test_the_shipped_config_starts_prism(tmp_path: Path, prism_config: dict[str, Any], nats_server: NatsServer) -> None:
    # As shipped (tracing keys included), with the state directory in a temp
    # dir, the collector on a closed local port instead of a compose name,
    # and NATS a real local server: the control store is read at start.
    store = prism_config["backends"][prism_config["admin"]["store"]]
    assert store["type"] == "nats" and store["jetstream"] is True
    text = compose_config_for_tests(
        {
            prism_config["admin"]["state_dir"]: str(tmp_path / "state"),
            prism_config["telemetry"]["otlp_endpoint"]: f"http://127.0.0.1:{_free_port()}",
            store["url"]: nats_server.url,
        }
    )
    prism = PrismProcess(tmp_path, text, metrics=True)
    assert prism.addr and prism.metrics_url.endswith("/metrics")
    prism.stop()
