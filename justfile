# Prism task runner. Every recipe installs what it needs first.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := justfile_directory() / ".venv"

# List the recipes.
default:
    @just --list

# Start Prism: embedded MemStore, KeyValue namespace `default` and PubSub namespace `events`, 127.0.0.1:8980.
dev *args: setup-rust
    cargo run --release -p prism -- dev {{ args }}

# Build target/release/prism (built-in patterns embedded).
build: setup-rust
    cargo build --release -p prism

# Every test: Rust unit + integration + sandbox suites, then the Python client suite.
test: setup-rust setup-python setup-services setup-node
    # One feature set for binary and tests (building -p prism alone would compile twice).
    cargo build --release --workspace --all-targets
    # `just dev` (`cargo run -p prism`) after this builds nothing: the same feature set.
    @if cargo build --release -p prism 2>&1 | grep -q Compiling; then echo "cargo build -p prism (what just dev runs) recompiled after the workspace build: a feature only tests or bench enable; enable it in the workspace dependency" >&2; exit 1; fi
    cargo test --release --workspace
    # The guest patterns' own unit tests, natively (their wasm build is in build.rs).
    cd guest-patterns && cargo test --workspace --target-dir ../target/guest-native
    PRISM_BIN={{ justfile_directory() }}/target/release/prism {{ venv }}/bin/python -m pytest clients/python/tests -q

# Benchmarks with same-run baselines; writes bench/results.json (`just bench --quick`: a regression guard under a minute).
bench *args: setup-rust setup-services setup-node
    # The same build as `just test`; servers under test run as their own processes.
    cargo build --release --workspace --all-targets
    PRISM_BIN={{ justfile_directory() }}/target/release/prism {{ justfile_directory() }}/target/release/prism-bench {{ args }}

# The perf regression guard CI runs: `bench --quick`, failing when a row in bench/guard.json is out of its bound.
bench-guard: (bench "--quick" "--guard" (justfile_directory() / "bench/guard.json") "--out" (justfile_directory() / "target/bench-guard.json"))

# Format Rust (host and guests).
fmt:
    cargo fmt --all
    cd guest-patterns && cargo fmt --all

# Formatting and clippy (-D warnings) over host, tests, bench and guests; mypy --strict over the Python client.
lint: setup-rust setup-python
    cargo fmt --all --check
    cd guest-patterns && cargo fmt --all --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    cd guest-patterns && cargo clippy --release --target wasm32-wasip2 --target-dir ../target/guest-patterns --workspace -- -D warnings
    {{ venv }}/bin/pip install -q --disable-pip-version-check mypy types-grpcio
    cd clients/python && {{ venv }}/bin/mypy

# Regenerate the Python client's gRPC stubs from proto/.
proto-python: setup-python
    {{ venv }}/bin/pip install -q 'grpcio-tools>=1.85.1'
    {{ venv }}/bin/python clients/python/generate_stubs.py

# The wasm32-wasip2 target (rustup does not fetch it from rust-toolchain.toml here).
setup-rust:
    @rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Backend servers the tests and bench start on free ports (Debian packages).
setup-services:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    # Debian's nats-server is in /usr/sbin, which a non-root PATH may lack.
    command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
    # Debian keeps initdb and postgres in /usr/lib/postgresql/<version>/bin, off PATH. The tests
    # run their own clusters; the package's postinst may create and start a system one on 5432,
    # which they never use.
    command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing ${missing[*]} (apt)"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi

# The test OIDC issuer (oidc-provider on Node) the auth tests and bench start; from the committed lockfile.
setup-node:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing nodejs and npm (apt)"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm
    fi
    cd tests/oidc
    # Reinstall only when the lockfile changed since the last install.
    if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.prism-installed-lock; then
        npm ci --no-audit --no-fund --loglevel=error
        cp package-lock.json node_modules/.prism-installed-lock
    fi

# A virtualenv with the Python client (editable) and its test tools.
setup-python:
    @test -x {{ venv }}/bin/python || python3 -m venv {{ venv }} || (apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv {{ venv }})
    @{{ venv }}/bin/pip install -q --disable-pip-version-check -e 'clients/python[test]'
