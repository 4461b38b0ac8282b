#!/usr/bin/env bash
# One call on a machine with a GPU: install, run the JAX tests, the parity report and the
# benchmarks, and keep every result under one folder. Under 10 minutes on one GPU.
#
#   bash benchmarks/device_check.sh [OUT_DIR]          # creates .venv-device, installs jax[cuda12]
#   NO_INSTALL=1 bash benchmarks/device_check.sh       # use the active Python (jax with CUDA already there)
#
# Without a GPU it says so and runs the same steps on the CPU (the training shapes only), so the
# script itself is checked end to end anywhere. Results: OUT_DIR (default
# device_check_results/<date>/): summary.txt, devices.txt, pytest.txt, parity.txt,
# parity.json, bench/attention.{md,json} (GPU: also bench/attention_bfloat16.{md,json}),
# bench/decode.{md,json}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-device_check_results/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$out/bench"
summary="$out/summary.txt"
log() { echo "[device_check] $*" | tee -a "$summary"; }
step() {  # step NAME SECONDS OUTFILE COMMAND...: run with a time limit into OUTFILE, log its exit status
  local name=$1 limit=$2 outfile=$3
  shift 3
  local start=$SECONDS
  timeout "$limit" "$@" > "$outfile" 2>&1
  local status=$?
  log "$name: exit $status in $((SECONDS - start)) s"
  return 0
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1
  log "GPU found: $(nvidia-smi -L | head -n 1)"
else
  gpu=0
  log "no GPU found (nvidia-smi is missing or lists no device): running the CPU path (a test subset, the training shapes only)"
fi

if [ "${NO_INSTALL:-0}" != 1 ]; then
  python3 -m venv .venv-device && . .venv-device/bin/activate
  python -m pip install --quiet --upgrade pip
  extra=""
  [ "$gpu" = 1 ] && extra="jax[cuda12]"
  step install 600 "$out/install.txt" pip install --quiet -e '.[test,bench]' $extra
fi

python -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())" | tee "$out/devices.txt"
backend=$(python -c "import jax; print(jax.default_backend())")
if [ "$gpu" = 1 ] && [ "$backend" != gpu ]; then
  log "a GPU is present but jax runs on $backend: the CUDA build of jax did not install or load"
fi

# The JAX tests (the NumPy-only and notebook tests add nothing on a GPU); on the CPU path a
# subset, to check the script itself quickly.
if [ "$gpu" = 1 ]; then
  tests="test_dot_product.py test_chunked.py test_dot_product_attention.py test_dropout.py test_mechanisms.py
         test_kv_cache.py test_seq2seq.py test_nnx_mha.py test_parity.py"
else
  tests="test_dot_product.py test_kv_cache.py"
fi
step pytest 300 "$out/pytest.txt" pytest -q -x -p no:cacheprovider $(printf 'parity_tests/tests/%s ' $tests)
tail -n 1 "$out/pytest.txt" | tee -a "$summary"

parity_limit=240  # a GPU runs it in about 2 minutes; a 2-core CPU shared with other jobs took over 4
[ "$gpu" = 1 ] || parity_limit=600
step parity "$parity_limit" "$out/parity.txt" python -m parity_tests --json "$out/parity.json"
grep -E "passed, .* failed" "$out/parity.txt" | tee -a "$summary"

# The benchmark: on a GPU every shape up to L = 8192 in float32 and the training shapes in bfloat16 (where
# jax.nn's cuDNN path runs, as a peer); on the CPU path only the training shapes, one round,
# four implementations (a check of the script, not a measurement).
if [ "$gpu" = 1 ]; then
  step benchmark 300 "$out/bench/attention.log" python -m benchmarks.attention --quick --no-memory --out "$out/bench"
  step benchmark-bf16 120 "$out/bench/attention_bfloat16.log" python -m benchmarks.attention --training --dtype bfloat16 --no-memory --out "$out/bench"
else
  step benchmark 600 "$out/bench/attention.log" python -m benchmarks.attention --training --repeats 1 --no-memory \
    --impls dot_product_attention,chunked,jax.nn,torch --out "$out/bench"
fi
step decode 240 "$out/bench/decode.log" python -m benchmarks.decode --quick --out "$out/bench"
log "results in $out"
