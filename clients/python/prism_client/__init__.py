"""Asyncio client for the Prism data access gateway."""

from .auth import DeviceAuthorization, DeviceLogin, OidcTokenProvider, TokenProvider, TokenSet, TokenStore
from .client import PrismClient
from .errors import (
    AlreadyExistsError,
    AuthError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    KeyNotFoundError,
    LoginRequiredError,
    NamespaceNotFoundError,
    NotFoundError,
    OAuthError,
    PermissionDeniedError,
    PrismError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from .keyvalue import KeyValue
from .pubsub import Message, PubSub, Subscription
from .registry import Identity, Inbox, InboxMessage, MulticastResult, Registry

__all__ = [
    "AlreadyExistsError",
    "AuthError",
    "DeadlineExceededError",
    "DeviceAuthorization",
    "DeviceLogin",
    "FailedPreconditionError",
    "Identity",
    "Inbox",
    "InboxMessage",
    "InternalError",
    "InvalidArgumentError",
    "KeyNotFoundError",
    "KeyValue",
    "LoginRequiredError",
    "Message",
    "MulticastResult",
    "NamespaceNotFoundError",
    "NotFoundError",
    "OAuthError",
    "OidcTokenProvider",
    "PermissionDeniedError",
    "PrismClient",
    "PrismError",
    "PubSub",
    "Registry",
    "ResourceExhaustedError",
    "Subscription",
    "TokenProvider",
    "TokenSet",
    "TokenStore",
    "UnauthenticatedError",
    "UnavailableError",
]
