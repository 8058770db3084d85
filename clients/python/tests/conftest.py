"""Fixtures: a real `prism` process per test, started on a free port from a
config written to a temp dir, stopped with SIGTERM (which must be graceful).

Every KeyValue test runs three times: with its namespaces on MemStore, on Redis
(a real redis-server this session starts on a free port) and on PostgreSQL (a
throwaway cluster this session initdb's and starts on a free port), with the
same test code. Every PubSub test runs on MemStore, Redis, core NATS and NATS
JetStream (a real nats-server with JetStream, also started once per session).
Every Multicast Registry test runs with both slots on MemStore, with identities
on Redis and multicasts on NATS JetStream, and with identities on PostgreSQL and
multicasts on core NATS.

Auth tests use a real OpenID Connect issuer (`tests/oidc/issuer.mjs`, driven by
`oidc_issuer.py`) and a prism with `[auth] mode = "jwt"` trusting it, both
started once per session; a second pair issues short-lived tokens."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from oidc_issuer import ISSUER_DIR, OidcIssuer

from prism_client import PrismClient

REPO = Path(__file__).resolve().parents[3]
PRISM_BIN = Path(os.environ.get("PRISM_BIN", REPO / "target" / "release" / "prism"))

NAMESPACES = """
[namespaces.default]
pattern = "keyvalue"
slots = { kv = "store" }

[namespaces.other]
pattern = "keyvalue"
slots = { kv = "store" }
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_command(port: int, *args: str) -> bytes:
    """One RESP command over a raw socket (the client has no Redis dependency)."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(payload.encode())
        return conn.recv(1024)


def _started(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str) -> bool:
    """Waits until `ready()` answers while `proc` runs: True once it does
    (and `proc` is still the one running), False if `proc` exited first (a
    port clash: the caller tries another port); fails after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        try:
            if ready() and proc.poll() is None:
                return True
        except (OSError, RuntimeError):
            pass
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"{what} not answering after 10 s")
        time.sleep(0.02)


class RedisServer:
    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; `just test` installs it")
        # The port is free when asked; another process may bind it first
        # (the server then exits at start): another port, up to 5 times.
        for _ in range(5):
            self.port = _free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if _started(self.proc, lambda: _redis_command(self.port, "PING").startswith(b"+PONG"), f"redis-server on port {self.port}"):
                return
        pytest.fail("redis-server did not start (5 ports tried)")

    def flush(self) -> None:
        _redis_command(self.port, "FLUSHALL")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


#: Superuser, password and database of the test cluster (as in tests/support/postgres_server.rs).
POSTGRES_USER = "prism"
POSTGRES_PASSWORD = "s3cret-pg"
POSTGRES_DATABASE = "prism"

#: Drops every `prism_*` table (where Prism's postgres backends keep their
#: data), whatever its schema, so tests never see each other's keys or
#: identities. A lock timeout makes a table still held by a connection fail the
#: reset instead of hanging the test. (The same SQL as the Rust suites' reset.)
POSTGRES_RESET_SQL = r"""
SET lock_timeout = '10s';
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT schemaname, tablename FROM pg_tables
        WHERE tablename LIKE 'prism\_%'
          AND schemaname NOT IN ('pg_catalog', 'information_schema')
    LOOP
        -- A table already dropped by an earlier CASCADE is skipped.
        EXECUTE format('DROP TABLE IF EXISTS %I.%I CASCADE', t.schemaname, t.tablename);
    END LOOP;
END
$$;
"""


def _postgres_bin_dir() -> Path:
    """The directory with `initdb` and `postgres`: the first on PATH that has
    both, else Debian's /usr/lib/postgresql/<version>/bin (off PATH), the
    newest version."""

    def has_both(directory: Path) -> bool:
        return (directory / "initdb").is_file() and (directory / "postgres").is_file()

    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry and has_both(Path(entry)):
            return Path(entry)
    versions: list[tuple[list[int], Path]] = []
    root = Path("/usr/lib/postgresql")
    for child in root.iterdir() if root.is_dir() else []:
        try:
            # "15", "9.6": compared as numbers, so 10 is newer than 9.6.
            version = [int(part) for part in child.name.split(".")]
        except ValueError:
            continue
        if has_both(child / "bin"):
            versions.append((version, child / "bin"))
    if not versions:
        pytest.fail(
            "PostgreSQL is not installed (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin); "
            "`just test` installs it"
        )
    return max(versions)[1]


def _postgres_client_tool(bin_dir: Path, name: str) -> str:
    """`psql` or `pg_isready` of the same installation as `bin_dir`'s initdb
    (which may be a symlink into it from a dir without the client tools), else
    the one on PATH (Debian's version-selecting wrapper)."""
    for directory in (bin_dir, (bin_dir / "initdb").resolve().parent):
        if (directory / name).is_file():
            return str(directory / name)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (package postgresql-client); `just test` installs it")
    return found


class PostgresServer:
    """A throwaway PostgreSQL cluster on a free port with database `prism`,
    superuser `prism` with a password over TCP, in a temp dir removed at stop.
    As root (which initdb and postgres refuse) its processes run as the
    `postgres` user the Debian package creates."""

    def __init__(self) -> None:
        self.bin = _postgres_bin_dir()
        self.psql = _postgres_client_tool(self.bin, "psql")
        self.pg_isready = _postgres_client_tool(self.bin, "pg_isready")
        self.run_as: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "the tests run as root, which postgres refuses, and there is no `postgres` user "
                    "to run it as; `just test` installs PostgreSQL (its package creates the user)"
                )
            self.run_as = (entry.pw_uid, entry.pw_gid)
        # In the system temp dir, not pytest's (whose base dir is 0700, closed
        # to the postgres user); the postgres user must enter this one and
        # write in it (initdb creates data/ there, the postmaster its socket
        # and lock file). Short, too: the socket path has a ~107 byte limit.
        self.dir = Path(tempfile.mkdtemp(prefix="prism-pg-"))
        self.dir.chmod(0o755)
        if self.run_as is not None:
            os.chown(self.dir, *self.run_as)
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        try:
            self._initdb()
            for _ in range(5):
                self.port = _free_port()
                # False: it exited at once, most likely the port was taken
                # between _free_port and its bind; another port then.
                if self._launch():
                    break
            else:
                pytest.fail(f"postgres did not start (5 ports tried)\n{self._log_tail()}")
            self._psql("postgres", f"CREATE DATABASE {POSTGRES_DATABASE}")
        except BaseException:
            self.stop()
            raise
        self.url = f"postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/{POSTGRES_DATABASE}"

    def _spawn(self, args: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        """A PostgreSQL server binary, its output to `log`, in the temp dir (our
        cwd may be closed to the postgres user), as the postgres user when we
        are root: set in the child itself rather than through `runuser`/`su`,
        whose fork would make a kill of our child leave the postmaster running."""
        user, group = self.run_as if self.run_as is not None else (None, None)
        return subprocess.Popen(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            user=user,
            group=group,
            extra_groups=[] if self.run_as is not None else None,
        )

    def _initdb(self) -> None:
        pwfile = self.dir / "pwfile"
        pwfile.write_text(f"{POSTGRES_PASSWORD}\n")
        pwfile.chmod(0o600)
        if self.run_as is not None:
            os.chown(pwfile, *self.run_as)
        failures: list[str] = []
        try:
            # C.UTF-8 sorts by code point (byte order for UTF-8); a system
            # without that locale gets plain C, which sorts the same way.
            for locale in ("--locale=C.UTF-8", "--no-locale"):
                args = [str(self.bin / "initdb"), "-D", str(self.data), "-U", POSTGRES_USER, "-E", "UTF8", locale]
                args += ["--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", str(pwfile)]
                with tempfile.TemporaryFile() as out:
                    code = self._spawn(args, out).wait()
                    if code == 0:
                        return
                    out.seek(0)
                    failures.append(f"initdb {locale}: exit {code}\n{out.read().decode(errors='replace').strip()}")
                # The next attempt needs the data dir absent or empty.
                shutil.rmtree(self.data, ignore_errors=True)
        finally:
            pwfile.unlink(missing_ok=True)
        pytest.fail("initdb failed:\n" + "\n".join(failures))

    def _launch(self) -> bool:
        """Starts the postmaster on `self.port` and waits up to 30 s until it
        accepts connections; False when it exited at start."""
        args = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
        # No fsync: a killed server loses nothing the tests would notice (only
        # an OS crash would), and every commit is cheap.
        args += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        # Room for several Prism pools at once.
        args += ["-c", "max_connections=200"]
        with self.log_path.open("ab") as log:
            self.proc = self._spawn(args, log)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            ready = subprocess.run(
                [self.pg_isready, "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                stdin=subprocess.DEVNULL,
                check=False,
            )
            if ready.returncode == 0:
                return True
            if time.monotonic() > deadline:
                pytest.fail(f"postgres on port {self.port} not accepting connections after 30 s\n{self._log_tail()}")
            time.sleep(0.05)

    def _psql(self, database: str, sql: str) -> None:
        """Runs `sql` as one psql command over TCP with the password (the
        client has no PostgreSQL driver)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGPASSWORD=POSTGRES_PASSWORD, PGCONNECT_TIMEOUT="5")
        args = [self.psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port)]
        args += ["-U", POSTGRES_USER, "-d", database, "-c", sql]
        done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"psql on port {self.port} (database {database}) failed: {done.stderr.strip()}\n{sql}")

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        return f"postgres log ({self.log_path}):\n" + "\n".join(lines[-20:])

    def reset(self) -> None:
        """Drops every `prism_*` table: the next prism creates them anew."""
        self._psql(POSTGRES_DATABASE, POSTGRES_RESET_SQL)

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT: the postmaster stops its backends and
        exits), then the cluster's dir is removed."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["memstore", "redis", "postgres"])
def backend_toml(request: pytest.FixtureRequest) -> str:
    """The `[backends.store]` table the namespaces use: each test runs on all three."""
    if request.param == "memstore":
        return '[backends.store]\ntype = "memstore"\n'
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        postgres.reset()
        return f'[backends.store]\ntype = "postgres"\nurl = "{postgres.url}"\n'
    redis: RedisServer = request.getfixturevalue("redis_server")
    redis.flush()
    return f'[backends.store]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis.port}"\n'


class NatsServer:
    """A real nats-server with JetStream (core NATS works on it too)."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
        if binary is None:
            pytest.fail("nats-server is not installed; `just test` installs it")
        # As for Redis: a port taken before the server binds it, another port.
        for _ in range(5):
            self.port = _free_port()
            self.url = f"nats://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(tmp)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

            def ready() -> bool:
                self._request("$JS.API.INFO", b"")
                return True

            if _started(self.proc, ready, f"nats-server on port {self.port}"):
                return
        pytest.fail("nats-server did not start (5 ports tried)")

    def _request(self, subject: str, payload: bytes) -> dict[str, object]:
        """One NATS request over a raw socket (the client has no NATS dependency)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            reader = conn.makefile("rb")
            if not reader.readline().startswith(b"INFO "):
                raise RuntimeError("no INFO from nats-server")
            conn.sendall(
                b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                b"SUB _INBOX.prism-tests 1\r\n"
                + f"PUB {subject} _INBOX.prism-tests {len(payload)}\r\n".encode()
                + payload
                + b"\r\n"
            )
            while True:
                line = reader.readline()
                if not line:
                    raise RuntimeError(f"nats-server closed the connection during {subject}")
                if line.startswith(b"PING"):
                    conn.sendall(b"PONG\r\n")
                elif line.startswith(b"-ERR"):
                    raise RuntimeError(line.decode().strip())
                elif line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    body = reader.read(size + 2)[:size]
                    reply: dict[str, object] = json.loads(body) if body else {}
                    return reply

    def reset(self) -> None:
        """Deletes every JetStream stream (and with them their consumers), so
        no test sees another's messages or durable groups."""
        names = self._request("$JS.API.STREAM.NAMES", b"{}").get("streams") or []
        assert isinstance(names, list)
        for name in names:
            self._request(f"$JS.API.STREAM.DELETE.{name}", b"")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


PUBSUB_NAMESPACES = """
[backends.kvmem]
type = "memstore"

[namespaces.default]
pattern = "pubsub"
slots = { pubsub = "broker" }

[namespaces.events]
pattern = "pubsub"
slots = { pubsub = "broker" }

[namespaces.events.settings]
max_payload_bytes = 1024

[namespaces.kv]
pattern = "keyvalue"
slots = { kv = "kvmem" }
"""


@pytest.fixture(params=["memstore", "redis", "nats", "jetstream"])
def pubsub_backend(request: pytest.FixtureRequest) -> str:
    """The broker behind the PubSub namespaces: each PubSub test runs on all four."""
    name: str = request.param
    return name


@pytest.fixture
def broker_toml(request: pytest.FixtureRequest, pubsub_backend: str) -> str:
    """The `[backends.broker]` table the PubSub namespaces use."""
    if pubsub_backend == "memstore":
        return '[backends.broker]\ntype = "memstore"\n'
    if pubsub_backend == "redis":
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flush()
        return f'[backends.broker]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis.port}"\n'
    nats: NatsServer = request.getfixturevalue("nats_server")
    nats.reset()
    jetstream = "jetstream = true\n" if pubsub_backend == "jetstream" else ""
    return f'[backends.broker]\ntype = "nats"\nurl = "{nats.url}"\n{jetstream}'


@pytest.fixture
def pubsub_addr(tmp_path: Path, broker_toml: str) -> Iterator[str]:
    """Address of a fresh prism server whose `default` and `events` namespaces
    are PubSub on one broker (`events` limits payloads to 1024 bytes) and whose
    `kv` namespace is KeyValue."""
    with run_prism(tmp_path, broker_toml + PUBSUB_NAMESPACES) as addr:
        yield addr


@pytest.fixture
async def pubsub_client(pubsub_addr: str) -> AsyncIterator[PrismClient]:
    """A client of the PubSub `default` namespace."""
    async with PrismClient(pubsub_addr) as c:
        yield c


REGISTRY_NAMESPACES = """
[namespaces.default]
pattern = "multicast-registry"
slots = {{ registry = "{registry}", messaging = "{messaging}" }}

[namespaces.other]
pattern = "multicast-registry"
slots = {{ registry = "{registry}", messaging = "{messaging}" }}

[namespaces.kv]
pattern = "keyvalue"
slots = {{ kv = "{registry}" }}
"""


@pytest.fixture(
    params=[("memstore", "memstore"), ("redis", "jetstream"), ("postgres", "nats")],
    ids=lambda p: "-".join(dict.fromkeys(p)),
)
def registry_backends(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The backends behind the registry namespaces' (`registry`, `messaging`)
    slots: each registry test runs on all three pairs (`nats` is core NATS)."""
    pair: tuple[str, str] = request.param
    return pair


@pytest.fixture
def registry_toml(request: pytest.FixtureRequest, registry_backends: tuple[str, str]) -> str:
    """Backends plus namespaces `default` and `other` (Multicast Registry) and
    `kv` (KeyValue, on the registry slot's backend)."""
    if registry_backends == ("memstore", "memstore"):
        backends = '[backends.mem]\ntype = "memstore"\n'
        registry, messaging = "mem", "mem"
    elif registry_backends == ("postgres", "nats"):
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        postgres.reset()
        # Core NATS keeps nothing between servers: no reset.
        nats_core: NatsServer = request.getfixturevalue("nats_server")
        backends = (
            f'[backends.pg]\ntype = "postgres"\nurl = "{postgres.url}"\n\n'
            f'[backends.bus]\ntype = "nats"\nurl = "{nats_core.url}"\n'
        )
        registry, messaging = "pg", "bus"
    elif registry_backends == ("redis", "jetstream"):
        redis: RedisServer = request.getfixturevalue("redis_server")
        redis.flush()
        nats: NatsServer = request.getfixturevalue("nats_server")
        nats.reset()
        backends = (
            f'[backends.cache]\ntype = "redis"\nurl = "redis://127.0.0.1:{redis.port}"\n\n'
            f'[backends.bus]\ntype = "nats"\nurl = "{nats.url}"\njetstream = true\n'
        )
        registry, messaging = "cache", "bus"
    else:
        raise AssertionError(f"no backends table for the pair {registry_backends}")
    return backends + REGISTRY_NAMESPACES.format(registry=registry, messaging=messaging)


@pytest.fixture
def registry_addr(tmp_path: Path, registry_toml: str) -> Iterator[str]:
    """Address of a fresh prism server whose `default` and `other` namespaces
    are Multicast Registries on one pair of backends and whose `kv` namespace
    is KeyValue."""
    with run_prism(tmp_path, registry_toml) as addr:
        yield addr


@pytest.fixture
async def registry_client(registry_addr: str) -> AsyncIterator[PrismClient]:
    """A client of the registry `default` namespace."""
    async with PrismClient(registry_addr) as c:
        yield c


class PrismProcess:
    """`prism serve --config <dir>/prism.toml` on free ports, its stderr in
    `<dir>/prism.log`. `metrics=True` also serves /metrics (`metrics_url`)."""

    def __init__(self, directory: Path, config_text: str, *, metrics: bool = False) -> None:
        if not PRISM_BIN.exists():
            pytest.fail(f"{PRISM_BIN} is missing; build it with `just build` (or set PRISM_BIN)")
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "prism.toml"
        self.config.write_text(config_text)
        self.log_path = directory / "prism.log"
        self._log = self.log_path.open("w")
        args = [str(PRISM_BIN), "serve", "--config", str(self.config), "--listen", "127.0.0.1:0"]
        if metrics:
            args += ["--metrics-listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        serving = self.proc.stdout.readline()
        listening = self.proc.stdout.readline() if metrics else "prism: metrics on -"
        if not serving.startswith("prism: serving on ") or not listening.startswith("prism: metrics on "):
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"prism did not start: {serving!r} {listening!r}\n{self.log_path.read_text()}")
        self.addr = serving.removeprefix("prism: serving on ").strip()
        self.metrics_url = listening.removeprefix("prism: metrics on ").strip()
        self.killed = False

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL: no drain (a crashed replica)."""
        self.proc.kill()
        self.killed = True

    def stop(self) -> None:
        """SIGTERM, which must be graceful (exit 0 within 15 s); after kill() it only reaps."""
        if not self.killed:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("prism did not shut down within 15 s of SIGTERM")
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._log.close()
        if not self.killed:
            assert code == 0, f"prism exited with {code}:\n{self.log()}"


@contextlib.contextmanager
def run_prism(tmp_path: Path, config_text: str) -> Iterator[str]:
    """Runs `prism serve` on a free port with this config; yields its address."""
    prism = PrismProcess(tmp_path, config_text)
    try:
        yield prism.addr
    finally:
        prism.stop()


@pytest.fixture
def prism_addr(tmp_path: Path, backend_toml: str) -> Iterator[str]:
    """Address of a fresh prism server whose `default` and `other` namespaces share one backend."""
    with run_prism(tmp_path, backend_toml + NAMESPACES) as addr:
        yield addr


@pytest.fixture
async def client(prism_addr: str) -> AsyncIterator[PrismClient]:
    async with PrismClient(prism_addr) as c:
        yield c


# -- auth: a real OIDC issuer and a prism that trusts it ------------------------------

AUTH_NAMESPACES = """
[backends.mem]
type = "memstore"

[namespaces.orders]
pattern = "keyvalue"
slots = { kv = "mem" }

[namespaces.events]
pattern = "pubsub"
slots = { pubsub = "mem" }

[namespaces.devices]
pattern = "multicast-registry"
slots = { registry = "mem", messaging = "mem" }
"""

#: Access token lifetime of the `short_issuer` (seconds): long enough for a
#: device flow (one 5 s poll), short enough to wait out in a test.
SHORT_ACCESS_TTL = 8


def auth_toml(issuer: str, *, leeway_secs: int | None = None) -> str:
    """A config with `[auth] mode = "jwt"` trusting `issuer` (audience `prism`,
    JWKS refetched at most every second) and namespaces `orders` (KeyValue),
    `events` (PubSub) and `devices` (Multicast Registry), all on MemStore."""
    leeway = f"leeway_secs = {leeway_secs}\n" if leeway_secs is not None else ""
    return (
        f'[auth]\nmode = "jwt"\nissuer = "{issuer}"\naudience = "prism"\njwks_refetch_secs = 1\n{leeway}'
        + AUTH_NAMESPACES
    )


def _start_issuer(keys_file: Path, access_ttl: int | None = None) -> OidcIssuer:
    if not (ISSUER_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(f"the test OIDC issuer is not installed: run `npm ci` in {ISSUER_DIR}")
    return OidcIssuer.start(keys_file, access_ttl=access_ttl)


@pytest.fixture(scope="session")
def oidc_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuer]:
    """The test OIDC issuer (access tokens valid 300 s), for the whole session."""
    issuer = _start_issuer(tmp_path_factory.mktemp("oidc") / "keys.json")
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
def auth_addr(oidc_issuer: OidcIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a prism with JWT auth trusting `oidc_issuer` (see `auth_toml`)."""
    with run_prism(tmp_path_factory.mktemp("prism-auth"), auth_toml(oidc_issuer.issuer)) as addr:
        yield addr


@pytest.fixture(scope="session")
def short_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcIssuer]:
    """A second issuer whose access tokens live `SHORT_ACCESS_TTL` seconds."""
    issuer = _start_issuer(tmp_path_factory.mktemp("oidc-short") / "keys.json", access_ttl=SHORT_ACCESS_TTL)
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
def short_auth_addr(short_issuer: OidcIssuer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A prism trusting `short_issuer` with no clock leeway: a token is refused
    from its `exp` on."""
    with run_prism(tmp_path_factory.mktemp("prism-auth-short"), auth_toml(short_issuer.issuer, leeway_secs=0)) as addr:
        yield addr
