"""The Admin API of a PrismClient (`client.admin`): namespaces, uploaded
patterns and rollouts, with typed results, for platforms that automate
tenants without shelling out to `prism admin`.

Admin calls are never retried by the client: a change that failed
UNAVAILABLE may or may not have been made (read it back with
`get_namespace`), and one refused ABORTED (another replica of a fleet
changed the same namespace at the same moment) changed nothing and may be
sent again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from ._pb import admin_pb2 as pb
from ._pb.admin_pb2_grpc import AdminStub
from ._rpc import Calls
from .errors import InvalidArgumentError

# Uploads are sent in chunks of this size (the server takes messages up to
# its max_message_bytes, 16 MiB by default).
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PatternVersion:
    label: str
    digest: str
    world: str


@dataclass(frozen=True)
class Rollout:
    """A canary (a share of calls) or shadow (mirrored reads) in progress."""

    candidate: PatternVersion | None
    canary_percent: int
    shadow: bool
    calls: int
    divergences: int
    divergence_samples: list[str]


@dataclass(frozen=True)
class Slot:
    slot: str
    backend: str
    summary: str
    healthy: bool


@dataclass(frozen=True)
class ReplicaState:
    """What one replica of a fleet serves of a namespace (see `NamespaceInfo.replicas`)."""

    replica: str
    address: str
    revision: int
    stale: bool
    reported_at_ms: int


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    pattern: PatternVersion | None
    previous: PatternVersion | None
    rollout: Rollout | None
    slots: list[Slot]
    settings: dict[str, str]
    limits: dict[str, str]
    source: str
    live_instances: int
    idle_instances: int
    calls: int
    traps: int
    in_flight: int
    # With `[admin] store`: the revision the answering replica serves, and
    # every replica's (a deploy has reached the fleet when they all match).
    revision: int = 0
    replicas: list[ReplicaState] = field(default_factory=list)
    # The answering replica serves its last applied state unconfirmed (the
    # control store does not answer); it catches up by itself.
    stale: bool = False


@dataclass(frozen=True)
class PatternInfo:
    digest: str
    label: str
    world: str
    size: int
    uploaded_at_ms: int
    imports: list[str]
    scope: list[str]


def _version(message: pb.PatternVersion, present: bool) -> PatternVersion | None:
    if not present:
        return None
    return PatternVersion(label=message.label, digest=message.digest, world=message.world)


def _namespace(m: pb.NamespaceInfo) -> NamespaceInfo:
    rollout = None
    if m.HasField("rollout"):
        r = m.rollout
        rollout = Rollout(
            candidate=_version(r.candidate, r.HasField("candidate")),
            canary_percent=r.canary_percent,
            shadow=r.shadow,
            calls=r.calls,
            divergences=r.divergences,
            divergence_samples=list(r.divergence_samples),
        )
    return NamespaceInfo(
        name=m.name,
        pattern=_version(m.pattern, m.HasField("pattern")),
        previous=_version(m.previous, m.HasField("previous")),
        rollout=rollout,
        slots=[Slot(slot=s.slot, backend=s.backend, summary=s.summary, healthy=s.healthy) for s in m.slots],
        settings=dict(m.settings),
        limits=dict(m.limits),
        source=m.source,
        live_instances=m.live_instances,
        idle_instances=m.idle_instances,
        calls=m.calls,
        traps=m.traps,
        in_flight=m.in_flight,
        revision=m.revision,
        replicas=[
            ReplicaState(
                replica=r.replica,
                address=r.address,
                revision=r.revision,
                stale=r.stale,
                reported_at_ms=r.reported_at_ms,
            )
            for r in m.replicas
        ],
        stale=m.stale,
    )


def _pattern(m: pb.PatternInfo) -> PatternInfo:
    return PatternInfo(
        digest=m.digest,
        label=m.label,
        world=m.world,
        size=m.size,
        uploaded_at_ms=m.uploaded_at_ms,
        imports=list(m.imports),
        scope=list(m.scope),
    )


def _texts(name: str, values: Mapping[str, object] | None) -> dict[str, str]:
    """Settings and limits travel as text ("100", "2000")."""
    if values is None:
        return {}
    out: dict[str, str] = {}
    for key, value in values.items():
        if not isinstance(key, str) or isinstance(value, (bytes, bytearray)) or value is None:
            raise InvalidArgumentError(f"{name} must map names to values, got {key!r}: {value!r}")
        out[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


class Admin:
    """Namespaces, uploads and rollouts of the server (or fleet) the client talks to."""

    def __init__(self, stub: AdminStub, calls: Calls) -> None:
        self._stub = stub
        self._calls = calls

    async def list_namespaces(self) -> list[NamespaceInfo]:
        reply = await self._calls.unary(self._stub.ListNamespaces, pb.ListNamespacesRequest())
        return [_namespace(n) for n in reply.namespaces]

    async def get_namespace(self, name: str) -> NamespaceInfo:
        """Raises NotFoundError if there is no such namespace."""
        return _namespace(await self._calls.unary(self._stub.GetNamespace, pb.GetNamespaceRequest(name=name)))

    async def create_namespace(
        self,
        name: str,
        pattern: str,
        slots: Mapping[str, str],
        *,
        settings: Mapping[str, object] | None = None,
        limits: Mapping[str, object] | None = None,
    ) -> NamespaceInfo:
        """`pattern`: a built-in name ("keyvalue") or an upload's digest;
        `slots`: capability -> backend name (`{"kv": "redis"}`)."""
        request = pb.CreateNamespaceRequest(
            name=name,
            pattern=pattern,
            slots=dict(slots),
            settings=_texts("settings", settings),
            limits=_texts("limits", limits),
        )
        return _namespace(await self._calls.unary(self._stub.CreateNamespace, request))

    async def update_namespace(
        self,
        name: str,
        *,
        slots: Mapping[str, str] | None = None,
        settings: Mapping[str, object] | None = None,
        limits: Mapping[str, object] | None = None,
        replace_slots: bool = False,
        replace_settings: bool = False,
        replace_limits: bool = False,
    ) -> NamespaceInfo:
        """Merges the maps given into the namespace's (each replaces it whole
        with `replace_*`). On a fleet, an update racing another replica's is
        applied over the winner's, so neither is lost."""
        request = pb.UpdateNamespaceRequest(
            name=name,
            slots=dict(slots or {}),
            replace_slots=replace_slots,
            settings=_texts("settings", settings),
            replace_settings=replace_settings,
            limits=_texts("limits", limits),
            replace_limits=replace_limits,
        )
        return _namespace(await self._calls.unary(self._stub.UpdateNamespace, request))

    async def delete_namespace(self, name: str, *, purge: bool = False) -> int:
        """Deletes it (streams end, calls in flight finish); with `purge` its
        data goes too. Returns how many keys or identities were purged."""
        reply = await self._calls.unary(self._stub.DeleteNamespace, pb.DeleteNamespaceRequest(name=name, purge=purge))
        purged: int = reply.purged
        return purged

    async def upload_pattern(self, component: bytes, label: str = "") -> PatternInfo:
        """Uploads a wasm component (checked against the worlds and
        precompiled by the server); returns it with its digest."""
        if not isinstance(component, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"component must be bytes, got {type(component).__name__}")
        data = bytes(component)
        if not data:
            raise InvalidArgumentError("component is empty")

        async def chunks() -> AsyncIterator[pb.UploadPatternChunk]:
            for offset in range(0, len(data), _CHUNK):
                yield pb.UploadPatternChunk(label=label if offset == 0 else "", data=data[offset : offset + _CHUNK])

        return _pattern(await self._calls.unary(self._stub.UploadPattern, chunks()))

    async def list_patterns(self) -> list[PatternInfo]:
        """Built-in patterns, then the uploads the caller may see (newest first)."""
        reply = await self._calls.unary(self._stub.ListPatterns, pb.ListPatternsRequest())
        return [_pattern(p) for p in reply.patterns]

    async def delete_pattern(self, digest: str) -> bool:
        """Takes the caller's namespaces out of an upload's scope; returns
        whether the component itself is gone."""
        reply = await self._calls.unary(self._stub.DeletePattern, pb.DeletePatternRequest(digest=digest))
        removed: bool = reply.removed
        return removed

    async def deploy(self, namespace: str, pattern: str, *, canary_percent: int = 0, shadow: bool = False) -> NamespaceInfo:
        """Serves `namespace` with `pattern` (a digest or built-in name): at
        once, to `canary_percent` of calls, or as a `shadow` of reads."""
        request = pb.DeployPatternRequest(namespace=namespace, pattern=pattern, canary_percent=canary_percent, shadow=shadow)
        return _namespace(await self._calls.unary(self._stub.DeployPattern, request))

    async def promote(self, namespace: str) -> NamespaceInfo:
        """Makes the canary or shadow the serving version."""
        return _namespace(await self._calls.unary(self._stub.Promote, pb.PromoteRequest(namespace=namespace)))

    async def rollback(self, namespace: str) -> NamespaceInfo:
        """Drops a canary or shadow; without one, returns to the previous version."""
        return _namespace(await self._calls.unary(self._stub.Rollback, pb.RollbackRequest(namespace=namespace)))
