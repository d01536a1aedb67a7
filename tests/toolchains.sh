# Sourced by tests/run.sh and bench/compare: installs, if absent, what they
# need, from the package registries only (rustup, Debian, PyPI, npm).
# Expects to be sourced from the repository root.

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Rust tasks compile to wasm32-wasip2, which emits components directly.
ensure_wasm_target() {
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
        rustup target add wasm32-wasip2
    fi
}

# A Redis on 127.0.0.1:6379, started here if none answers (unless the
# caller points elsewhere with CELERIAC_TEST_REDIS).
ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server
    fi
    redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
    if [ -z "${CELERIAC_TEST_REDIS:-}" ] && ! redis_up; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --logfile /tmp/celeriac-test-redis.log
        for _ in $(seq 50); do redis_up && break; sleep 0.1; done
        redis_up || { echo "redis-server did not start" >&2; return 1; }
    fi
}

# clang + wasi-libc (Debian) for the C guest.
ensure_c() {
    if ! { command -v clang >/dev/null && command -v wasm-ld >/dev/null && [ -f /usr/lib/wasm32-wasi/libc.a ] &&
        ls /usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a >/dev/null 2>&1; }; then
        apt_install clang lld wasi-libc libclang-rt-14-dev-wasm32
    fi
}

# One virtual environment under target/ holding componentize-py (the Python
# guest) and whatever else the caller names as "command=requirement" pairs,
# e.g. `ensure_python celery='celery[redis]'`; put on PATH.
PY_ENV=target/toolchains/python
ensure_python() {
    if [ ! -x "$PY_ENV/bin/python" ]; then
        # Debian's python3 needs python3-venv for this.
        python3 -m venv "$PY_ENV" 2>/dev/null || {
            rm -rf "$PY_ENV"
            apt_install python3-venv
            python3 -m venv "$PY_ENV"
        }
    fi
    local need=()
    [ -x "$PY_ENV/bin/componentize-py" ] || need+=("componentize-py==0.25.1")
    local pair
    for pair in "$@"; do
        "$PY_ENV/bin/python" -c "import ${pair%%=*}" 2>/dev/null || need+=("${pair#*=}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        "$PY_ENV/bin/pip" install -q "${need[@]}"
    fi
    export PATH="$PWD/$PY_ENV/bin:$PATH"
}

# componentize-js + esbuild (npm, per tasks/js-text/package-lock.json).
ensure_js() {
    if [ -f tasks/js-text/package.json ] && [ ! -d tasks/js-text/node_modules/@bytecodealliance/componentize-js ]; then
        (cd tasks/js-text && npm ci --no-audit --no-fund --loglevel=error)
    fi
}

# Debian's chromium and its chromedriver, for the console's browser test.
ensure_browser() {
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt_install chromium chromium-driver
    fi
}
