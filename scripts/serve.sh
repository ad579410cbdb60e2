#!/usr/bin/env bash
# Builds the app (release wasm) and serves it on http://127.0.0.1:8080 (Ctrl-C stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The release build's Content-Security-Policy reaches only the Hugging Face hosts; served here
# for development, it may also reach the local tiny test model's host (README "Security").
export QLW_CSP_CONNECT_EXTRA="${QLW_CSP_CONNECT_EXTRA:-http://127.0.0.1:8090}"
exec trunk serve --release
