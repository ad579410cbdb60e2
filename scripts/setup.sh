#!/usr/bin/env bash
# Installs everything the build (and, with --test, the tests) need, on Debian/Ubuntu.
# Idempotent: what is already installed at the right version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

WASM_BINDGEN_VERSION=0.2.130   # = the wasm-bindgen crate pinned in Cargo.toml
TRUNK_VERSION=0.21.14          # newest Trunk that builds with rustc 1.95
WASM_PACK_VERSION=0.15.1
for_tests=false
[ "${1:-}" = "--test" ] && for_tests=true

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
command -v curl >/dev/null || packages+=(curl)
command -v cc >/dev/null || packages+=(build-essential)
command -v pkg-config >/dev/null || packages+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || packages+=(libssl-dev)
if $for_tests; then
  command -v chromium >/dev/null || packages+=(chromium)
  command -v chromedriver >/dev/null || packages+=(chromium-driver)
  ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers)
  command -v node >/dev/null || packages+=(nodejs)
  command -v npm >/dev/null || packages+=(npm)
  command -v python3 >/dev/null || packages+=(python3)
  python3 -c "import ensurepip, venv" 2>/dev/null || packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
  say "apt: ${packages[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi
# GIMP, the second independent reader of the PSD export (tests/gimp_check.py runs its
# gimp-console in batch mode); without its recommended extras (help, plug-in sets, fonts).
if $for_tests && ! command -v gimp-console >/dev/null; then
  say "apt: gimp (--no-install-recommends)"
  [ ${#packages[@]} -gt 0 ] || as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gimp
fi

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "rustup target add wasm32-unknown-unknown"
  rustup target add wasm32-unknown-unknown
fi

# `cargo install --locked` fails for wasm-bindgen-cli here (a pinned dependency is missing
# from the registry), so it is installed unlocked; Trunk is installed locked.
version_of() { "$1" --version 2>/dev/null | awk '{print $2}'; }
if [ "$(version_of wasm-bindgen)" != "$WASM_BINDGEN_VERSION" ]; then
  say "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
fi
if [ "$(version_of trunk)" != "$TRUNK_VERSION" ]; then
  say "cargo install trunk $TRUNK_VERSION"
  cargo install trunk --version "$TRUNK_VERSION" --locked --force
fi
if $for_tests; then
  if [ "$(version_of wasm-pack)" != "$WASM_PACK_VERSION" ]; then
    say "cargo install wasm-pack $WASM_PACK_VERSION"
    cargo install wasm-pack --version "$WASM_PACK_VERSION" --force
  fi
  # The independent reader for the PSD/ORA exports (psd-tools), in a venv inside the checkout.
  if ! .venv-export/bin/python -c "import psd_tools" 2>/dev/null; then
    say "python venv .venv-export (tests/requirements-export.txt: psd-tools, Pillow)"
    python3 -m venv .venv-export
    .venv-export/bin/pip install -q --disable-pip-version-check -r tests/requirements-export.txt
  fi
  if [ ! -d tests/e2e/node_modules/playwright-core ]; then
    say "npm ci (tests/e2e: playwright-core, driving the system Chromium)"
    (cd tests/e2e && npm ci --no-audit --no-fund)
  fi
fi
