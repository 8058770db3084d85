"""Authentication end to end: a real OpenID Connect issuer (oidc-provider, see
`tests/oidc/README.md`), a real prism with `[auth] mode = "jwt"`, and the
client's token handling: fixed tokens, providers refreshed before expiry, the
device flow with its token file, `prism-login`, and subscriptions / inboxes
that outlive their token."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import SHORT_ACCESS_TTL, NatsServer, auth_toml, run_prism
from oidc_issuer import (
    ACCOUNTS,
    CLI_CLIENT,
    OTHER_RESOURCE,
    PRISM_RESOURCE,
    OidcIssuer,
    approve_device,
    client_credentials_token,
    decode_jwt,
)

from prism_client import (
    AuthError,
    DeviceAuthorization,
    DeviceLogin,
    KeyNotFoundError,
    LoginRequiredError,
    OidcTokenProvider,
    PermissionDeniedError,
    PrismClient,
    PrismError,
    TokenStore,
    UnauthenticatedError,
)
from prism_client.auth import DEFAULT_REFRESH_MARGIN, jwt_claims, token_expiry


def cc_token(issuer: OidcIssuer, client_id: str, **kwargs: Any) -> str:
    return client_credentials_token(issuer, client_id, **kwargs)


async def cc_token_async(issuer: OidcIssuer, client_id: str) -> str:
    return await asyncio.to_thread(client_credentials_token, issuer, client_id)


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


# -- grants ------------------------------------------------------------------------------


async def test_token_with_every_grant_reads_and_writes(auth_addr: str, oidc_issuer: OidcIssuer) -> None:
    token = cc_token(oidc_issuer, "prism-test-all")
    key = unique("all")
    async with PrismClient(auth_addr, namespace="orders", token=token) as client:
        await client.keyvalue.set(key, b"v1")
        assert await client.keyvalue.get(key) == b"v1"
        assert await client.keyvalue.exists(key)
        assert key in await client.keyvalue.scan("all-")
        assert await client.keyvalue.delete(key)
    async with PrismClient(auth_addr, namespace="events", token=token) as client:
        sub = client.pubsub.subscribe("t")
        await client.pubsub.publish("t", b"hello")
        message = await asyncio.wait_for(anext(sub), 10)
        assert message.payload == b"hello"
        await sub.aclose()
    async with PrismClient(auth_addr, namespace="devices", token=token) as client:
        identity = unique("sensor")
        inbox = client.registry.listen(identity)
        await client.registry.register(identity, {"type": "sensor", "tag": identity})
        # Only this identity carries its tag: exactly one target, one delivery.
        result = await client.registry.multicast({"tag": identity}, {"command": "read"})
        assert (result.target_count, result.delivered_count) == (1, 1)
        assert (await asyncio.wait_for(anext(inbox), 10)).json() == {"command": "read"}
        await inbox.aclose()
        await client.registry.unregister(identity)


async def test_read_only_token_reads_but_cannot_write(auth_addr: str, oidc_issuer: OidcIssuer) -> None:
    key = unique("ro")
    async with PrismClient(auth_addr, namespace="orders", token=cc_token(oidc_issuer, "prism-test-all")) as admin:
        await admin.keyvalue.set(key, b"original")
        reader_token = cc_token(oidc_issuer, "prism-test-orders-read")
        async with PrismClient(auth_addr, namespace="orders", token=reader_token) as reader:
            assert await reader.keyvalue.get(key) == b"original"
            assert await reader.keyvalue.exists(key)
            assert await reader.keyvalue.get_many([key]) == {key: b"original"}
            with pytest.raises(KeyNotFoundError):
                await reader.keyvalue.get(key + "-absent")

            with pytest.raises(PermissionDeniedError) as denied:
                await reader.keyvalue.set(key, b"overwritten")
            assert "prism-test-orders-read" in str(denied.value) and "orders" in str(denied.value)
            assert reader_token not in str(denied.value)
            with pytest.raises(PermissionDeniedError):
                await reader.keyvalue.set_many({key: b"overwritten", key + "-new": b"new"})
            with pytest.raises(PermissionDeniedError):
                await reader.keyvalue.delete(key)
            with pytest.raises(PermissionDeniedError):
                await reader.keyvalue.delete_many([key])

        # Nothing was written, nothing deleted (checked with the all-namespaces token).
        assert await admin.keyvalue.get(key) == b"original"
        assert not await admin.keyvalue.exists(key + "-new")


async def test_grants_are_per_namespace_including_stream_starts(auth_addr: str, oidc_issuer: OidcIssuer) -> None:
    token = cc_token(oidc_issuer, "prism-test-orders")  # read + write on `orders` only
    async with PrismClient(auth_addr, namespace="orders", token=token) as client:
        key = unique("ns")
        await client.keyvalue.set(key, b"x")
        assert await client.keyvalue.get(key) == b"x"
    async with PrismClient(auth_addr, namespace="events", token=token) as client:
        with pytest.raises(PermissionDeniedError):
            await client.pubsub.publish("t", b"x")
        sub = client.pubsub.subscribe("t")
        with pytest.raises(PermissionDeniedError):
            await sub.ready()
        with pytest.raises(PermissionDeniedError):
            await anext(sub)
        assert sub.reopens == 0
    async with PrismClient(auth_addr, namespace="devices", token=token) as client:
        inbox = client.registry.listen("nobody")
        with pytest.raises(PermissionDeniedError):
            await anext(inbox)
        with pytest.raises(PermissionDeniedError):
            await client.registry.enumerate()


@pytest.mark.parametrize("kind", ["none", "garbage", "wrong-audience", "opaque"])
async def test_missing_or_bad_token_is_unauthenticated(auth_addr: str, oidc_issuer: OidcIssuer, kind: str) -> None:
    token: Any
    if kind == "none":
        token = None
    elif kind == "garbage":
        token = "garbage.garbage.garbage"
    elif kind == "wrong-audience":
        token = cc_token(oidc_issuer, "prism-test-all", resource=OTHER_RESOURCE)
        assert decode_jwt(token)[1]["aud"] == "not-prism"
    else:
        token = "opaque-token-that-is-no-jwt"
    for namespace in ("orders", "events", "devices"):
        async with PrismClient(auth_addr, namespace=namespace, token=token) as client:
            if namespace == "orders":
                with pytest.raises(UnauthenticatedError) as info:
                    await client.keyvalue.get("k")
            elif namespace == "events":
                with pytest.raises(UnauthenticatedError):
                    await client.pubsub.publish("t", b"x")
                sub = client.pubsub.subscribe("t")
                with pytest.raises(UnauthenticatedError) as info:
                    await anext(sub)  # the stream start fails: raised, not reopened
                assert sub.reopens == 0
            else:
                inbox = client.registry.listen("sensor")
                with pytest.raises(UnauthenticatedError) as info:
                    await inbox.ready()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
            if token is not None:
                assert token not in str(info.value)
            if kind == "none":
                assert "no credentials" in str(info.value)
            if kind == "wrong-audience":
                assert "aud" in str(info.value)


async def test_health_check_needs_no_token(auth_addr: str) -> None:
    async with grpc.aio.insecure_channel(auth_addr) as channel:
        # grpc.health.v1.Health/Check, hand-encoded: an empty HealthCheckRequest
        # (service ""); the response's field 1 (status) is 1 = SERVING.
        check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/grpc.health.v1.Health/Check")
        response = await check(b"", timeout=10)
        assert response == b"\x08\x01"
        # ...while a data call without a token is refused.
        get: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/prism.v1.KeyValue/Get")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await get(b"", metadata=(("x-prism-namespace", "orders"),), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- providers ---------------------------------------------------------------------------


async def test_every_kind_of_provider(auth_addr: str, oidc_issuer: OidcIssuer) -> None:
    token = cc_token(oidc_issuer, "prism-test-all")
    calls: list[str] = []

    def sync_provider() -> str:
        calls.append("sync")
        return token

    async def async_provider() -> str:
        calls.append("async")
        return token

    class ObjectProvider:
        async def token(self) -> str:
            calls.append("object")
            return token

    for provider in (sync_provider, async_provider, ObjectProvider()):
        calls.clear()
        async with PrismClient(auth_addr, namespace="orders", token=provider) as client:
            key = unique("prov")
            await client.keyvalue.set(key, b"x")
            await asyncio.gather(*(client.keyvalue.get(key) for _ in range(5)))
            sub_client = PrismClient(auth_addr, namespace="events", token=provider)
            sub = sub_client.pubsub.subscribe("t")
            await sub.ready()
            await sub_client.close()
        # A 300-second token is asked for once per client, not per call.
        assert len(calls) == 2, calls


async def test_provider_failures_raise_unauthenticated(auth_addr: str) -> None:
    def broken() -> str:
        raise RuntimeError("vault is sealed")

    async def wrong_type() -> Any:
        return 42

    async def empty() -> str:
        return ""

    async def prism_error() -> str:
        raise LoginRequiredError("log in first")

    async with PrismClient(auth_addr, namespace="orders", token=broken) as client:
        with pytest.raises(AuthError, match="vault is sealed") as info:
            await client.keyvalue.get("k")
        assert isinstance(info.value, UnauthenticatedError)
        assert isinstance(info.value.__cause__, RuntimeError)
    async with PrismClient(auth_addr, namespace="orders", token=wrong_type) as client:
        with pytest.raises(AuthError, match="int"):
            await client.keyvalue.get("k")
    async with PrismClient(auth_addr, namespace="orders", token=empty) as client:
        with pytest.raises(UnauthenticatedError, match="empty"):
            await client.keyvalue.get("k")
    async with PrismClient(auth_addr, namespace="events", token=prism_error) as client:
        sub = client.pubsub.subscribe("t")
        with pytest.raises(LoginRequiredError):
            await anext(sub)
    with pytest.raises(TypeError):
        PrismClient(auth_addr, token=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PrismClient(auth_addr, token=" ")


async def test_provider_is_asked_again_near_expiry(short_auth_addr: str, short_issuer: OidcIssuer) -> None:
    issued: list[str] = []

    async def provider() -> str:
        issued.append(await cc_token_async(short_issuer, "prism-test-all"))
        return issued[-1]

    async with PrismClient(short_auth_addr, namespace="orders", token=provider, token_refresh_margin=60) as client:
        key = unique("near")
        await client.keyvalue.set(key, b"x")
        await client.keyvalue.get(key)
        assert len(issued) == 1  # cached
        first_exp = token_expiry(issued[0])
        assert first_exp is not None
        # The margin (60 s) is capped at half the token's lifetime (SHORT_ACCESS_TTL / 2).
        await asyncio.sleep(max(0.0, first_exp - SHORT_ACCESS_TTL / 2 - time.time()) + 0.3)
        assert await client.keyvalue.get(key) == b"x"
        assert len(issued) == 2
        assert token_expiry(issued[1]) > first_exp  # type: ignore[operator]
        # Past the first token's exp, where prism (leeway 0) refuses it, calls still work.
        await asyncio.sleep(max(0.0, first_exp - time.time()) + 1.2)
        assert await client.keyvalue.get(key) == b"x"
    async with PrismClient(short_auth_addr, namespace="orders", token=issued[0]) as stale:
        with pytest.raises(UnauthenticatedError, match="expired"):
            await stale.keyvalue.get(key)


# -- device flow ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_device_flow_end_to_end_with_refresh(
    short_auth_addr: str, short_issuer: OidcIssuer, tmp_path: Path
) -> None:
    token_file = tmp_path / "home" / ".prism" / "token"  # its directory does not exist yet
    approvals: list[asyncio.Task[None]] = []
    prompts: list[DeviceAuthorization] = []

    def prompt(authorization: DeviceAuthorization) -> None:
        # The user approves in a "browser" while the client polls.
        prompts.append(authorization)
        assert authorization.verification_uri_complete is not None
        approvals.append(
            asyncio.create_task(
                asyncio.to_thread(
                    approve_device,
                    authorization.verification_uri_complete,
                    authorization.user_code,
                    login="dev@local.prism",
                )
            )
        )

    provider = OidcTokenProvider(
        short_issuer.issuer, CLI_CLIENT, resource=PRISM_RESOURCE, token_file=token_file, prompt=prompt
    )
    async with PrismClient(short_auth_addr, namespace="orders", token=provider) as client:
        key = unique("device")
        # The first call runs the device flow (no token stored yet).
        await client.keyvalue.set(key, b"from the device flow")
        assert len(prompts) == 1 and len(approvals) == 1
        await approvals[0]
        first = provider.tokens
        assert first is not None and first.refresh_token is not None
        claims = first.claims()
        assert claims["sub"] == "dev@local.prism" and claims["aud"] == "prism"
        assert claims["prism_namespaces"] == ACCOUNTS["dev@local.prism"]

        # Stored: mode 0600 in a directory created 0700, one entry per (issuer, client id).
        assert _mode(token_file) == 0o600
        assert _mode(token_file.parent) == 0o700
        stored = json.loads(token_file.read_text())
        entry = stored["tokens"][short_issuer.issuer][CLI_CLIENT]
        assert entry["access_token"] == first.access_token
        assert entry["refresh_token"] == first.refresh_token
        assert TokenStore(token_file).load(short_issuer.issuer + "/", CLI_CLIENT) == first

        # Another program on the same token file uses the stored token, no login.
        other = OidcTokenProvider(short_issuer.issuer, CLI_CLIENT, token_file=token_file, login=False)
        assert await other.token() == first.access_token

        # Wait until the first access token has expired: prism (leeway 0) refuses it...
        assert first.expires_at is not None
        await asyncio.sleep(max(0.0, first.expires_at - time.time()) + 1.2)
        async with PrismClient(short_auth_addr, namespace="orders", token=first.access_token) as stale:
            with pytest.raises(UnauthenticatedError, match="expired"):
                await stale.keyvalue.get(key)
        # ...while the provider's client refreshed (no second login) and goes on.
        assert await client.keyvalue.get(key) == b"from the device flow"
        assert len(prompts) == 1
        second = provider.tokens
        assert second is not None and second.access_token != first.access_token
        assert second.expires_at is not None and second.expires_at > first.expires_at
        assert second.claims()["sub"] == "dev@local.prism"

    # The refresh token rotated, and the new one is what is stored.
    assert second.refresh_token is not None and second.refresh_token != first.refresh_token
    entry = json.loads(token_file.read_text())["tokens"][short_issuer.issuer][CLI_CLIENT]
    assert entry["refresh_token"] == second.refresh_token
    assert entry["access_token"] == second.access_token
    assert _mode(token_file) == 0o600

    # The other program re-reads the file (rather than spending the rotated-out
    # refresh token it saw, which would revoke the grant) and uses the new token.
    assert await other.token() == second.access_token


async def test_device_login_steps_and_errors(oidc_issuer: OidcIssuer, tmp_path: Path) -> None:
    flow = DeviceLogin(oidc_issuer.issuer, CLI_CLIENT, resource=PRISM_RESOURCE)
    discovery = await flow.discover()
    assert discovery["device_authorization_endpoint"] == oidc_issuer.device_authorization_endpoint
    authorization = await flow.start()
    assert authorization.interval == 5  # the issuer names none: RFC 8628's default
    assert authorization.verification_uri.startswith(oidc_issuer.issuer)

    # Approve as a read-only user, concurrently with the polling.
    approval = asyncio.create_task(
        asyncio.to_thread(approve_device, authorization.verification_uri, authorization.user_code, "reader@local.prism")
    )
    tokens = await flow.poll(authorization)
    await approval
    assert tokens.claims()["prism_namespaces"] == ["orders:read"]
    assert tokens.refresh_token is not None

    refreshed = await flow.refresh(tokens.refresh_token)
    assert refreshed.refresh_token not in (None, tokens.refresh_token)
    # Reusing the rotated-out refresh token: the issuer refuses (and revokes the grant).
    with pytest.raises(AuthError) as info:
        await flow.refresh(tokens.refresh_token)
    assert getattr(info.value, "error", None) == "invalid_grant"

    # No stored token and no interactive login allowed.
    provider = OidcTokenProvider(oidc_issuer.issuer, token_file=tmp_path / "none" / "token", login=False)
    with pytest.raises(LoginRequiredError, match="prism-login"):
        await provider.token()
    # An unknown client: the issuer's error, as an UnauthenticatedError.
    with pytest.raises(UnauthenticatedError, match="invalid_client"):
        await DeviceLogin(oidc_issuer.issuer, "no-such-client").start()
    # Nobody listening there.
    with pytest.raises(AuthError, match="cannot reach"):
        await DeviceLogin("http://127.0.0.1:9").discover()
    # Tokens never travel over plain http to a remote host.
    with pytest.raises(AuthError, match="https"):
        await DeviceLogin("http://issuer.example.com").discover()


def test_prism_login_command(oidc_issuer: OidcIssuer, tmp_path: Path) -> None:
    token_file = tmp_path / "cli" / "token"
    script = Path(sys.executable).with_name("prism-login")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "prism_client.auth"]
    proc = subprocess.Popen(
        [
            *command,
            "--issuer",
            oidc_issuer.issuer,
            "--client-id",
            CLI_CLIENT,
            "--resource",
            PRISM_RESOURCE,
            "--token-file",
            str(token_file),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PRISM_TOKEN_FILE": str(tmp_path / "not-this-one")},
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        code = None
        while code is None:
            line = proc.stderr.readline()
            assert line, f"prism-login printed no code: {lines}"
            lines.append(line)
            if "enter the code" in line:
                code = line.rsplit(" ", 1)[1].strip()
        uri = next(l.strip() for l in lines if "/device" in l and "user_code" in l)
        approve_device(uri, code, login="orders@local.prism")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + err
    assert "Logged in" in err and "orders@local.prism" in err and str(token_file) in err
    assert _mode(token_file) == 0o600
    assert not (tmp_path / "not-this-one").exists()
    entry = json.loads(token_file.read_text())["tokens"][oidc_issuer.issuer][CLI_CLIENT]
    assert jwt_claims(entry["access_token"])["prism_namespaces"] == ["orders"]
    assert entry["refresh_token"]


# -- streams across token expiry -----------------------------------------------------------


async def test_streams_across_token_expiry(short_auth_addr: str, short_issuer: OidcIssuer) -> None:
    """One wait past the expiry of short-lived tokens, four streams: a
    subscription and an inbox whose client has a provider reopen themselves
    with a fresh token and go on; a subscription opened with a fixed token,
    and one whose provider has nothing fresher, end with UNAUTHENTICATED."""
    issued: list[str] = []

    async def provider() -> str:
        issued.append(await cc_token_async(short_issuer, "prism-test-all"))
        return issued[-1]

    class InboxProvider:
        async def token(self) -> str:
            return await cc_token_async(short_issuer, "prism-test-all")

    fixed = cc_token(short_issuer, "prism-test-all")
    subscriber = PrismClient(short_auth_addr, namespace="events", token=provider)
    devices = PrismClient(short_auth_addr, namespace="devices", token=InboxProvider())
    with_fixed = PrismClient(short_auth_addr, namespace="events", token=fixed)
    stale = PrismClient(short_auth_addr, namespace="events", token=lambda: fixed)
    try:
        sub = subscriber.pubsub.subscribe("orders.created")
        fixed_sub = with_fixed.pubsub.subscribe("fixed")
        stale_sub = stale.pubsub.subscribe("stale")
        identity = unique("sensor")
        await devices.registry.register(identity, {"type": "sensor"})
        inbox = devices.registry.listen(identity)
        for stream in (sub, fixed_sub, stale_sub, inbox):
            await stream.ready()
        first_id = sub.subscription_id
        first_exp = token_expiry(issued[0])
        assert first_exp is not None
        await subscriber.pubsub.publish("orders.created", b"before")
        assert (await asyncio.wait_for(anext(sub), 10)).payload == b"before"

        # The server ends each stream at its token's exp (UNAUTHENTICATED).
        await asyncio.sleep(max(0.0, first_exp - time.time()) + 1.0)
        deadline = time.monotonic() + 10
        while not (sub.reopens and inbox.reopens) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert time.time() > first_exp
        assert sub.reopens == 1 and inbox.reopens == 1

        # The same iterators yield what is sent after the reopen.
        await subscriber.pubsub.publish("orders.created", b"after")
        assert (await asyncio.wait_for(anext(sub), 10)).payload == b"after"
        assert sub.subscription_id not in (None, first_id)
        assert len(set(issued)) >= 2
        await devices.registry.multicast({"type": "sensor"}, {"n": 1})
        assert (await asyncio.wait_for(anext(inbox), 10)).json() == {"n": 1}

        # A fixed token: the stream ends with the server's reason, raised once.
        with pytest.raises(UnauthenticatedError, match="open it again with a fresh token"):
            await asyncio.wait_for(anext(fixed_sub), 10)
        assert fixed_sub.reopens == 0
        with pytest.raises(StopAsyncIteration):
            await anext(fixed_sub)
        # A provider with no fresher token: raised too, not reopened in a loop.
        with pytest.raises(UnauthenticatedError, match="no fresher token"):
            await asyncio.wait_for(anext(stale_sub), 10)
        assert stale_sub.reopens == 0
        await devices.registry.unregister(identity)
    finally:
        for client in (subscriber, devices, with_fixed, stale):
            await client.close()


@pytest.mark.parametrize("margin", [None, 0.0], ids=["refreshed-early", "refreshed-at-exp"])
async def test_streamed_publishes_go_on_across_token_expiry(
    short_auth_addr: str, short_issuer: OidcIssuer, margin: float | None
) -> None:
    """Publishes kept in flight across a token's expiry share a PublishStream.
    A token refreshed before its `exp` moves new publishes to a stream opened
    with it while the old one answers what it was sent; one refreshed only at
    its `exp` (margin 0) has its stream ended by the server, and the publishes
    it had not answered are sent again with a fresh token (also when the
    server's status raced a write and grpc-python lost it). Either way every
    publish succeeds, each with its own id."""
    issued: list[str] = []

    async def provider() -> str:
        issued.append(await cc_token_async(short_issuer, "prism-test-all"))
        return issued[-1]

    client = PrismClient(
        short_auth_addr,
        namespace="events",
        token=provider,
        token_refresh_margin=DEFAULT_REFRESH_MARGIN if margin is None else margin,
    )
    try:
        await client.pubsub.publish("expiry.stream", b"first")
        first_exp = token_expiry(issued[0])
        assert first_exp is not None
        ids: list[str] = []

        async def publisher(n: int) -> None:
            # Until a second past the first token's exp: always 8 in flight.
            while time.time() < first_exp + 1.0:
                ids.append(await client.pubsub.publish("expiry.stream", f"{n}".encode()))

        await asyncio.wait_for(asyncio.gather(*(publisher(n) for n in range(8))), SHORT_ACCESS_TTL + 20)
        assert len(ids) == len(set(ids)) > 8
        assert len(set(issued)) >= 2, "a fresh token opened the second stream"
    finally:
        await client.close()


async def test_jetstream_group_loses_nothing_across_token_expiry(
    short_issuer: OidcIssuer, nats_server: NatsServer, tmp_path: Path
) -> None:
    """A JetStream consumer group reopened with a fresh token resumes where it
    was: every message published around the expiry arrives."""
    nats_server.reset()
    config = auth_toml(short_issuer.issuer, leeway_secs=0) + (
        f'\n[backends.bus]\ntype = "nats"\nurl = "{nats_server.url}"\njetstream = true\n\n'
        '[namespaces.jobs]\npattern = "pubsub"\nslots = { pubsub = "bus" }\n'
    )
    with run_prism(tmp_path, config) as addr:

        issued: list[str] = []

        async def provider() -> str:
            issued.append(await cc_token_async(short_issuer, "prism-test-all"))
            return issued[-1]

        async def producer_provider() -> str:
            return await cc_token_async(short_issuer, "prism-test-all")

        async with PrismClient(addr, namespace="jobs", token=provider) as consumer, PrismClient(
            addr, namespace="jobs", token=producer_provider
        ) as producer:
            sub = consumer.pubsub.subscribe("work", group="workers")
            await sub.ready()
            exp = token_expiry(issued[0])  # the token the subscription was opened with
            assert exp is not None
            sent: list[bytes] = []
            received: set[bytes] = set()

            async def receive() -> None:
                async for message in sub:
                    received.add(message.payload)

            reader = asyncio.create_task(receive())
            # Publish every 50 ms from before the expiry until well after it
            # (on a separate client, so publishing never waits for the reopen).
            n = 0
            while time.time() < exp + 2.0 or sub.reopens == 0:
                sent.append(f"m{n}".encode())
                await producer.pubsub.publish("work", sent[-1])
                n += 1
                await asyncio.sleep(0.05)
                assert time.time() < exp + 15, "the subscription was not reopened"
            deadline = time.monotonic() + 15
            while set(sent) - received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sub.reopens == 1
            assert set(sent) == received, f"lost: {sorted(set(sent) - received)}"
            await sub.aclose()
            await reader


def test_auth_errors_are_unauthenticated_prism_errors() -> None:
    assert issubclass(AuthError, UnauthenticatedError)
    assert issubclass(LoginRequiredError, AuthError)
    assert issubclass(UnauthenticatedError, PrismError)
