"""Authentication for `PrismClient`: bearer tokens, token providers, and the
OAuth 2.0 Device Authorization Grant (RFC 8628) against an OpenID Connect
issuer, with tokens stored in `~/.prism/token` and refreshed before they
expire.

`PrismClient(..., token=...)` takes

* a `str`: a JWT, sent as it is with every call;
* a provider: a callable returning the current token (sync or `async`), or
  an object with `async def token(self) -> str` (`TokenProvider`), such as
  `OidcTokenProvider`. The client asks it again whenever the token it holds
  is within `token_refresh_margin` seconds of its `exp`.

For people at a terminal:

    provider = OidcTokenProvider("https://login.example.com", client_id="prism-cli")
    async with PrismClient("prism:8980", namespace="orders", token=provider) as client:
        ...

runs the device flow the first time (it prints a URL and a code to open in
a browser), stores the tokens, and from then on refreshes them with the
refresh token. `prism-login --issuer URL --client-id prism-cli` does the
login ahead of time. Only the standard library is used: HTTP requests run
in a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import inspect
import ipaddress
import json
import os
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

from .errors import AuthError, InvalidArgumentError, LoginRequiredError, OAuthError, PrismError, UnauthenticatedError

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_SCOPE",
    "TOKEN_FILE_ENV",
    "DeviceAuthorization",
    "DeviceLogin",
    "OidcTokenProvider",
    "TokenProvider",
    "TokenSet",
    "TokenSource",
    "TokenStore",
    "default_token_file",
    "jwt_claims",
    "main",
    "print_prompt",
    "token_expiry",
]

#: The public OAuth client the Prism CLI tools use by default.
DEFAULT_CLIENT_ID = "prism-cli"
#: `offline_access` is what makes the issuer hand out a refresh token.
DEFAULT_SCOPE = "openid offline_access"
#: Environment variable naming the token file (default `~/.prism/token`).
TOKEN_FILE_ENV = "PRISM_TOKEN_FILE"
#: Seconds before `exp` at which a token is refreshed (capped at half its lifetime).
DEFAULT_REFRESH_MARGIN = 60.0

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 3.2: the polling interval when the issuer names none, and
# what `slow_down` adds to it (section 3.5).
_DEFAULT_INTERVAL = 5.0
_SLOW_DOWN_STEP = 5.0
_HTTP_TIMEOUT = 10.0
_STORE_VERSION = 1


# -- tokens and providers --------------------------------------------------------


@runtime_checkable
class TokenProvider(Protocol):
    """Anything that hands out the current access token (a JWT)."""

    async def token(self) -> str:
        """The access token to send now; called again when it nears its `exp`."""
        ...


#: What `PrismClient(token=...)` takes: a fixed token or something that gives the current one.
TokenSource: TypeAlias = str | TokenProvider | Callable[[], str] | Callable[[], Awaitable[str]]


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, decoded **without verifying** anything (only to
    read `exp` and the like); `{}` when `token` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def token_expiry(token: str) -> float | None:
    """The `exp` of a JWT (seconds since the epoch), read without verifying it;
    None when it has none or is not a JWT."""
    return _number(jwt_claims(token).get("exp"))


def _refresh_due(expires_at: float | None, issued_at: float | None, margin: float, now: float) -> bool:
    """Whether a token expiring at `expires_at` should be replaced now: within
    `margin` seconds of expiry, the margin capped at half the token's lifetime
    (so a 10-second token is used for 5 seconds, not never)."""
    if expires_at is None:
        return True
    if issued_at is not None and expires_at > issued_at:
        margin = min(margin, (expires_at - issued_at) / 2)
    return now >= expires_at - margin


@dataclass(frozen=True)
class BearerToken:
    """A token the client sends, with the `exp`/`iat` read from it (if a JWT)."""

    value: str
    expires_at: float | None
    issued_at: float | None

    @classmethod
    def parse(cls, value: str) -> BearerToken:
        claims = jwt_claims(value)
        return cls(value, _number(claims.get("exp")), _number(claims.get("iat")))


class Credentials:
    """The token source of one client: a fixed token, or a provider whose
    token is cached until it is within `refresh_margin` seconds of its `exp`
    (a token without a readable `exp` is asked for before every call)."""

    def __init__(self, source: TokenSource, refresh_margin: float = DEFAULT_REFRESH_MARGIN) -> None:
        if isinstance(refresh_margin, bool) or not isinstance(refresh_margin, (int, float)) or refresh_margin < 0:
            raise InvalidArgumentError(
                f"token_refresh_margin must be a non-negative number of seconds, got {refresh_margin!r}"
            )
        self._margin = float(refresh_margin)
        self._fetch: Callable[[], object] | None
        self._current: BearerToken | None
        if isinstance(source, str):
            try:
                self._fetch, self._current = None, BearerToken.parse(_check_token(source, "token"))
            except UnauthenticatedError as err:
                raise InvalidArgumentError(err.message) from None
        else:
            method = getattr(source, "token", None)
            if callable(method):
                self._fetch = method
            elif callable(source):
                self._fetch = source
            else:
                raise TypeError(
                    "token must be a str, a callable returning the token (sync or async), "
                    f"or an object with `async def token(self) -> str`; got {type(source).__name__}"
                )
            self._current = None
        self._lock: asyncio.Lock | None = None

    @property
    def refreshable(self) -> bool:
        """Whether a fresh token can be asked for (a provider, not a fixed token)."""
        return self._fetch is not None

    async def get(self) -> BearerToken:
        """The token to send now. Raises UnauthenticatedError (or the
        provider's own PrismError) when the provider fails."""
        current = self._current
        if self._fetch is None:
            assert current is not None
            return current
        if current is not None and not self._due(current):
            return current
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one provider call at a time; the others reuse its token
            current = self._current
            if current is not None and not self._due(current):
                return current
            fresh = BearerToken.parse(await self._call_provider())
            self._current = fresh
            return fresh

    def invalidate(self, token: BearerToken) -> None:
        """Forget `token` (the server says it expired): the next `get` asks the provider."""
        if self._fetch is not None and self._current is not None and self._current.value == token.value:
            self._current = None

    def _due(self, token: BearerToken) -> bool:
        return _refresh_due(token.expires_at, token.issued_at, self._margin, time.time())

    async def _call_provider(self) -> str:
        assert self._fetch is not None
        try:
            result = self._fetch()
            if inspect.isawaitable(result):
                result = await result
        except PrismError:
            raise
        except Exception as err:  # noqa: BLE001  (no foreign error escapes the client)
            raise AuthError(f"the token provider failed: {err!r}") from err
        if not isinstance(result, str):
            raise AuthError(f"the token provider returned {type(result).__name__}, not a token (str)")
        return _check_token(result, "the token provider's token")


def _check_token(token: str, what: str) -> str:
    token = token.strip()
    if not token:
        raise UnauthenticatedError(f"{what} is empty")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise UnauthenticatedError(f"{what} contains characters a bearer token cannot have (spaces, control or non-ASCII)")
    return token


# -- OAuth 2.0 / OpenID Connect over HTTP -----------------------------------------


@dataclass(frozen=True)
class TokenSet:
    """Tokens from an issuer's token endpoint. Times are seconds since the epoch."""

    access_token: str
    expires_at: float | None = None  # the access token's `exp` (or now + `expires_in`)
    issued_at: float | None = None  # its `iat` (or when it was received)
    refresh_token: str | None = None
    id_token: str | None = None
    token_type: str = "Bearer"
    scope: str | None = None

    @classmethod
    def from_response(cls, data: Mapping[str, Any], now: float | None = None) -> TokenSet:
        """From a token endpoint response (RFC 6749 section 5.1)."""
        now = time.time() if now is None else now
        access = data.get("access_token")
        if not isinstance(access, str) or not access:
            raise AuthError("the issuer's token response has no access_token")
        token_type = data.get("token_type") or "Bearer"
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise AuthError(f"the issuer issued a {token_type!r} token; Prism takes Bearer tokens")
        claims = jwt_claims(access)
        expires_at = _number(claims.get("exp"))
        if expires_at is None:
            expires_in = _number(data.get("expires_in"))
            expires_at = now + expires_in if expires_in is not None else None
        issued_at = _number(claims.get("iat")) or now
        refresh = data.get("refresh_token")
        id_token = data.get("id_token")
        scope = data.get("scope")
        return cls(
            access_token=access,
            expires_at=expires_at,
            issued_at=issued_at,
            refresh_token=refresh if isinstance(refresh, str) and refresh else None,
            id_token=id_token if isinstance(id_token, str) and id_token else None,
            token_type="Bearer",
            scope=scope if isinstance(scope, str) else None,
        )

    def claims(self) -> dict[str, Any]:
        """The access token's claims (not verified)."""
        return jwt_claims(self.access_token)

    def refresh_due(self, margin: float = DEFAULT_REFRESH_MARGIN, now: float | None = None) -> bool:
        """Whether the access token is within `margin` seconds of expiring
        (the margin capped at half its lifetime)."""
        return _refresh_due(self.expires_at, self.issued_at, margin, time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at

    def _to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def _from_json(cls, data: Any) -> TokenSet | None:
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str) or not data["access_token"]:
            return None

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            access_token=data["access_token"],
            expires_at=_number(data.get("expires_at")),
            issued_at=_number(data.get("issued_at")),
            refresh_token=text("refresh_token"),
            id_token=text("id_token"),
            scope=data["scope"] if isinstance(data.get("scope"), str) else None,
        )


@dataclass(frozen=True)
class DeviceAuthorization:
    """The issuer's answer to a device authorization request (RFC 8628 section 3.2):
    the user opens `verification_uri` and enters `user_code` (or opens
    `verification_uri_complete`, which carries the code)."""

    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float  # seconds the codes are valid for
    interval: float  # seconds between two polls

    @classmethod
    def from_response(cls, data: Mapping[str, Any]) -> DeviceAuthorization:
        def text(key: str, *aliases: str) -> str | None:
            for k in (key, *aliases):
                value = data.get(k)
                if isinstance(value, str) and value:
                    return value
            return None

        device_code, user_code = text("device_code"), text("user_code")
        uri = text("verification_uri", "verification_url")  # some issuers spell it _url
        if device_code is None or user_code is None or uri is None:
            raise AuthError("the issuer's device authorization response lacks device_code, user_code or verification_uri")
        expires_in = _number(data.get("expires_in")) or 600.0
        interval = _number(data.get("interval")) or _DEFAULT_INTERVAL
        return cls(
            device_code=device_code,
            user_code=user_code,
            verification_uri=uri,
            verification_uri_complete=text("verification_uri_complete", "verification_url_complete"),
            expires_in=expires_in,
            interval=max(interval, 1.0),
        )


def print_prompt(authorization: DeviceAuthorization) -> None:
    """The default `prompt`: tells the user on stderr where to approve the login."""
    lines = ["To sign in to Prism, open this address in a browser:"]
    if authorization.verification_uri_complete:
        lines += [f"    {authorization.verification_uri_complete}", "or go to"]
    lines += [
        f"    {authorization.verification_uri}",
        f"and enter the code {authorization.user_code}",
        f"(waiting for approval; the code expires in {max(1, round(authorization.expires_in / 60))} min)",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _normalize_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def _check_http_url(url: str, what: str) -> None:
    """HTTPS, or plain HTTP to a loopback address (a local test issuer)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname:
        host = parsed.hostname
        if host == "localhost":
            return
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(host).is_loopback:
                return
        raise AuthError(f"{what} {url!r} is plain http to a remote host; tokens only travel over https")
    raise AuthError(f"{what} {url!r} is not an http(s) URL")


def _request_json(url: str, form: Mapping[str, str] | None, timeout: float) -> dict[str, Any]:
    """GET (form None) or POST a form; the JSON object answered. Raises
    OAuthError for an error response, AuthError when the issuer is unreachable
    or answers something else. Blocking: run it in a thread."""
    headers = {"Accept": "application/json"}
    data = None
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if form is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) checked)
            body = response.read()
    except urllib.error.HTTPError as err:
        raw = err.read().decode(errors="replace")
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            code = payload["error"]
            description = payload.get("error_description")
            description = description if isinstance(description, str) else None
            message = f"{code}: {description}" if description else code
            raise OAuthError(f"the issuer refused ({message})", code, description, err.code) from None
        raise OAuthError(f"HTTP {err.code} from {url}: {raw[:200]}", "http_error", None, err.code) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise AuthError(f"cannot reach the issuer at {url}: {reason}") from None
    try:
        payload = json.loads(body)
    except ValueError:
        raise AuthError(f"{url} did not answer JSON") from None
    if not isinstance(payload, dict):
        raise AuthError(f"{url} did not answer a JSON object")
    return payload


class DeviceLogin:
    """The OAuth 2.0 Device Authorization Grant (RFC 8628) and the refresh
    grant against one OpenID Connect issuer, for one (public) client.

    The endpoints come from `<issuer>/.well-known/openid-configuration`.
    `resource` (RFC 8707) names the API the tokens are for (for example
    `urn:prism`); None leaves it to the issuer's default.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str = DEFAULT_CLIENT_ID,
        *,
        scope: str = DEFAULT_SCOPE,
        resource: str | None = None,
        http_timeout: float = _HTTP_TIMEOUT,
    ) -> None:
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("issuer must be the issuer's URL")
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty str")
        self.issuer = _normalize_issuer(issuer)
        self.client_id = client_id
        self.scope = scope
        self.resource = resource
        self.http_timeout = http_timeout
        self._discovery: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"DeviceLogin(issuer={self.issuer!r}, client_id={self.client_id!r})"

    # -- async API ------------------------------------------------------------------

    async def discover(self) -> dict[str, Any]:
        """The issuer's OpenID Connect discovery document (fetched once)."""
        return await asyncio.to_thread(self.discover_sync)

    async def start(self) -> DeviceAuthorization:
        """Asks for a device code and a user code (RFC 8628 section 3.1)."""
        return await asyncio.to_thread(self.start_sync)

    async def poll(self, authorization: DeviceAuthorization) -> TokenSet:
        """Polls the token endpoint until the user approved (RFC 8628 section 3.4):
        waits `interval` seconds between polls, 5 more after each `slow_down`,
        keeps going on `authorization_pending` (and on network errors), and
        raises OAuthError on `access_denied`, `expired_token` (also when the
        codes' lifetime is over) or any other error."""
        interval = authorization.interval
        deadline = time.monotonic() + authorization.expires_in
        form = {"grant_type": DEVICE_CODE_GRANT, "device_code": authorization.device_code, "client_id": self.client_id}
        while True:
            if time.monotonic() + interval > deadline:
                raise OAuthError(
                    "the login was not approved before the code expired; start it again",
                    "expired_token",
                )
            await asyncio.sleep(interval)
            try:
                data = await asyncio.to_thread(self._token_request, form)
            except OAuthError as err:
                if err.error == "authorization_pending":
                    continue
                if err.status is not None and err.status >= 500:  # the issuer is struggling: back off
                    interval = min(interval * 2, 60.0)
                    continue
                if err.error == "slow_down":
                    interval += _SLOW_DOWN_STEP
                    continue
                if err.error == "access_denied":
                    raise OAuthError("the login was denied", err.error, err.description, err.status) from None
                if err.error == "expired_token":
                    raise OAuthError(
                        "the login was not approved before the code expired; start it again",
                        err.error,
                        err.description,
                        err.status,
                    ) from None
                raise
            except AuthError:
                # The issuer is unreachable for a moment: keep polling, less often.
                interval = min(interval * 2, 60.0)
                continue
            return TokenSet.from_response(data)

    async def login(self, prompt: Callable[[DeviceAuthorization], object] | None = None) -> TokenSet:
        """The whole flow: `start()`, tell the user (`prompt`, default
        `print_prompt`; it may be async), `poll()`."""
        authorization = await self.start()
        shown = (prompt or print_prompt)(authorization)
        if inspect.isawaitable(shown):
            await shown
        return await self.poll(authorization)

    async def refresh(self, refresh_token: str) -> TokenSet:
        """New tokens for a refresh token (RFC 6749 section 6). Issuers that
        rotate refresh tokens return a new one; the old one is then spent."""
        return await asyncio.to_thread(self.refresh_sync, refresh_token)

    # -- blocking versions (worker threads) -----------------------------------------

    def discover_sync(self) -> dict[str, Any]:
        if self._discovery is not None:
            return self._discovery
        _check_http_url(self.issuer, "issuer")
        url = self.issuer + "/.well-known/openid-configuration"
        document = _request_json(url, None, self.http_timeout)
        announced = document.get("issuer")
        if not isinstance(announced, str) or _normalize_issuer(announced) != self.issuer:
            raise AuthError(f"{url} names the issuer {announced!r}, not {self.issuer!r}")
        for key in ("token_endpoint", "device_authorization_endpoint"):
            endpoint = document.get(key)
            if not isinstance(endpoint, str) or not endpoint:
                raise AuthError(f"the issuer {self.issuer} has no {key} (does it support the device flow?)")
            _check_http_url(endpoint, key)
        self._discovery = document
        return document

    def start_sync(self) -> DeviceAuthorization:
        endpoint = str(self.discover_sync()["device_authorization_endpoint"])
        form = {"client_id": self.client_id}
        if self.scope:
            form["scope"] = self.scope
        if self.resource is not None:
            form["resource"] = self.resource
        return DeviceAuthorization.from_response(_request_json(endpoint, form, self.http_timeout))

    def refresh_sync(self, refresh_token: str) -> TokenSet:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": self.client_id}
        if self.resource is not None:
            form["resource"] = self.resource
        tokens = TokenSet.from_response(self._token_request(form))
        if tokens.refresh_token is None:  # an issuer that does not rotate: the old one stays good
            tokens = replace(tokens, refresh_token=refresh_token)
        return tokens

    def _token_request(self, form: Mapping[str, str]) -> dict[str, Any]:
        endpoint = str(self.discover_sync()["token_endpoint"])
        return _request_json(endpoint, form, self.http_timeout)


# -- the token file ---------------------------------------------------------------


def default_token_file() -> Path:
    """`$PRISM_TOKEN_FILE`, else `~/.prism/token`."""
    configured = os.environ.get(TOKEN_FILE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".prism" / "token"


# One in-process lock per token file (the file lock covers other processes).
_FILE_LOCKS: dict[str, threading.Lock] = {}
_FILE_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()  # .keys: the token files this thread holds locked


class TokenStore:
    """Tokens kept in a JSON file (default `$PRISM_TOKEN_FILE` or
    `~/.prism/token`), one entry per (issuer, client id):

        {"version": 1, "tokens": {"<issuer>": {"<client_id>": {"access_token": ..., "refresh_token": ...,
                                                                "expires_at": ..., ...}}}}

    The file is written atomically with mode 0600; a directory created for
    it gets mode 0700. `lock()` serialises refreshes across threads and
    processes, so two programs sharing the file never spend the same
    (rotating) refresh token twice.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_token_file()

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r})"

    def load(self, issuer: str, client_id: str) -> TokenSet | None:
        """The stored tokens of (issuer, client_id), if any."""
        entry = self._read().get(_normalize_issuer(issuer), {}).get(client_id)
        return TokenSet._from_json(entry)

    def save(self, issuer: str, client_id: str, tokens: TokenSet) -> None:
        """Stores `tokens` as the entry of (issuer, client_id), keeping the others."""
        with self.lock():
            everything = self._read()
            everything.setdefault(_normalize_issuer(issuer), {})[client_id] = tokens._to_json()
            self._write(everything)

    def remove(self, issuer: str, client_id: str) -> bool:
        """Deletes the entry of (issuer, client_id); returns whether there was one."""
        with self.lock():
            everything = self._read()
            by_client = everything.get(_normalize_issuer(issuer), {})
            if by_client.pop(client_id, None) is None:
                return False
            if not by_client:
                everything.pop(_normalize_issuer(issuer), None)
            self._write(everything)
            return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Holds the store exclusively (this process's threads and, on POSIX,
        other processes) for a read-modify-write. Re-entrant within a thread."""
        key = str(self.path.absolute())
        held: set[str] = _HELD.__dict__.setdefault("keys", set())
        if key in held:  # this thread holds it already
            yield
            return
        with _FILE_LOCKS_GUARD:
            thread_lock = _FILE_LOCKS.setdefault(key, threading.Lock())
        with thread_lock:
            held.add(key)
            try:
                try:
                    import fcntl
                except ImportError:  # not POSIX: threads only
                    yield
                    return
                lock_path = self.path.with_name(self.path.name + ".lock")
                try:
                    self._ensure_dir()
                    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError as err:
                    raise AuthError(f"cannot lock the token file {self.path}: {err.strerror or err}") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    yield
                finally:
                    os.close(fd)  # releases the flock
            finally:
                held.discard(key)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise AuthError(f"cannot read the token file {self.path}: {err.strerror or err}") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise AuthError(f"the token file {self.path} is not JSON; delete it and log in again") from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise AuthError(f"the token file {self.path} is not a Prism token file; delete it and log in again")
        return {k: v for k, v in tokens.items() if isinstance(v, dict)}

    def _write(self, tokens: dict[str, dict[str, Any]]) -> None:
        text = json.dumps({"version": _STORE_VERSION, "tokens": tokens}, indent=2, sort_keys=True) + "\n"
        try:
            self._ensure_dir()
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as err:
            raise AuthError(f"cannot write the token file {self.path}: {err.strerror or err}") from None
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp creates it 0600
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException as err:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(err, OSError):
                raise AuthError(f"cannot write the token file {self.path}: {err.strerror or err}") from None
            raise

    def _ensure_dir(self) -> None:
        parent = self.path.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, exist_ok=True)
            os.chmod(parent, 0o700)


# -- the provider -----------------------------------------------------------------


class OidcTokenProvider:
    """A `TokenProvider` for people: tokens from an OpenID Connect issuer's
    device flow, kept in a `TokenStore`, refreshed before they expire.

    `await provider.token()` returns the cached access token while it is
    more than `refresh_margin` seconds from expiry; else the stored one (a
    `prism-login` or another process may have renewed it), else new tokens
    from the refresh token (stored at once: refresh tokens rotate), else —
    with `login=True` — a device flow: `prompt` (default: print to stderr)
    shows the URL and the code, and the call waits until the user approved.
    With `login=False` it raises LoginRequiredError instead.

        client = PrismClient(addr, token=OidcTokenProvider("https://issuer", "prism-cli"))
    """

    def __init__(
        self,
        issuer: str,
        client_id: str = DEFAULT_CLIENT_ID,
        *,
        scope: str = DEFAULT_SCOPE,
        resource: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        prompt: Callable[[DeviceAuthorization], object] | None = None,
        login: bool = True,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        http_timeout: float = _HTTP_TIMEOUT,
    ) -> None:
        self.flow = DeviceLogin(issuer, client_id, scope=scope, resource=resource, http_timeout=http_timeout)
        self.store = TokenStore(token_file)
        self.prompt = prompt
        self.interactive = login
        self.refresh_margin = refresh_margin
        self._tokens: TokenSet | None = None
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"OidcTokenProvider(issuer={self.issuer!r}, client_id={self.client_id!r}, token_file={str(self.store.path)!r})"

    @property
    def issuer(self) -> str:
        return self.flow.issuer

    @property
    def client_id(self) -> str:
        return self.flow.client_id

    @property
    def tokens(self) -> TokenSet | None:
        """The tokens this provider holds now (None before its first use)."""
        return self._tokens

    async def token(self) -> str:
        """The current access token (see the class documentation)."""
        tokens = self._tokens
        if tokens is not None and not tokens.refresh_due(self.refresh_margin):
            return tokens.access_token
        async with self._lock():
            tokens = self._tokens
            if tokens is None or tokens.refresh_due(self.refresh_margin):
                tokens = await self._obtain()
                self._tokens = tokens
            return tokens.access_token

    async def login(self) -> TokenSet:
        """Runs the device flow now (whatever is stored) and stores the tokens."""
        tokens = await self.flow.login(self.prompt)
        await asyncio.to_thread(self.store.save, self.issuer, self.client_id, tokens)
        self._tokens = tokens
        return tokens

    async def refresh(self) -> TokenSet:
        """Uses the stored refresh token now and stores what the issuer returns."""
        tokens = await asyncio.to_thread(self._refresh_stored, True)
        self._tokens = tokens
        return tokens

    # -- internals ------------------------------------------------------------------

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    async def _obtain(self) -> TokenSet:
        stored = await asyncio.to_thread(self.store.load, self.issuer, self.client_id)
        if stored is not None and not stored.refresh_due(self.refresh_margin):
            return stored
        refresh_failed: AuthError | None = None
        if stored is not None and stored.refresh_token is not None:
            try:
                return await asyncio.to_thread(self._refresh_stored, False)
            except LoginRequiredError as err:
                refresh_failed = err
            except OAuthError as err:
                if err.error not in ("invalid_grant", "unauthorized_client"):
                    raise
                refresh_failed = err
        if self.interactive:
            return await self.login()
        if stored is not None and not stored.expired():
            return stored  # still valid for a little while
        what = "its refresh token was refused" if refresh_failed is not None else "there is no stored token"
        raise LoginRequiredError(
            f"log in to {self.issuer} first ({what}; token file {self.store.path}): "
            f"prism-login --issuer {self.issuer} --client-id {self.client_id}"
        ) from refresh_failed

    def _refresh_stored(self, force: bool) -> TokenSet:
        """Refreshes under the store's lock, re-reading it first: when another
        thread or process renewed the tokens meanwhile, those are used
        (spending a rotated refresh token twice would revoke the grant)."""
        with self.store.lock():
            stored = self.store.load(self.issuer, self.client_id)
            if stored is None or stored.refresh_token is None:
                raise LoginRequiredError(f"no refresh token stored for {self.issuer} in {self.store.path}")
            renewed_elsewhere = self._tokens is not None and stored.access_token != self._tokens.access_token
            if not stored.refresh_due(self.refresh_margin) and (not force or renewed_elsewhere):
                return stored
            tokens = self.flow.refresh_sync(stored.refresh_token)
            if tokens.id_token is None and stored.id_token is not None:
                tokens = replace(tokens, id_token=stored.id_token)
            self.store.save(self.issuer, self.client_id, tokens)
            return tokens


# -- prism-login -----------------------------------------------------------------


def _describe(tokens: TokenSet) -> str:
    claims = tokens.claims()
    who = claims.get("sub") or claims.get("client_id") or "?"
    parts = [f"as {who}"]
    grants = claims.get("prism_namespaces")
    if isinstance(grants, list):
        parts.append(f"namespaces {', '.join(map(str, grants)) or '(none)'}")
    if tokens.expires_at is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tokens.expires_at))
        parts.append(f"access token valid until {when}")
    parts.append("refreshable" if tokens.refresh_token else "no refresh token: log in again when it expires")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """`prism-login`: the device flow from a terminal; stores the tokens."""
    parser = argparse.ArgumentParser(
        prog="prism-login",
        description="Log in to Prism through your OpenID Connect issuer (OAuth 2.0 device flow) "
        "and store the tokens for PrismClient(token=OidcTokenProvider(...)).",
    )
    parser.add_argument(
        "--issuer",
        default=os.environ.get("PRISM_ISSUER"),
        help="the issuer URL (default: $PRISM_ISSUER)",
    )
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help=f"the OAuth client (default: {DEFAULT_CLIENT_ID})")
    parser.add_argument("--scope", default=DEFAULT_SCOPE, help=f"scopes to ask for (default: {DEFAULT_SCOPE!r})")
    parser.add_argument("--resource", help="RFC 8707 resource indicator of Prism (for example urn:prism)")
    parser.add_argument(
        "--token-file",
        help=f"where to store the tokens (default: ${TOKEN_FILE_ENV} or ~/.prism/token)",
    )
    args = parser.parse_args(argv)
    if not args.issuer:
        parser.error("--issuer is required (or set PRISM_ISSUER)")
    try:
        provider = OidcTokenProvider(
            args.issuer,
            args.client_id,
            scope=args.scope,
            resource=args.resource,
            token_file=args.token_file,
        )
        tokens = asyncio.run(provider.login())
    except AuthError as err:
        print(f"prism-login: {err}", file=sys.stderr)
        return 1
    except ValueError as err:
        print(f"prism-login: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prism-login: interrupted", file=sys.stderr)
        return 130
    print(f"Logged in to {provider.issuer} {_describe(tokens)}.", file=sys.stderr)
    print(f"Tokens stored in {provider.store.path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
