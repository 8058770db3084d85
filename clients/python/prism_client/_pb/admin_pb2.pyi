from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListNamespacesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNamespacesResponse(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceInfo]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceInfo, _Mapping]]] = ...) -> None: ...

class GetNamespaceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Slot(_message.Message):
    __slots__ = ("slot", "backend", "summary", "healthy")
    SLOT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    slot: str
    backend: str
    summary: str
    healthy: bool
    def __init__(self, slot: _Optional[str] = ..., backend: _Optional[str] = ..., summary: _Optional[str] = ..., healthy: _Optional[bool] = ...) -> None: ...

class PatternVersion(_message.Message):
    __slots__ = ("label", "digest", "world")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    label: str
    digest: str
    world: str
    def __init__(self, label: _Optional[str] = ..., digest: _Optional[str] = ..., world: _Optional[str] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("candidate", "canary_percent", "shadow", "calls", "divergences", "divergence_samples")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCES_FIELD_NUMBER: _ClassVar[int]
    DIVERGENCE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    candidate: PatternVersion
    canary_percent: int
    shadow: bool
    calls: int
    divergences: int
    divergence_samples: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, candidate: _Optional[_Union[PatternVersion, _Mapping]] = ..., canary_percent: _Optional[int] = ..., shadow: _Optional[bool] = ..., calls: _Optional[int] = ..., divergences: _Optional[int] = ..., divergence_samples: _Optional[_Iterable[str]] = ...) -> None: ...

class NamespaceInfo(_message.Message):
    __slots__ = ("name", "pattern", "previous", "rollout", "slots", "settings", "limits", "source", "live_instances", "idle_instances", "calls", "traps", "in_flight", "revision", "replicas", "stale")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LIVE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    IDLE_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    TRAPS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    pattern: PatternVersion
    previous: PatternVersion
    rollout: Rollout
    slots: _containers.RepeatedCompositeFieldContainer[Slot]
    settings: _containers.ScalarMap[str, str]
    limits: _containers.ScalarMap[str, str]
    source: str
    live_instances: int
    idle_instances: int
    calls: int
    traps: int
    in_flight: int
    revision: int
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaState]
    stale: bool
    def __init__(self, name: _Optional[str] = ..., pattern: _Optional[_Union[PatternVersion, _Mapping]] = ..., previous: _Optional[_Union[PatternVersion, _Mapping]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ..., slots: _Optional[_Iterable[_Union[Slot, _Mapping]]] = ..., settings: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Mapping[str, str]] = ..., source: _Optional[str] = ..., live_instances: _Optional[int] = ..., idle_instances: _Optional[int] = ..., calls: _Optional[int] = ..., traps: _Optional[int] = ..., in_flight: _Optional[int] = ..., revision: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[ReplicaState, _Mapping]]] = ..., stale: _Optional[bool] = ...) -> None: ...

class ReplicaState(_message.Message):
    __slots__ = ("replica", "address", "revision", "stale", "reported_at_ms")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    address: str
    revision: int
    stale: bool
    reported_at_ms: int
    def __init__(self, replica: _Optional[str] = ..., address: _Optional[str] = ..., revision: _Optional[int] = ..., stale: _Optional[bool] = ..., reported_at_ms: _Optional[int] = ...) -> None: ...

class CreateNamespaceRequest(_message.Message):
    __slots__ = ("name", "pattern", "slots", "settings", "limits")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    pattern: str
    slots: _containers.ScalarMap[str, str]
    settings: _containers.ScalarMap[str, str]
    limits: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., pattern: _Optional[str] = ..., slots: _Optional[_Mapping[str, str]] = ..., settings: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateNamespaceRequest(_message.Message):
    __slots__ = ("name", "slots", "replace_slots", "settings", "replace_settings", "limits", "replace_limits")
    class SlotsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    slots: _containers.ScalarMap[str, str]
    replace_slots: bool
    settings: _containers.ScalarMap[str, str]
    replace_settings: bool
    limits: _containers.ScalarMap[str, str]
    replace_limits: bool
    def __init__(self, name: _Optional[str] = ..., slots: _Optional[_Mapping[str, str]] = ..., replace_slots: _Optional[bool] = ..., settings: _Optional[_Mapping[str, str]] = ..., replace_settings: _Optional[bool] = ..., limits: _Optional[_Mapping[str, str]] = ..., replace_limits: _Optional[bool] = ...) -> None: ...

class DeleteNamespaceRequest(_message.Message):
    __slots__ = ("name", "purge")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    purge: bool
    def __init__(self, name: _Optional[str] = ..., purge: _Optional[bool] = ...) -> None: ...

class DeleteNamespaceResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class UploadPatternChunk(_message.Message):
    __slots__ = ("label", "data")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    label: str
    data: bytes
    def __init__(self, label: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class PatternInfo(_message.Message):
    __slots__ = ("digest", "label", "world", "size", "uploaded_at_ms", "imports", "scope")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    label: str
    world: str
    size: int
    uploaded_at_ms: int
    imports: _containers.RepeatedScalarFieldContainer[str]
    scope: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digest: _Optional[str] = ..., label: _Optional[str] = ..., world: _Optional[str] = ..., size: _Optional[int] = ..., uploaded_at_ms: _Optional[int] = ..., imports: _Optional[_Iterable[str]] = ..., scope: _Optional[_Iterable[str]] = ...) -> None: ...

class DeletePatternRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class DeletePatternResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListPatternsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPatternsResponse(_message.Message):
    __slots__ = ("patterns",)
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedCompositeFieldContainer[PatternInfo]
    def __init__(self, patterns: _Optional[_Iterable[_Union[PatternInfo, _Mapping]]] = ...) -> None: ...

class DeployPatternRequest(_message.Message):
    __slots__ = ("namespace", "pattern", "canary_percent", "shadow")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    CANARY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    pattern: str
    canary_percent: int
    shadow: bool
    def __init__(self, namespace: _Optional[str] = ..., pattern: _Optional[str] = ..., canary_percent: _Optional[int] = ..., shadow: _Optional[bool] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...
