"""Drive the test OpenID Connect issuer in ``tests/oidc/issuer.mjs`` (oidc-provider).

Stdlib only. Start/stop/restart the Node issuer, obtain client-credentials
tokens, run the OAuth 2.0 Device Authorization Grant (RFC 8628) end to end by
driving the provider's real HTML pages (user-code confirmation, login, consent)
with a cookie jar, refresh tokens, and read / use the issuer's private keys.

Before first use: ``cd tests/oidc && npm ci``.

Run ``python clients/python/tests/oidc_issuer.py`` for a self-check that
exercises everything and prints the evidence.
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
import selectors
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypedDict, cast

REPO = Path(__file__).resolve().parents[3]
ISSUER_DIR = REPO / "tests" / "oidc"
ISSUER_SCRIPT = ISSUER_DIR / "issuer.mjs"

#: RFC 8707 resource indicator for Prism (must be an absolute URI).
PRISM_RESOURCE = "urn:prism"
#: ``aud`` of access tokens issued for :data:`PRISM_RESOURCE`.
PRISM_AUDIENCE = "prism"
#: A second resource server: real, validly signed tokens with ``aud: "not-prism"``.
OTHER_RESOURCE = "urn:not-prism"

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CLI_CLIENT = "prism-cli"
TEST_SECRET = "secret"
#: ``prism-test-*`` client-credentials clients and the ``prism_namespaces`` they get.
TEST_CLIENTS: dict[str, list[str]] = {
    "prism-test-all": ["*"],
    "prism-test-orders": ["orders"],
    "prism-test-orders-read": ["orders:read"],
    "prism-test-none": [],
    "prism-test-admin": ["*:admin"],
}
#: End-user accounts (log in with any password) and their ``prism_namespaces``.
ACCOUNTS: dict[str, list[str]] = {
    "dev@local.prism": ["*"],
    "reader@local.prism": ["orders:read"],
    "orders@local.prism": ["orders"],
}

START_TIMEOUT = 20.0
HTTP_TIMEOUT = 10.0


class OidcIssuerError(RuntimeError):
    """The issuer process failed to start or a browser step went wrong."""


class OAuthError(RuntimeError):
    """An OAuth error response (``{"error": ..., "error_description": ...}``)."""

    def __init__(self, status: int, error: str, description: str | None) -> None:
        super().__init__(f"{status} {error}: {description or ''}".rstrip(": "))
        self.status = status
        self.error = error
        self.description = description


class _DeviceAuthorizationRequired(TypedDict):
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int


class DeviceAuthorization(_DeviceAuthorizationRequired, total=False):
    """RFC 8628 section 3.2 response. oidc-provider omits ``interval`` (RFC default: 5 s) and
    does not enforce it (no ``slow_down``)."""

    interval: int


class TokenResponse(TypedDict, total=False):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str
    id_token: str
    scope: str


# ---------------------------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------------------------


def _node() -> str:
    node = os.environ.get("OIDC_ISSUER_NODE") or shutil.which("node")
    if node is None:
        raise OidcIssuerError("`node` (v18.12+) is not on PATH; the OIDC test issuer needs it")
    return node


def _last_run_log(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines the most recent issuer run wrote to its log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no issuer log)"
    run = text[text.rfind("\n--- ") + 1 :] if "\n--- " in text else text
    return "\n".join(run.splitlines()[-lines:])


class OidcIssuer:
    """A running ``tests/oidc/issuer.mjs`` process. Use :meth:`start`."""

    def __init__(
        self,
        keys_file: Path,
        port: int | None,
        access_ttl: int | None,
        log_path: Path,
    ) -> None:
        self.keys_file = keys_file
        self.access_ttl = access_ttl
        self.log_path = log_path
        self._requested_port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._info: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        keys_file: Path,
        port: int | None = None,
        rotate: bool = False,
        access_ttl: int | None = None,
    ) -> OidcIssuer:
        """Start the issuer on 127.0.0.1 (``port=None``: a free port chosen by the issuer).

        ``keys_file`` holds the private JWKS; it is created when missing. ``rotate`` prepends
        a new RS256 signing key (old keys keep validating). Issuer output goes to
        ``<keys_file>.issuer.log`` (appended across restarts).
        """
        keys_file = Path(keys_file).resolve()
        log_path = keys_file.with_name(keys_file.name + ".issuer.log")
        issuer = cls(keys_file, port, access_ttl, log_path)
        issuer._spawn(rotate)
        return issuer

    def _spawn(self, rotate: bool) -> None:
        if not (ISSUER_DIR / "node_modules" / "oidc-provider").is_dir():
            raise OidcIssuerError(
                f"oidc-provider is not installed: run `npm ci` in {ISSUER_DIR}"
            )
        cmd = [
            _node(),
            str(ISSUER_SCRIPT),
            "--port",
            str(self._requested_port if self._requested_port is not None else 0),
            "--keys",
            str(self.keys_file),
            "--stdin-lifeline",
        ]
        if rotate:
            cmd.append("--rotate")
        if self.access_ttl is not None:
            cmd += ["--access-ttl", str(self.access_ttl)]

        self.keys_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        log.write(f"--- {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ISSUER_DIR,
            stdin=subprocess.PIPE,  # the issuer exits when this pipe closes (--stdin-lifeline)
            stdout=subprocess.PIPE,
            stderr=log,
        )
        self._proc, self._log = proc, log
        try:
            line = self._read_ready_line(proc, START_TIMEOUT)
            info = json.loads(line)
            if not isinstance(info, dict) or "issuer" not in info:
                raise OidcIssuerError(f"unexpected ready line from issuer: {line!r}")
        except BaseException as err:
            self.stop()
            if not isinstance(err, OidcIssuerError | json.JSONDecodeError):
                raise
            log_tail = _last_run_log(self.log_path)
            hint = ""
            if "ERR_MODULE_NOT_FOUND" in log_tail or "Cannot find package" in log_tail:
                hint = f"\nhint: run `npm ci` in {ISSUER_DIR}"
            raise OidcIssuerError(
                f"OIDC test issuer failed to start: {err}{hint}\n"
                f"--- {self.log_path} (tail) ---\n{log_tail}"
            ) from err
        self._info = {str(k): str(v) for k, v in info.items()}
        self._requested_port = self.port  # restarts reuse the port

    @staticmethod
    def _read_ready_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise OidcIssuerError(f"no ready line within {timeout:.0f}s")
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = proc.wait(timeout=5)
                    raise OidcIssuerError(f"issuer exited with status {code} before it was ready")
                buf += chunk
        return buf.split(b"\n", 1)[0].decode()

    def stop(self) -> None:
        """SIGTERM the issuer and wait for it (SIGKILL after 10 s). Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        log, self._log = self._log, None
        if log is not None:
            log.close()

    def restart(self, rotate: bool = False) -> None:
        """Stop and start again on the same port with the same keys file (and TTL).

        With ``rotate=True`` a new RS256 key is prepended to the key set: it signs new tokens
        while the old keys stay in the published JWKS.
        """
        self.stop()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._spawn(rotate)
                return
            except OidcIssuerError:
                # The old socket may linger for a moment: retry on EADDRINUSE only. The issuer
                # binds before it touches the keys file, so a failed attempt rotated nothing.
                if "EADDRINUSE" not in _last_run_log(self.log_path) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> OidcIssuer:  # noqa: PYI034 - not meant to be subclassed
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; tests should call stop()
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()

    # -- endpoints -----------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self._info["issuer"]

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.issuer).port
        assert port is not None
        return port

    @property
    def jwks_uri(self) -> str:
        return self._info["jwks_uri"]

    @property
    def token_endpoint(self) -> str:
        return self._info["token_endpoint"]

    @property
    def device_authorization_endpoint(self) -> str:
        return self._info["device_authorization_endpoint"]

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def discovery(self) -> dict[str, Any]:
        return get_json(self.discovery_url)

    def jwks(self) -> dict[str, Any]:
        """The published (public) JWKS."""
        return get_json(self.jwks_uri)

    def signing_kid(self) -> str:
        """kid of the key that signs new access tokens (the first RS256 key in the keys file)."""
        return str(next(k["kid"] for k in private_jwks(self.keys_file)["keys"] if k["alg"] == "RS256"))

    def __repr__(self) -> str:
        return f"OidcIssuer({self._info.get('issuer', 'not running')!r}, pid={self.pid})"


# ---------------------------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------------------------


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:
        return cast(dict[str, Any], json.load(resp))


def _post_form(
    url: str, form: dict[str, str], basic_auth: tuple[str, str] | None = None
) -> dict[str, Any]:
    """POST a form to an OAuth endpoint; raise :class:`OAuthError` on an error response."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if basic_auth is not None:
        user, password = (urllib.parse.quote(p, safe="") for p in basic_auth)
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
            return cast(dict[str, Any], json.load(resp))
    except urllib.error.HTTPError as err:
        body = err.read().decode(errors="replace")
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            raise OAuthError(err.code, "http_error", body[:500]) from err
        raise OAuthError(err.code, str(data.get("error")), data.get("error_description")) from err


# ---------------------------------------------------------------------------------------------
# Grants
# ---------------------------------------------------------------------------------------------


def client_credentials_token(
    issuer: OidcIssuer,
    client_id: str,
    secret: str = TEST_SECRET,
    *,
    resource: str | None = PRISM_RESOURCE,
    scope: str | None = None,
    auth: str = "basic",
) -> str:
    """A JWT access token (``aud: "prism"`` by default) for a ``prism-test-*`` client.

    ``auth`` is ``"basic"`` (client_secret_basic) or ``"post"`` (client_secret_post).
    ``resource=None`` omits the parameter (the issuer then defaults to ``urn:prism``).
    """
    form = {"grant_type": "client_credentials"}
    if resource is not None:
        form["resource"] = resource
    if scope is not None:
        form["scope"] = scope
    if auth == "post":
        form.update(client_id=client_id, client_secret=secret)
        data = _post_form(issuer.token_endpoint, form)
    elif auth == "basic":
        data = _post_form(issuer.token_endpoint, form, basic_auth=(client_id, secret))
    else:
        raise ValueError(f"auth must be 'basic' or 'post', not {auth!r}")
    return str(data["access_token"])


def start_device_flow(
    issuer: OidcIssuer,
    client_id: str = CLI_CLIENT,
    *,
    scope: str = "openid offline_access",
    resource: str | None = PRISM_RESOURCE,
) -> DeviceAuthorization:
    """POST the device authorization request (RFC 8628 section 3.1)."""
    form = {"client_id": client_id, "scope": scope}
    if resource is not None:
        form["resource"] = resource
    return cast(DeviceAuthorization, _post_form(issuer.device_authorization_endpoint, form))


def poll_device_token(
    issuer: OidcIssuer,
    device_code: str,
    client_id: str = CLI_CLIENT,
    *,
    interval: float = 1.0,
    timeout: float = 30.0,
) -> TokenResponse:
    """Poll the token endpoint until the device code is approved (RFC 8628 section 3.4/3.5).

    ``authorization_pending`` waits ``interval`` s, ``slow_down`` adds 5 s; any other
    error (``access_denied``, ``expired_token``, ...) raises :class:`OAuthError`.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = _post_form(
                issuer.token_endpoint,
                {"grant_type": DEVICE_CODE_GRANT, "device_code": device_code, "client_id": client_id},
            )
            return cast(TokenResponse, data)
        except OAuthError as err:
            if err.error == "slow_down":
                interval += 5
            elif err.error != "authorization_pending":
                raise
            if time.monotonic() + interval > deadline:
                raise
            time.sleep(interval)


def refresh(
    issuer: OidcIssuer,
    refresh_token: str,
    client_id: str = CLI_CLIENT,
    *,
    resource: str | None = None,
) -> TokenResponse:
    """``grant_type=refresh_token`` for the public CLI client. The issuer rotates refresh
    tokens: use the returned ``refresh_token`` next time (the old one is now invalid)."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    if resource is not None:
        form["resource"] = resource
    return cast(TokenResponse, _post_form(issuer.token_endpoint, form))


def device_flow_tokens(
    issuer: OidcIssuer, login: str = "dev@local.prism", client_id: str = CLI_CLIENT
) -> TokenResponse:
    """Device flow end to end: start, approve in the "browser" as ``login``, poll."""
    auth = start_device_flow(issuer, client_id)
    approve_device(auth["verification_uri_complete"], auth["user_code"], login=login)
    return poll_device_token(issuer, auth["device_code"], client_id)


# ---------------------------------------------------------------------------------------------
# Browser side of the device flow
# ---------------------------------------------------------------------------------------------


class _Input(TypedDict):
    name: str
    type: str
    value: str


class _Form(TypedDict):
    action: str
    method: str
    id: str
    inputs: list[_Input]


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self.title = ""
        self.text: list[str] = []
        self._current: _Form | None = None
        self._in_title = False
        self._skip = 0  # inside <style>/<script>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = {
                "action": a.get("action", ""),
                "method": (a.get("method") or "get").lower(),
                "id": a.get("id", ""),
                "inputs": [],
            }
            self.forms.append(self._current)
        elif tag == "input":
            form = self._current
            if form is None and a.get("form"):  # <input form="id"> outside its form
                form = next((f for f in self.forms if f["id"] == a["form"]), None)
            if form is not None and a.get("name"):
                form["inputs"].append(
                    {"name": a["name"], "type": (a.get("type") or "text").lower(), "value": a.get("value", "")}
                )
        elif tag == "title":
            self._in_title = True
        elif tag in ("style", "script"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "title":
            self._in_title = False
        elif tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.text.append(data.strip())


def _parse_page(html: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser


_TEXT_INPUTS = {"text", "email"}


def approve_device(
    verification_uri: str,
    user_code: str,
    login: str = "dev@local.prism",
    *,
    password: str = "any-password",
    max_steps: int = 12,
) -> None:
    """Approve a pending device authorization like a user with a browser would.

    ``verification_uri`` may be ``verification_uri_complete`` (code pre-filled) or the plain
    ``verification_uri`` (the code is typed into the input form). Uses a fresh cookie jar, so
    every call is a new browser session (login is always required). Follows redirects and
    submits whatever form each page shows, chosen by structure:

    * a form with a password field is the login form: text field = ``login``,
      password field = ``password``;
    * a form with an empty text field is the user-code input form: it gets ``user_code``;
    * any other form (auto-submitting form_post page, "confirm device", consent) is submitted
      with its hidden inputs as they are.

    Raises :class:`OidcIssuerError` when the provider shows an error page, rejects the code,
    or shows the login form again (unknown account).
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    url, data = verification_uri, None
    seen: list[str] = []
    for _ in range(max_steps):
        status, url, html = _browse(opener, url, data)
        page = _parse_page(html)
        text = " | ".join(page.text)[:600]
        if status >= 400:
            raise OidcIssuerError(f"device approval failed: HTTP {status} at {url}: {text}")
        forms = [f for f in page.forms if f["method"] == "post"]
        if not forms:
            if "success" in page.title.lower():
                return
            raise OidcIssuerError(f"device approval ended on an unexpected page at {url}: {text}")
        form = forms[0]
        types = {i["type"] for i in form["inputs"]}
        if "password" in types:
            kind = "login"
        elif types & _TEXT_INPUTS:
            kind = "user_code"
        else:
            kind = "submit"  # only hidden inputs: form_post page, "confirm device", consent
        fields: list[tuple[str, str]] = []
        for inp in form["inputs"]:
            if inp["type"] in ("checkbox", "radio", "submit", "button", "image", "reset"):
                continue
            value = inp["value"]
            if inp["type"] == "password":
                value = password
            elif inp["type"] in _TEXT_INPUTS:
                value = login if kind == "login" else user_code
            fields.append((inp["name"], value))
        if kind in ("login", "user_code") and kind in seen:
            what = "login" if kind == "login" else "user code"
            raise OidcIssuerError(f"the provider rejected the {what} ({login!r} / {user_code!r}): {text}")
        seen.append(kind)
        url = urllib.parse.urljoin(url, form["action"] or url)
        data = urllib.parse.urlencode(fields).encode()
    raise OidcIssuerError(f"device approval did not finish within {max_steps} pages (last: {url})")


def _browse(
    opener: urllib.request.OpenerDirector, url: str, data: bytes | None
) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=data, headers={"Accept": "text/html"})
    if data is not None:
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with opener.open(req, timeout=HTTP_TIMEOUT) as resp:
            return int(resp.status), str(resp.geturl()), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, str(err.geturl()), err.read().decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Keys and JWTs
# ---------------------------------------------------------------------------------------------


def private_jwks(keys_file: Path) -> dict[str, Any]:
    """The issuer's private JWKS (``{"keys": [...]}``); the first RS256 key signs tokens."""
    return cast(dict[str, Any], json.loads(Path(keys_file).read_text()))


def pem_keys(keys_file: Path) -> list[dict[str, str]]:
    """The same keys as PEM, from the ``<keys_file>.pem.json`` sidecar the issuer writes on
    every start: ``[{"kid", "alg", "kty", "private_pem" (PKCS#8), "public_pem" (SPKI)}]``."""
    path = Path(keys_file).with_name(Path(keys_file).name + ".pem.json")
    return cast(list[dict[str, str]], json.loads(path.read_text())["keys"])


def _b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, payload) of a compact JWS, without verifying anything."""
    header, payload, _sig = token.split(".")
    return json.loads(_b64d(header)), json.loads(_b64d(payload))


def _int(b64: str) -> int:
    return int.from_bytes(_b64d(b64), "big")


# DER prefix of DigestInfo for SHA-256 (RFC 8017 section 9.2 note 1).
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _emsa_pkcs1_v15(message: bytes, k: int) -> int:
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return int.from_bytes(b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t, "big")


def sign_rs256(
    payload: dict[str, Any], jwk: dict[str, Any], header: dict[str, Any] | None = None
) -> str:
    """Sign ``payload`` with a private RSA JWK (e.g. from :func:`private_jwks`) as RS256.

    The header defaults to ``{"alg": "RS256", "typ": "at+jwt", "kid": jwk["kid"]}``; entries in
    ``header`` override it (a ``None`` value removes the entry). For deliberately bad tokens.
    """
    hdr: dict[str, Any] = {"alg": "RS256", "typ": "at+jwt", "kid": jwk["kid"]}
    for key, value in (header or {}).items():
        if value is None:
            hdr.pop(key, None)
        else:
            hdr[key] = value
    signing_input = (
        _b64e(json.dumps(hdr, separators=(",", ":")).encode())
        + "."
        + _b64e(json.dumps(payload, separators=(",", ":")).encode())
    )
    n, d = _int(jwk["n"]), _int(jwk["d"])
    k = (n.bit_length() + 7) // 8
    sig = pow(_emsa_pkcs1_v15(signing_input.encode(), k), d, n).to_bytes(k, "big")
    return signing_input + "." + _b64e(sig)


def verify_rs256(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """Verify an RS256 JWS against a (public) JWKS by ``kid``; return the payload.

    Only the signature is checked (not exp/aud/iss). Raises ``ValueError`` on failure.
    """
    header, payload = decode_jwt(token)
    if header.get("alg") != "RS256":
        raise ValueError(f"alg {header.get('alg')!r} is not RS256")
    key = next((k for k in jwks["keys"] if k.get("kid") == header.get("kid")), None)
    if key is None or key.get("kty") != "RSA":
        raise ValueError(f"kid {header.get('kid')!r} is not an RSA key in the JWKS")
    n, e = _int(key["n"]), _int(key["e"])
    k = (n.bit_length() + 7) // 8
    signing_input, _, sig = token.rpartition(".")
    if pow(int.from_bytes(_b64d(sig), "big"), e, n) != _emsa_pkcs1_v15(signing_input.encode(), k):
        raise ValueError("bad signature")
    return payload


# ---------------------------------------------------------------------------------------------
# Self-check: python clients/python/tests/oidc_issuer.py
# ---------------------------------------------------------------------------------------------


def _self_check() -> None:
    import tempfile

    def show(label: str, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        header, payload = decode_jwt(token)
        print(
            f"  {label:<24} typ={header.get('typ')} kid={header.get('kid')} iss={payload['iss']} "
            f"aud={payload['aud']!r} sub={payload['sub']} ttl={payload['exp'] - payload['iat']}s "
            f"prism_namespaces={payload.get('prism_namespaces')}"
        )
        return header, payload

    def check(cond: bool, what: str) -> None:
        if not cond:
            raise AssertionError(what)

    with tempfile.TemporaryDirectory(prefix="oidc-self-check-") as tmp:
        keys = Path(tmp) / "keys.json"
        issuer = OidcIssuer.start(keys)
        try:
            print(f"started {issuer!r}  (log: {issuer.log_path})")
            disco = issuer.discovery()
            print("discovery:")
            for key in ("issuer", "jwks_uri", "token_endpoint", "device_authorization_endpoint"):
                print(f"  {key} = {disco[key]}")
                check(disco[key] == getattr(issuer, key), f"discovery {key} matches ready line")
            jwks = issuer.jwks()
            print("published JWKS:", [(k["kid"], k["alg"], k["kty"]) for k in jwks["keys"]])
            check(all("d" not in k and "p" not in k for k in jwks["keys"]), "JWKS is public only")
            check(oct(keys.stat().st_mode & 0o777) == "0o600", "keys file is mode 0600")
            priv = private_jwks(keys)
            check([k["alg"] for k in priv["keys"]] == ["RS256", "ES256"], "RS256 + ES256 key set")
            check(all("d" in k and k["use"] == "sig" for k in priv["keys"]), "private keys, use=sig")
            print(f"keys file {keys}: mode 0600, {[k['kid'] for k in priv['keys']]}")
            pems = pem_keys(keys)
            check([k["kid"] for k in pems] == [k["kid"] for k in priv["keys"]], "PEM sidecar order")
            check(all(k["private_pem"].startswith("-----BEGIN PRIVATE KEY-----") for k in pems), "PKCS#8")
            check(all(k["public_pem"].startswith("-----BEGIN PUBLIC KEY-----") for k in pems), "SPKI")
            print(f"PEM sidecar {keys}.pem.json: PKCS#8 + SPKI for {[k['kid'] for k in pems]}")

            print("client_credentials:")
            for client_id, grants in TEST_CLIENTS.items():
                auth = "post" if client_id.endswith("none") else "basic"
                token = client_credentials_token(issuer, client_id, auth=auth)
                header, payload = show(f"{client_id} ({auth})", token)
                check(payload["aud"] == PRISM_AUDIENCE and payload["iss"] == issuer.issuer, "aud/iss")
                check(payload["prism_namespaces"] == grants, f"{client_id} namespaces")
                check(payload["exp"] - payload["iat"] == 300, "default ttl 300")
                check(header["typ"] == "at+jwt" and header["kid"] == issuer.signing_kid(), "header")
                verify_rs256(token, jwks)
            other = client_credentials_token(issuer, "prism-test-all", resource=OTHER_RESOURCE)
            show("wrong-audience token", other)
            check(decode_jwt(other)[1]["aud"] == "not-prism", "urn:not-prism -> aud not-prism")
            default = client_credentials_token(issuer, "prism-test-all", resource=None)
            check(decode_jwt(default)[1]["aud"] == PRISM_AUDIENCE, "no resource -> prism")
            try:
                client_credentials_token(issuer, "prism-test-all", "wrong")
                raise AssertionError("wrong secret accepted")
            except OAuthError as err:
                print(f"  wrong secret -> {err}")
                check(err.error == "invalid_client", "invalid_client")
            payload = decode_jwt(client_credentials_token(issuer, "prism-test-all"))[1]
            print("  full access token payload:", json.dumps(payload))

            print("device flow:")
            for login, via in (("dev@local.prism", "complete"), ("reader@local.prism", "uri+code")):
                auth_resp = start_device_flow(issuer)
                try:
                    poll_device_token(issuer, auth_resp["device_code"], interval=0.1, timeout=0)
                    raise AssertionError("pending device code returned a token")
                except OAuthError as err:
                    check(err.error == "authorization_pending", "pending before approval")
                uri = auth_resp["verification_uri_complete" if via == "complete" else "verification_uri"]
                approve_device(uri, auth_resp["user_code"], login=login)
                tokens = poll_device_token(issuer, auth_resp["device_code"])
                print(
                    f"  {login}: user_code={auth_resp['user_code']} via {via}; got "
                    f"{sorted(tokens)} scope={tokens.get('scope')!r}"
                )
                _, payload = show(f"access ({login.split('@')[0]})", tokens["access_token"])
                check(payload["sub"] == login and payload["client_id"] == CLI_CLIENT, "sub/client_id")
                check(payload["prism_namespaces"] == ACCOUNTS[login], "account namespaces")
                check(payload["aud"] == PRISM_AUDIENCE, "device flow aud prism")
                verify_rs256(tokens["access_token"], jwks)
                if login == "dev@local.prism":
                    print("    full access token payload:", json.dumps(payload))
                check("refresh_token" in tokens and "id_token" in tokens, "refresh + id token")
                id_payload = decode_jwt(tokens["id_token"])[1]
                check(id_payload["aud"] == CLI_CLIENT, "id_token aud is the client")

                refreshed = refresh(issuer, tokens["refresh_token"])
                _, new_payload = show("  refreshed", refreshed["access_token"])
                check(new_payload["prism_namespaces"] == payload["prism_namespaces"], "same grants")
                check(new_payload["aud"] == PRISM_AUDIENCE, "refreshed aud prism")
                check(new_payload["jti"] != payload["jti"], "a new token")
                check(refreshed.get("refresh_token") not in (None, tokens["refresh_token"]), "rotated")
                verify_rs256(refreshed["access_token"], jwks)
                try:
                    refresh(issuer, tokens["refresh_token"])
                    raise AssertionError("reused refresh token accepted")
                except OAuthError as err:
                    print(f"    reusing the old refresh token -> {err}")

            auth_resp = start_device_flow(issuer)
            try:
                approve_device(auth_resp["verification_uri_complete"], auth_resp["user_code"], login="nobody@x")
                raise AssertionError("unknown account approved")
            except OidcIssuerError as err:
                print(f"  unknown account -> {str(err)[:90]}...")
            try:
                approve_device(auth_resp["verification_uri"], "BBBB-BBBB")
                raise AssertionError("bogus user code approved")
            except OidcIssuerError as err:
                print(f"  bogus user code -> {str(err)[:90]}...")

            print("bad tokens minted with the real key (RS256, pure-Python signer):")
            rs_key = priv["keys"][0]
            forged = sign_rs256({**payload, "aud": "someone-else"}, rs_key)
            check(verify_rs256(forged, jwks)["aud"] == "someone-else", "minted token verifies")
            print(f"  minted aud=someone-else, verifies against JWKS kid={decode_jwt(forged)[0]['kid']}")

            print("rotation:")
            old_kid = issuer.signing_kid()
            old_token = client_credentials_token(issuer, "prism-test-all")
            port = issuer.port
            issuer.restart(rotate=True)
            new_kid = issuer.signing_kid()
            jwks2 = issuer.jwks()
            kids = [k["kid"] for k in jwks2["keys"]]
            new_token = client_credentials_token(issuer, "prism-test-all")
            print(f"  same port: {issuer.port == port} ({issuer.port}); JWKS kids now {kids}")
            print(f"  old kid {old_kid} -> new kid {new_kid}; new token kid {decode_jwt(new_token)[0]['kid']}")
            check(issuer.port == port and new_kid != old_kid and kids[0] == new_kid, "rotated")
            check(old_kid in kids and decode_jwt(new_token)[0]["kid"] == new_kid, "old kept, new signs")
            check([k["kid"] for k in pem_keys(keys)] == kids, "PEM sidecar follows the rotation")
            verify_rs256(old_token, jwks2)
            verify_rs256(new_token, jwks2)
            print("  pre-rotation token still verifies against the new JWKS: True")
            issuer.restart()
            check(issuer.signing_kid() == new_kid and len(issuer.jwks()["keys"]) == 3, "plain restart")
            print(f"  plain restart keeps kid {issuer.signing_kid()}")
            tokens = device_flow_tokens(issuer, login="orders@local.prism")
            show("orders after restart", tokens["access_token"])
        finally:
            issuer.stop()
        check(not issuer.running, "stopped")

        with OidcIssuer.start(Path(tmp) / "short.json", access_ttl=60) as short:
            token = client_credentials_token(short, "prism-test-orders")
            show("--access-ttl 60", token)
            check(decode_jwt(token)[1]["exp"] - decode_jwt(token)[1]["iat"] == 60, "ttl 60")
        check(not short.running, "context manager stopped the issuer")
        print("self-check OK; issuers stopped")


if __name__ == "__main__":
    _self_check()
