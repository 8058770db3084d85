"""PrismClient: one gRPC channel to a Prism server, scoped to a namespace."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from types import TracebackType

import grpc

from ._pb.admin_pb2_grpc import AdminStub
from ._pb.keyvalue_pb2_grpc import KeyValueStub
from ._pb.pubsub_pb2_grpc import PubSubStub
from ._pb.registry_pb2_grpc import RegistryStub
from ._rpc import NAMESPACE_METADATA, Calls
from .admin import Admin
from .auth import DEFAULT_REFRESH_MARGIN, Credentials, TokenSource
from .errors import InvalidArgumentError
from .keyvalue import KeyValue
from .pubsub import PubSub
from .registry import Registry

__all__ = ["NAMESPACE_METADATA", "PrismClient"]

# Large values (MiBs) must fit; the server enforces its own limits.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Calls that may run twice with the same outcome and the same answer: gRPC
# retries them (on another replica when given several addresses) when one
# fails UNAVAILABLE. Publish, Multicast and Register could deliver or create
# twice; Delete, Unregister and Ack would answer differently the second time
# (nothing left to remove): none of those is retried.
_IDEMPOTENT = {
    "prism.v1.KeyValue": ["Get", "Exists", "Scan", "BatchGet", "Set", "BatchSet"],
    "prism.v1.PubSub": ["Unsubscribe"],
    "prism.v1.Registry": ["Get", "Enumerate", "Heartbeat"],
}
_RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": service, "method": method} for service, methods in _IDEMPOTENT.items() for method in methods],
                "retryPolicy": _RETRY_POLICY,
            }
        ],
    }
)


def _target(address: str | Sequence[str]) -> tuple[str, str | None]:
    """The gRPC target for one address, or a static list of replicas
    (resolved once, now, balanced round-robin: `ipv4:a:1,b:2` /
    `ipv6:[a]:1,...`; for replicas whose addresses change, give one DNS
    name that resolves to all of them, e.g. `dns:///prism.svc:8980`),
    and the `:authority` to send: gRPC would send the whole list, which is
    no valid authority, and servers reset such streams."""
    if isinstance(address, str):
        return address, None
    addresses = list(address)
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        raise InvalidArgumentError("address must be 'host:port' or a non-empty list of them")
    if len(addresses) == 1:
        return addresses[0], None
    v4: list[str] = []
    v6: list[str] = []
    for entry in addresses:
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidArgumentError(f"{entry!r} is not host:port")
        host = host.strip("[]")
        try:
            ips = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as err:
                raise InvalidArgumentError(f"cannot resolve {entry!r}: {err}") from None
            ips = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
        for ip in ips:
            (v4 if ip.version == 4 else v6).append(f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}")
    if v4 and v6:
        # One static target holds one address family.
        raise InvalidArgumentError(f"the replicas mix IPv4 and IPv6 addresses ({v4[0]}, {v6[0]}); give one family")
    if v4:
        return "ipv4:" + ",".join(v4), addresses[0]
    return "ipv6:" + ",".join(v6), addresses[0]


class PrismClient:
    """An asyncio client. Use as `async with PrismClient(...) as client:` or
    call `await client.close()` when done.

    `address`: "host:port", or a list of several replicas' addresses
    (`PrismClient(["10.0.0.1:8980", "10.0.0.2:8980"])`): calls are balanced
    round-robin over them, and calls that can safely run twice (reads, Set,
    BatchSet, Heartbeat, Unsubscribe) are retried when they fail UNAVAILABLE,
    on another replica when one went away. Publish, Multicast, Register,
    Delete, Unregister and Ack are never retried.

    `timeout` (seconds) bounds every call; None waits as long as the server takes.
    Subscriptions (`client.pubsub.subscribe`) and inboxes (`client.registry.listen`)
    are long-lived and not bounded by it.

    `token` authenticates every call (metadata `authorization: Bearer <token>`):
    a `str` (a JWT, sent as it is), or a provider of the current token — a
    callable returning it (sync or async) or an object with
    `async def token(self) -> str` (`prism_client.auth.TokenProvider`, e.g.
    `OidcTokenProvider`). A provider is asked again before a call whenever the
    token the client holds is within `token_refresh_margin` seconds of its
    `exp` (capped at half the token's lifetime; a token whose `exp` cannot be
    read is asked for before every call). A subscription or inbox the server
    ends because its token expired is reopened with a fresh one.
    """

    def __init__(
        self,
        address: str | Sequence[str] = "localhost:8980",
        *,
        namespace: str = "default",
        token: TokenSource | None = None,
        timeout: float | None = 30.0,
        token_refresh_margin: float = DEFAULT_REFRESH_MARGIN,
    ) -> None:
        self.address = address
        self.namespace = namespace
        options = [
            ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
        ]
        credentials = Credentials(token, token_refresh_margin) if token is not None else None
        self._calls = Calls(namespace, credentials, timeout)
        target, authority = _target(address)
        if authority is not None:
            options.append(("grpc.default_authority", authority))
        self._channel = grpc.aio.insecure_channel(target, options=options)
        stub = KeyValueStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.keyvalue = KeyValue(stub, self._calls)
        pubsub_stub = PubSubStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.pubsub = PubSub(pubsub_stub, self._calls)
        registry_stub = RegistryStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.registry = Registry(registry_stub, self._calls)
        admin_stub = AdminStub(self._channel)  # type: ignore[no-untyped-call]  # generated, untyped
        self.admin = Admin(admin_stub, self._calls)

    async def close(self) -> None:
        """Closes open subscriptions and inboxes and releases the channel; calls after this fail."""
        await self.pubsub.close()
        await self.registry.close()
        await self._channel.close()

    async def __aenter__(self) -> PrismClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
