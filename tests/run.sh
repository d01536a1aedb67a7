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
if ! command -v redis-server >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
if [ -z "${CELERIAC_TEST_REDIS:-}" ] && ! redis_up; then
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
        --logfile /tmp/celeriac-test-redis.log
    for _ in $(seq 50); do redis_up && break; sleep 0.1; done
    redis_up || { echo "redis-server did not start" >&2; exit 1; }
fi

cargo build --release --target wasm32-wasip2 -p math -p text -p misbehave
cargo test "$@"
