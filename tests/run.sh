#!/usr/bin/env bash
# The test command: installs what the tests need (the wasm target, a Redis,
# the guest toolchains), builds the example task components from tasks/,
# then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/toolchains.sh

ensure_wasm_target
# Queue tests talk to a real Redis (CELERIAC_TEST_REDIS, default the local
# one); one test starts redis-server processes of its own, and the TLS test
# makes its certificates with openssl.
ensure_redis
command -v openssl >/dev/null 2>&1 || apt_install openssl
# Guest toolchains for the polyglot examples; Celery (PyPI) as the
# producer and worker of the interop tests.
ensure_c
ensure_python celery='celery[redis]' redis=redis
ensure_js
ensure_browser

cargo build --release --target wasm32-wasip2 -p math -p text -p misbehave -p web
cargo test "$@"
