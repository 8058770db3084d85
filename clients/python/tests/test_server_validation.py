"""The server's own validation: requests the Python client would refuse
before sending (ttl=0, empty keys, huge buffers, unknown enum values, …)
sent through the raw gRPC stubs, so the server's answer is what is tested.
Each is INVALID_ARGUMENT (or NOT_FOUND / FAILED_PRECONDITION where that is
the contract) and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from prism_client._pb import keyvalue_pb2 as kv_pb
from prism_client._pb import keyvalue_pb2_grpc as kv_grpc
from prism_client._pb import pubsub_pb2 as ps_pb
from prism_client._pb import pubsub_pb2_grpc as ps_grpc
from prism_client._pb import registry_pb2 as reg_pb
from prism_client._pb import registry_pb2_grpc as reg_grpc


@pytest.fixture
async def channel(prism_addr: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(prism_addr) as ch:
        yield ch


DEFAULT = (("x-prism-namespace", "default"),)


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_keyvalue_arguments_the_client_would_refuse(channel: grpc.aio.Channel) -> None:
    kv = kv_grpc.KeyValueStub(channel)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(kv.Set(kv_pb.SetRequest(key="k", value=b"v", ttl_ms=0), metadata=DEFAULT)) == invalid
    assert await code_of(kv.Set(kv_pb.SetRequest(key="", value=b"v"), metadata=DEFAULT)) == invalid
    assert await code_of(kv.Get(kv_pb.GetRequest(key=""), metadata=DEFAULT)) == invalid
    # Not even base64url: malformed on every backend.
    assert await code_of(kv.Scan(kv_pb.ScanRequest(prefix="", cursor="not a cursor!"), metadata=DEFAULT)) == invalid
    batch = kv_pb.BatchSetRequest(entries=[kv_pb.SetRequest(key="ok", value=b"1"), kv_pb.SetRequest(key="", value=b"2")])
    assert await code_of(kv.BatchSet(batch, metadata=DEFAULT)) == invalid
    # Nothing of the refused batch was written.
    assert await code_of(kv.Get(kv_pb.GetRequest(key="ok"), metadata=DEFAULT)) == grpc.StatusCode.NOT_FOUND
    # A namespace header that is not one.
    bad_ns = (("x-prism-namespace", "no-such-namespace"),)
    assert await code_of(kv.Get(kv_pb.GetRequest(key="k"), metadata=bad_ns)) == grpc.StatusCode.NOT_FOUND


async def test_scan_cursor_the_server_never_issued(channel: grpc.aio.Channel) -> None:
    kv = kv_grpc.KeyValueStub(channel)
    # Valid base64url, but no scan returned it.
    forged = kv_pb.ScanRequest(prefix="", cursor="not-a-cursor")
    assert await code_of(kv.Scan(forged, metadata=DEFAULT)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_pubsub_arguments_the_client_would_refuse(channel: grpc.aio.Channel) -> None:
    ps = ps_grpc.PubSubStub(channel)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    # `default` serves KeyValue: PubSub calls there are a failed precondition.
    request = ps_pb.PublishRequest(topic="t", payload=b"x")
    assert await code_of(ps.Publish(request, metadata=DEFAULT)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_subscribe_arguments_the_client_would_refuse(pubsub_addr: str) -> None:
    async with grpc.aio.insecure_channel(pubsub_addr) as channel:
        ps = ps_grpc.PubSubStub(channel)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        for request in [
            ps_pb.SubscribeRequest(topic="t", buffer=2**32 - 1),  # past max_subscriber_buffer
            ps_pb.SubscribeRequest(topic="t", slow_consumer=7),  # not a SlowConsumerPolicy
            ps_pb.SubscribeRequest(topic=""),
            ps_pb.SubscribeRequest(topic="a.*"),
        ]:
            stream = ps.Subscribe(request, metadata=DEFAULT)
            try:
                await stream.read()
            except grpc.aio.AioRpcError as err:
                assert err.code() == invalid, (request, err.details())
            else:
                pytest.fail(f"subscribe accepted {request}")
        publish = ps_pb.PublishRequest(topic="", payload=b"x")
        assert await code_of(ps.Publish(publish, metadata=DEFAULT)) == invalid
        assert await code_of(ps.Ack(ps_pb.AckRequest(subscription_id="sub-nope", message_ids=["x"]), metadata=DEFAULT)) == grpc.StatusCode.NOT_FOUND


def deeply_nested(identity: str, depth: int) -> reg_pb.RegisterRequest:
    """A Register whose metadata nests `depth` maps (built in place: the
    Python protobuf runtime does not copy messages nested that deep)."""
    request = reg_pb.RegisterRequest(identity=identity, replace=True)
    inner = request.metadata
    for _ in range(depth - 1):
        inner = inner.fields["n"].map_value
    inner.fields["leaf"].int_value = 1
    return request


async def test_registry_arguments_the_client_would_refuse(registry_addr: str) -> None:
    async with grpc.aio.insecure_channel(registry_addr) as channel:
        reg = reg_grpc.RegistryStub(channel)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        ok = reg_pb.MapValue(fields={"type": reg_pb.Value(string_value="sensor")})

        # An empty identity, in every call that names one.
        assert await code_of(reg.Register(reg_pb.RegisterRequest(identity="", metadata=ok, replace=True), metadata=DEFAULT)) == invalid
        assert await code_of(reg.Get(reg_pb.GetIdentityRequest(identity=""), metadata=DEFAULT)) == invalid
        assert await code_of(reg.Heartbeat(reg_pb.HeartbeatRequest(identity=""), metadata=DEFAULT)) == invalid
        assert await code_of(reg.Unregister(reg_pb.UnregisterRequest(identity=""), metadata=DEFAULT)) == invalid
        listen = reg.Listen(reg_pb.ListenRequest(identity=""), metadata=DEFAULT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await listen.read()
        assert info.value.code() == invalid

        # A TTL of 0 ms, and metadata JSON cannot hold (NaN, infinity) or
        # nested deeper than the client allows (32 levels; the namespace's
        # max_metadata_depth is 16 by default): refused, and nothing is registered.
        for request in [
            reg_pb.RegisterRequest(identity="refused", metadata=ok, ttl_ms=0, replace=True),
            reg_pb.RegisterRequest(
                identity="refused", metadata=reg_pb.MapValue(fields={"x": reg_pb.Value(double_value=float("nan"))}), replace=True
            ),
            reg_pb.RegisterRequest(
                identity="refused",
                metadata=reg_pb.MapValue(fields={"x": reg_pb.Value(double_value=float("-inf"))}),
                replace=True,
            ),
            deeply_nested("refused", 33),
        ]:
            assert await code_of(reg.Register(request, metadata=DEFAULT)) == invalid, request
        assert await code_of(reg.Get(reg_pb.GetIdentityRequest(identity="refused"), metadata=DEFAULT)) == grpc.StatusCode.NOT_FOUND

        # Malformed filters: INVALID_ARGUMENT naming the offending key.
        await reg.Register(reg_pb.RegisterRequest(identity="sensor-1", metadata=ok, replace=True), metadata=DEFAULT)
        for bad, key in [
            ({"$or": reg_pb.Value(string_value="sensor")}, "$or"),
            ({"floor.in": reg_pb.Value(int_value=1)}, "floor.in"),
            ({"floor.gte": reg_pb.Value(double_value=float("nan"))}, "floor.gte"),
        ]:
            for call in [
                reg.Multicast(reg_pb.MulticastRequest(filter=bad, payload=b"x"), metadata=DEFAULT),
                reg.Enumerate(reg_pb.EnumerateRequest(filter=bad), metadata=DEFAULT),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == invalid
                assert key in (info.value.details() or ""), info.value.details()

        # `replace` false (the proto3 default) on a registered identity.
        again = reg_pb.RegisterRequest(identity="sensor-1", metadata=ok)
        assert await code_of(reg.Register(again, metadata=DEFAULT)) == grpc.StatusCode.ALREADY_EXISTS
