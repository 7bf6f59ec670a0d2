#!/usr/bin/env bash
# The prepared run for a lent GPU (one call, installs nothing, ~5 min): the numerics checks that
# behave differently off CPU, then the GPU figures of docs/perf.md. Full logs under $OUT; a
# short summary last. `python3`: the interpreter that holds the GPU image's packages. On CPU, for
# a dry run: JAX_PLATFORMS=cpu CONFIG=4m DTYPE=float32 bash scripts/device_check.sh
set -uo pipefail
OUT="${OUT:-out/device}"
CONFIG="${CONFIG:-bench-1b}"
DTYPE="${DTYPE:-bfloat16}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tee "$OUT/devices.txt"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv > "$OUT/nvidia-smi.txt" 2>&1

# On the device (tests/conftest.py defaults JAX to the CPU, and sets fp32 matmuls to full
# precision: XLA GPU's default for fp32 dots is TF32); the filters run their fixed-trip-count
# loops here for real. (~3 min on a 2-core CPU.)
JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}" timeout 300 python3 -m pytest -p no:cacheprovider \
    tests/test_parity.py tests/test_filters.py tests/test_engine.py > "$OUT/tests.txt" 2>&1
echo "tests (exit $?): $(grep -E '(passed|failed|error)' "$OUT/tests.txt" | tail -1)"

bench() { timeout 150 python3 -m scripts.bench "$@" 2>>"$OUT/bench.err" | tee -a "$OUT/bench.jsonl"; }
bench decode --config "$CONFIG" --dtype "$DTYPE" --batch 1 64 --repeats 3
bench shared-prefix --config "$CONFIG" --dtype "$DTYPE" --n 64 --repeats 2
bench filters --dtype "$DTYPE" --repeats 3
