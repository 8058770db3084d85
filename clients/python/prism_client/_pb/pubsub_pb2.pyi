from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlowConsumerPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLOW_CONSUMER_POLICY_UNSPECIFIED: _ClassVar[SlowConsumerPolicy]
    SLOW_CONSUMER_POLICY_DROP_OLDEST: _ClassVar[SlowConsumerPolicy]
    SLOW_CONSUMER_POLICY_DISCONNECT: _ClassVar[SlowConsumerPolicy]
SLOW_CONSUMER_POLICY_UNSPECIFIED: SlowConsumerPolicy
SLOW_CONSUMER_POLICY_DROP_OLDEST: SlowConsumerPolicy
SLOW_CONSUMER_POLICY_DISCONNECT: SlowConsumerPolicy

class PublishRequest(_message.Message):
    __slots__ = ("topic", "payload", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    topic: str
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, topic: _Optional[str] = ..., payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("id", "timestamp_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    timestamp_ms: int
    def __init__(self, id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class BatchMessage(_message.Message):
    __slots__ = ("payload", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PublishBatchRequest(_message.Message):
    __slots__ = ("topic", "messages")
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[BatchMessage]
    def __init__(self, topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[BatchMessage, _Mapping]]] = ...) -> None: ...

class PublishBatchResponse(_message.Message):
    __slots__ = ("published",)
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    published: _containers.RepeatedCompositeFieldContainer[PublishResponse]
    def __init__(self, published: _Optional[_Iterable[_Union[PublishResponse, _Mapping]]] = ...) -> None: ...

class PublishStreamRequest(_message.Message):
    __slots__ = ("sequence", "topic", "messages")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    topic: str
    messages: _containers.RepeatedCompositeFieldContainer[BatchMessage]
    def __init__(self, sequence: _Optional[int] = ..., topic: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[BatchMessage, _Mapping]]] = ...) -> None: ...

class PublishStreamResponse(_message.Message):
    __slots__ = ("sequence", "published", "error")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    published: _containers.RepeatedCompositeFieldContainer[PublishResponse]
    error: PublishError
    def __init__(self, sequence: _Optional[int] = ..., published: _Optional[_Iterable[_Union[PublishResponse, _Mapping]]] = ..., error: _Optional[_Union[PublishError, _Mapping]] = ...) -> None: ...

class PublishError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("topic", "group", "manual_ack", "buffer", "slow_consumer", "filter")
    class FilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MANUAL_ACK_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    SLOW_CONSUMER_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    topic: str
    group: str
    manual_ack: bool
    buffer: int
    slow_consumer: SlowConsumerPolicy
    filter: _containers.ScalarMap[str, str]
    def __init__(self, topic: _Optional[str] = ..., group: _Optional[str] = ..., manual_ack: _Optional[bool] = ..., buffer: _Optional[int] = ..., slow_consumer: _Optional[_Union[SlowConsumerPolicy, str]] = ..., filter: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("subscribed", "messages")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    subscribed: Subscribed
    messages: MessageBatch
    def __init__(self, subscribed: _Optional[_Union[Subscribed, _Mapping]] = ..., messages: _Optional[_Union[MessageBatch, _Mapping]] = ...) -> None: ...

class Subscribed(_message.Message):
    __slots__ = ("subscription_id", "topic")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    topic: str
    def __init__(self, subscription_id: _Optional[str] = ..., topic: _Optional[str] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("messages", "dropped")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    dropped: int
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("id", "topic", "payload", "metadata", "timestamp_ms", "delivery_attempt")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    topic: str
    payload: bytes
    metadata: _containers.ScalarMap[str, str]
    timestamp_ms: int
    delivery_attempt: int
    def __init__(self, id: _Optional[str] = ..., topic: _Optional[str] = ..., payload: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., timestamp_ms: _Optional[int] = ..., delivery_attempt: _Optional[int] = ...) -> None: ...

class UnsubscribeRequest(_message.Message):
    __slots__ = ("subscription_id",)
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    def __init__(self, subscription_id: _Optional[str] = ...) -> None: ...

class UnsubscribeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("subscription_id", "message_ids")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, subscription_id: _Optional[str] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("acknowledged",)
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    acknowledged: int
    def __init__(self, acknowledged: _Optional[int] = ...) -> None: ...
