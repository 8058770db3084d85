"""Prometheus metrics (`prism serve --metrics-listen`): after known traffic,
`/metrics` is scraped and parsed with the Prometheus project's own
text-format parser (`prometheus_client.parser`), and the series and counts
are checked: calls by namespace, method and code, latency histograms, quota
refusals, open streams, backend health and command timing. Labels are
bounded: a namespace header naming no namespace is never a label."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import PrismProcess, RedisServer
from prometheus_client.parser import text_string_to_metric_families

from prism_client import KeyNotFoundError, PrismClient, ResourceExhaustedError
from prism_client._pb import keyvalue_pb2 as kv_pb
from prism_client._pb import keyvalue_pb2_grpc as kv_grpc

CONFIG = """
[backends.mem]
type = "memstore"

[backends.cache]
type = "redis"
url = "redis://127.0.0.1:{redis_port}"

[namespaces.default]
pattern = "keyvalue"
slots = {{ kv = "mem" }}

[namespaces.cached]
pattern = "keyvalue"
slots = {{ kv = "cache" }}

[namespaces.limited]
pattern = "keyvalue"
slots = {{ kv = "mem" }}
limits = {{ requests_per_second = 1, burst = 2 }}

[namespaces.events]
pattern = "pubsub"
slots = {{ pubsub = "mem" }}
"""

Labels = frozenset[tuple[str, str]]


class Prism:
    def __init__(self, addr: str, metrics_url: str) -> None:
        self.addr = addr
        self.metrics_url = metrics_url

    def scrape(self) -> tuple[str, dict[str, dict[Labels, float]]]:
        """The raw text and {sample name: {labels: value}}, as Prometheus parses it."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            assert response.status == 200
            content_type = response.headers["Content-Type"]
            assert content_type.startswith("text/plain; version=0.0.4"), content_type
            text = response.read().decode()
        samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
        return text, samples


@pytest.fixture
def prism(tmp_path: Path, redis_server: RedisServer) -> Iterator[Prism]:
    redis_server.flush()
    process = PrismProcess(tmp_path, CONFIG.format(redis_port=redis_server.port), metrics=True)
    try:
        yield Prism(process.addr, process.metrics_url)
    finally:
        process.stop()


def call_labels(namespace: str, service: str, method: str, **extra: str) -> Labels:
    grpc_type = "server_stream" if method in ("Subscribe", "Listen") else "unary"
    labels = {"namespace": namespace, "grpc_service": service, "grpc_method": method, "grpc_type": grpc_type, **extra}
    return frozenset(labels.items())


def kv(namespace: str, method: str, **extra: str) -> Labels:
    return call_labels(namespace, "prism.v1.KeyValue", method, **extra)


async def test_calls_are_counted_by_namespace_method_and_code(prism: Prism) -> None:
    async with PrismClient(prism.addr) as client:
        for i in range(7):
            await client.keyvalue.set(f"k{i}", b"v")
        for i in range(3):
            assert await client.keyvalue.get(f"k{i}") == b"v"
        for _ in range(2):
            with pytest.raises(KeyNotFoundError):
                await client.keyvalue.get("missing")
    async with PrismClient(prism.addr, namespace="cached") as cached:
        for i in range(3):
            await cached.keyvalue.set(f"c{i}", b"on redis")
    # A namespace that is not one: counted, but never as a label of its own.
    stranger = f"no-such-namespace-{uuid.uuid4().hex}"
    async with grpc.aio.insecure_channel(prism.addr) as channel:
        stub = kv_grpc.KeyValueStub(channel)  # type: ignore[no-untyped-call]
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Get(kv_pb.GetRequest(key="k"), metadata=(("x-prism-namespace", stranger),))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

    text, samples = prism.scrape()
    handled = samples["grpc_server_handled_total"]
    assert handled[kv("default", "Set", grpc_code="OK")] == 7
    assert handled[kv("default", "Get", grpc_code="OK")] == 3
    assert handled[kv("default", "Get", grpc_code="NotFound")] == 2
    assert handled[kv("cached", "Set", grpc_code="OK")] == 3
    assert handled[kv("(unknown)", "Get", grpc_code="NotFound")] == 2
    assert stranger not in text

    started = samples["grpc_server_started_total"]
    assert started[kv("default", "Get")] == 5
    assert started[kv("default", "Set")] == 7
    in_flight = samples["prism_grpc_in_flight"]
    assert in_flight[frozenset({("namespace", "default"), ("grpc_service", "prism.v1.KeyValue"), ("grpc_method", "Get")})] == 0

    # The latency histogram: one observation per call, cumulative buckets.
    assert samples["grpc_server_handling_seconds_count"][kv("default", "Get")] == 5
    assert samples["grpc_server_handling_seconds_sum"][kv("default", "Get")] > 0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for labels, value in samples["grpc_server_handling_seconds_bucket"].items()
        if kv("default", "Get") <= labels
    )
    assert buckets[-1] == (float("inf"), 5)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:], strict=False))

    # Each call reached the backend through the pattern's kv capability
    # once: 3 Sets on "cache"; 7 Sets, 3 Gets and 2 missed Gets on "mem".
    commands = samples["prism_backend_command_duration_seconds_count"]
    assert commands[frozenset({("backend", "cache")})] == 3
    assert commands[frozenset({("backend", "mem")})] == 12
    instances = samples["prism_namespace_instances"]
    assert instances[frozenset({("namespace", "default"), ("state", "idle")})] >= 1
    assert instances[frozenset({("namespace", "default"), ("state", "busy")})] == 0
    assert samples["prism_build_info"]
    assert samples["process_start_time_seconds"][frozenset()] > 0


async def test_quota_refusals_and_backend_health(prism: Prism) -> None:
    refused = 0
    async with PrismClient(prism.addr, namespace="limited") as client:
        for _ in range(6):
            try:
                await client.keyvalue.set("k", b"v")
            except ResourceExhaustedError:
                refused += 1
    assert refused >= 3, "a burst of 2 at 1 request/s refuses most of 6 quick calls"

    deadline = time.monotonic() + 10
    while True:
        _, samples = prism.scrape()
        up = samples.get("prism_backend_up", {})
        if len(up) == 2 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert up[frozenset({("backend", "cache"), ("type", "redis")})] == 1
    assert up[frozenset({("backend", "mem"), ("type", "memstore")})] == 1
    assert samples["prism_backend_ping_seconds"][frozenset({("backend", "cache")})] > 0

    refusals = samples["prism_namespace_quota_refusals_total"]
    assert refusals[frozenset({("namespace", "limited"), ("quota", "requests_per_second")})] == refused
    assert refusals[frozenset({("namespace", "default"), ("quota", "requests_per_second")})] == 0
    handled = samples["grpc_server_handled_total"]
    assert handled[kv("limited", "Set", grpc_code="ResourceExhausted")] == refused
    assert handled[kv("limited", "Set", grpc_code="OK")] == 6 - refused


async def test_open_streams_are_gauged_and_counted_when_they_end(prism: Prism) -> None:
    subscribe = call_labels("events", "prism.v1.PubSub", "Subscribe")
    in_flight_labels = frozenset({("namespace", "events"), ("grpc_service", "prism.v1.PubSub"), ("grpc_method", "Subscribe")})
    async with PrismClient(prism.addr, namespace="events") as client:
        sub = client.pubsub.subscribe("orders")
        await sub.ready()
        for i in range(3):
            await client.pubsub.publish("orders", f"m{i}".encode())
        for _ in range(3):
            await asyncio.wait_for(anext(sub), 10)
        _, samples = prism.scrape()
        assert samples["prism_namespace_open_streams"][frozenset({("namespace", "events")})] == 1
        assert samples["prism_grpc_in_flight"][in_flight_labels] == 1
        assert samples["grpc_server_started_total"][subscribe] == 1
        handled = samples["grpc_server_handled_total"]
        assert handled[call_labels("events", "prism.v1.PubSub", "Publish", grpc_code="OK")] == 3
        await sub.aclose()
        # Waited for with the channel still open: the subscription ends as
        # the client asked (OK), not cut off by the channel closing
        # (Canceled), which would be counted under another code.
        deadline = time.monotonic() + 10
        while True:
            _, samples = prism.scrape()
            ended = {
                dict(labels)["grpc_code"]: value
                for labels, value in samples.get("grpc_server_handled_total", {}).items()
                if subscribe <= labels
            }
            if ended or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert ended == {"OK": 1}, ended
    assert samples["prism_grpc_in_flight"][in_flight_labels] == 0
    assert samples["prism_namespace_open_streams"][frozenset({("namespace", "events")})] == 0


def test_other_paths_are_not_found(prism: Prism) -> None:
    base = prism.metrics_url.removesuffix("/metrics")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/", timeout=10)
    assert err.value.code == 404
    request = urllib.request.Request(prism.metrics_url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 405
