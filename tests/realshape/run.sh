#!/usr/bin/env bash
# The real-shape checks of tests/realshape/README.md: the native CLI against diffusers at the real
# model's sizes, 4-bit there, and the page against the CLI.
#
#   bash tests/realshape/run.sh ROOT OUT
#
# ROOT: `make_model.py make ROOT`'s folder. OUT: where the runs write (each in its own folder).
# QWEN_LAYERED (default target/native/qwen-layered) and PYTHON (default .venv-fixtures/bin/python)
# name the CLI and the Python that has numpy, Pillow and safetensors; `trunk build --release`
# must have built dist/ for the page. PAGE=0 skips the page (its run on SwiftShader takes about
# half an hour on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=${1:?usage: run.sh ROOT OUT}
out=${2:?usage: run.sh ROOT OUT}
bin=${QWEN_LAYERED:-target/native/qwen-layered}
py=${PYTHON:-.venv-fixtures/bin/python}
repo=$root/test/qwen-image-layered-realshape
ref=$root/reference
[ -f "$ref/case.json" ] || { echo "no $ref/case.json: run .venv-fixtures/bin/python tests/realshape/make_model.py make $root first" >&2; exit 2; }
[ -x "$bin" ] || { echo "no $bin: build it with cargo build --profile native --bin qwen-layered (or set QWEN_LAYERED)" >&2; exit 2; }
[ -x "$py" ] || { echo "no $py: install tests/fixtures/requirements.txt into .venv-fixtures (tests/realshape/README.md), or set PYTHON" >&2; exit 2; }
field() { "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$ref/case.json" "$1"; }
args=(--model "$repo" --image "$ref/input.png" --prompt "$(field prompt)" --negative-prompt "$(field negative_prompt)"
  --layers "$(field layers)" --steps "$(field steps)" --resolution "$(field bucket)"
  --true-cfg-scale "$(field true_cfg_scale)")
[ "$(field cfg_normalize)" = True ] && args+=(--cfg-normalize)
compare() { "$py" tests/realshape/make_model.py compare "$@"; }
timed() {
  local name=$1 start=$SECONDS
  shift
  "$@" > "$out/$name.log" 2>&1 || { tail -20 "$out/$name.log"; echo "$name failed (log: $out/$name.log)"; exit 1; }
  echo "$name: $((SECONDS - start)) s"
}
mkdir -p "$out"

echo "== 1. qwen-layered decompose, f32 on the CPU, the reference's noise, against diffusers"
timed cli-f32 "$bin" decompose "${args[@]}" --noise "$ref/noise.safetensors" --out "$out/cli-f32"
compare "$ref" "$out/cli-f32"

echo "== 2. the same with the transformer and the text encoder 4-bit (no limit: how far 4-bit moves it)"
timed cli-q4 "$bin" decompose "${args[@]}" --noise "$ref/noise.safetensors" --precision q4 --text-precision q4 \
  --out "$out/cli-q4"
compare "$ref" "$out/cli-q4" --latents-rel 1 --pixels 255

if [ "${PAGE:-1}" = 0 ]; then
  echo "the CLI checks passed (PAGE=0: the page was not run)"
  exit 0
fi
echo "== 3. the page (WebGPU, SwiftShader), 4-bit as the real model's entry, against the CLI with the same seed"
timed cli-q4-seed0 "$bin" decompose "${args[@]}" --seed 0 --precision q4 --text-precision q4 --out "$out/cli-q4-seed0"
timed page-q4 node tests/e2e/realshape.mjs "$root" "$out/page-q4" --seed 0
compare "$out/cli-q4-seed0" "$out/page-q4" --case "$ref"
echo "all real-shape checks passed"
