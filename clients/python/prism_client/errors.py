"""The PrismError hierarchy: every failure a call can raise. No raw gRPC
error escapes the client; each status code maps to one class here."""

from __future__ import annotations

import grpc


class PrismError(Exception):
    """Base of every error the client raises."""

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFoundError(PrismError):
    """The thing asked for does not exist (for example an unknown namespace)."""


class KeyNotFoundError(NotFoundError, KeyError):
    """The key (or registry identity) is absent or expired."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class NamespaceNotFoundError(NotFoundError):
    """The server has no such namespace."""


class AlreadyExistsError(PrismError):
    """The thing to create exists already (a registry identity registered
    with `replace=False`)."""


class InvalidArgumentError(PrismError, ValueError):
    """The request was malformed: bad key, value too large, bad TTL or cursor."""


class ResourceExhaustedError(PrismError):
    """A limit was hit (backend capacity, instance limit); retry later."""


class UnavailableError(PrismError):
    """Prism or its backend cannot be reached right now; retry later."""


class UnauthenticatedError(PrismError):
    """The request carried no valid credentials: no token, a malformed,
    expired or untrusted one, or the client could not obtain one (see
    `AuthError`)."""


class AuthError(UnauthenticatedError):
    """Obtaining a token failed on the client side: the token provider
    failed, the issuer could not be reached, or answered an error."""


class OAuthError(AuthError):
    """The OAuth 2.0 / OpenID Connect issuer answered an error
    (`{"error": ..., "error_description": ...}`): `error` is its code, for
    example `access_denied`, `expired_token` or `invalid_grant`."""

    def __init__(self, message: str, error: str, description: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.error = error
        self.description = description
        self.status = status


class LoginRequiredError(AuthError):
    """There is no usable stored token and no interactive login may be run:
    log in first (`prism-login`)."""


class PermissionDeniedError(PrismError):
    """The caller may not use this namespace or operation."""


class FailedPreconditionError(PrismError):
    """The namespace cannot serve this kind of request (e.g. wrong pattern)."""


class DeadlineExceededError(PrismError):
    """The call did not finish within its timeout."""


class InternalError(PrismError):
    """The namespace's pattern failed (trapped) while serving the request."""


class AbortedError(PrismError):
    """Another writer changed the same thing at the same moment (an Admin
    change racing another replica's): nothing was changed; send it again."""


_BY_CODE: dict[grpc.StatusCode, type[PrismError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.ABORTED: AbortedError,
}


def from_rpc_error(err: grpc.aio.AioRpcError, *, key: str | None = None) -> PrismError:
    """The PrismError for a failed call; `key` marks NOT_FOUND as a missing key."""
    code = err.code()
    return from_status(code, err.details() or code.name, key=key)


def from_status(code: grpc.StatusCode, message: str, *, key: str | None = None) -> PrismError:
    """The PrismError for a status (a failed call's, or one answered in a stream)."""
    if code == grpc.StatusCode.NOT_FOUND:
        if "namespace" in message and "not configured" in message:
            return NamespaceNotFoundError(message, code)
        if key is not None:
            return KeyNotFoundError(message, code)
    cls = _BY_CODE.get(code, PrismError)
    return cls(message, code)
