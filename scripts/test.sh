#!/usr/bin/env bash
# Runs every test: native (CPU backend + native wgpu on Vulkan/lavapipe), browser unit tests
# (wasm-bindgen-test in headless Chromium with WebGPU through SwiftShader), and end-to-end tests
# of the built app served on 127.0.0.1. Installs what it needs first (scripts/setup.sh --test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
export CHROMEDRIVER=/usr/bin/chromedriver
export WASM_BINDGEN_TEST_TIMEOUT=300
started=$SECONDS
step() { printf '\n== %s (t=%ss)\n' "$*" "$((SECONDS - started))"; }

step "native tests: cargo test"
cargo test --all-targets

step "exports read back by an independent reader: psd-tools (tests/export_check.py)"
rm -rf target/export-check
cargo test --test export export_check_files
.venv-export/bin/python tests/export_check.py target/export-check

step "browser unit tests: wasm-pack test --headless --chrome"
wasm-pack test --headless --chrome

step "mock Hugging Face host: node --test tests/mock-hf/"
node --test tests/mock-hf/

step "app build: trunk build --release"
trunk build --release

step "end-to-end tests: node --test tests/e2e"
(cd tests/e2e && node --test --test-reporter=spec)

step "all tests passed"
