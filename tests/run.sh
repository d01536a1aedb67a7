#!/usr/bin/env bash
# The test command: installs what the tests need (the wasm target, a Redis),
# builds the example task components from tasks/, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust tasks compile to wasm32-wasip2, which emits components directly.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Queue tests talk to a real Redis (CELERIAC_TEST_REDIS, default the local
# one) and one test starts redis-server processes of its own.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# (openssl makes the certificates of the TLS test.)
if ! command -v redis-server >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl
fi
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
if [ -z "${CELERIAC_TEST_REDIS:-}" ] && ! redis_up; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --logfile /tmp/celeriac-test-redis.log
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "redis-server did not start" >&2; exit 1; }
fi

# Guest toolchains for the polyglot examples, all from the package registries:
# clang + wasi-libc (Debian) for C, componentize-py (PyPI) for Python,
# componentize-js + esbuild (npm, per tasks/js-text/package-lock.json) for JS.
c_ready() {
    command -v clang >/dev/null && command -v wasm-ld >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] &&
        ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1
}
if ! c_ready; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld wasi-libc libclang-rt-14-dev-wasm32
fi
py_env=target/toolchains/python
if [ ! -x "$py_env/bin/componentize-py" ]; then
    python3 -m venv "$py_env"
    "$py_env/bin/pip" install -q componentize-py==0.25.1
fi
export PATH="$PWD/$py_env/bin:$PATH"
if [ -f tasks/js-text/package.json ] && [ ! -d tasks/js-text/node_modules/@bytecodealliance/componentize-js ]; then
    (cd tasks/js-text && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo build --release --target wasm32-wasip2 -p math -p text -p misbehave
cargo test "$@"
