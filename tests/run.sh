#!/usr/bin/env bash
# The test command: installs what the tests need, builds the example task
# components from tasks/, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rust tasks compile to wasm32-wasip2, which emits components directly.
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

cargo build --release --target wasm32-wasip2 -p math -p text -p misbehave
cargo test "$@"
