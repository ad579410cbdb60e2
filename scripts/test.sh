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
# Burn's matmul autotune times every candidate kernel on each new shape; on a software Vulkan
# driver that is minutes per shape. Tests check results, not speed: tune the least.
export CUBECL_AUTOTUNE_LEVEL=minimal
# Incremental caches only pay off for edit-compile loops; here they would add gigabytes to a
# target folder that has to fit on the CI machine's disk beside the browser and release builds.
export CARGO_INCREMENTAL=0
started=$SECONDS
step() { printf '\n== %s (t=%ss)\n' "$*" "$((SECONDS - started))"; }

step "native tests: cargo test"
cargo test --all-targets

step "exports read back by independent readers: psd-tools (tests/export_check.py), GIMP (tests/gimp_check.py)"
rm -rf target/export-check
cargo test --test export export_check_files
.venv-export/bin/python tests/export_check.py target/export-check
.venv-export/bin/python tests/gimp_check.py target/export-check

step "browser unit tests: wasm-pack test --headless --chrome"
# tests/web_download.rs downloads from the mock Hugging Face host at 127.0.0.1:18090 (its CDN on
# :18091, a second origin like the real hub's); it runs only while the browser tests do.
# tests/web_heap.rs streams a generated 155 MB checkpoint (test/heap-weights) from it to the GPU.
mkdir -p target
[ -f target/heap-root/test/heap-weights/transformer/diffusion_pytorch_model.safetensors ] ||
  node tests/heap/make-repo.mjs target/heap-root 150
node tests/mock-hf/server.mjs --port 18090 --cdn-port 18091 --root target/heap-root \
  --generate test/qwen-image-layered-tiny > target/mock-hf-browser.log 2>&1 &
mock_hf_pid=$!
trap 'kill "$mock_hf_pid" 2>/dev/null || true' EXIT
node -e 'const go = (n) => fetch("http://127.0.0.1:18090/__control/health").then((r) => process.exit(r.ok ? 0 : 1), () => n > 0 ? setTimeout(go, 200, n - 1) : process.exit(1)); go(50)'
wasm-pack test --headless --chrome
kill "$mock_hf_pid"

step "mock Hugging Face host: node --test tests/mock-hf/"
node --test tests/mock-hf/

step "app build: trunk build --release"
trunk build --release

step "end-to-end tests: node --test tests/e2e"
(cd tests/e2e && node --test --test-reporter=spec)

step "all tests passed"
