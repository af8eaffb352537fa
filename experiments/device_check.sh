#!/usr/bin/env bash
# The accelerator check in one call: whoever has a GPU (or TPU) for a few minutes runs this from
# the repository root, with no install (it runs from source on the packages the machine has:
# jax with its CUDA/TPU plugin, flax, orbax, transformers, tokenizers, safetensors, absl, tqdm,
# jinja2, pytest), and reads one summary at the end (each step has a time limit; under 10
# minutes in all, about 6 on one H200).
#
#   bash experiments/device_check.sh [OUTDIR]        # default OUTDIR: $OUT or /tmp/pcjax_device_check
#
# Steps (each logged to OUTDIR/<step>.log; the summary lists rc and seconds per step):
#   compile       every GPU kernel configuration of the supported range, compiled once
#   kernel_tests  the Pallas kernels vs the reference on the device (tests marked `accelerator`)
#   attention     bench_attention --quick (decode B=8/64, 2k/8k/32k, bf16: % of peak and of a copy)
#   engine_tests  the engine goldens with attention_impl="pallas", the host tier's tests (there on
#                 real pinned_host memory), sharded runs over all local devices (tests/parallel)
#   offload       bench_offload on pcjax-small (TTFT device/host/recompute, device_put bandwidth)
# On a CPU-only machine the accelerator tests skip (pytest says why), `compile` lowers for an
# abstract H200 instead of compiling, and the benchmarks run their CPU/interpret variants; the
# summary says so.
set -uo pipefail
out=${1:-${OUT:-/tmp/pcjax_device_check}}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
# No autotuning of XLA's own GEMMs: compiles in seconds, not minutes (the kernels are Pallas).
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0"
summary="$out/summary.txt"
: >"$summary"

backend=$("$py" -c 'import jax; print(jax.default_backend())' 2>/dev/null || echo "none")
{
  echo "pcjax device check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$py" -c 'import jax, sys; d = jax.devices(); print(f"python {sys.version.split()[0]}, jax {jax.__version__}, {len(d)} x {d[0].device_kind} ({d[0].platform})")'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
  [ "$backend" = cpu ] && echo "NOTE: no accelerator here: accelerator tests skip, kernels are only lowered, benchmarks run on CPU"
} | tee -a "$summary"

run_step() {  # name, timeout seconds, command...
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name: rc=$rc, $(($(date +%s) - start)) s" | tee -a "$summary"
}

# Most telling first: a step cut off by its limit still leaves the earlier ones' logs.
run_step compile 90 "$py" -m experiments.compile_kernels --workdir="$out/compile"
pytest=("$py" -m pytest -q -p no:cacheprovider -rs -W "ignore::DeprecationWarning")
run_step kernel_tests 120 "${pytest[@]}" tests/kernels/test_rpa_device.py
run_step attention 150 "$py" -m experiments.bench_attention --quick --workdir="$out/attention"
engine_tests=(
  tests/engine/test_golden_engine.py::test_engine_pallas_on_device_equals_transformers
  tests/cache/test_host_kv.py tests/engine/test_host_tier.py
)
[ -f tests/parallel/test_device_parallel.py ] && engine_tests+=(tests/parallel/test_device_parallel.py)
run_step engine_tests 200 "${pytest[@]}" "${engine_tests[@]}"
run_step offload 90 "$py" -m experiments.bench_offload --prefix_lens=16,256,2048 --repeats=2 \
  --bandwidth_repeats=5 --workdir="$out/offload"

{
  echo
  for step in kernel_tests engine_tests; do
    echo "== $step"; grep -E "passed|failed|error" "$out/$step.log" | tail -n 2
    grep -E "^(FAILED|ERROR)" "$out/$step.log" | head -n 12
  done
  echo "== compile"; grep -E "FAILED|compile_kernels:" "$out/compile.log" | tail -n 12
  echo "== attention"; sed -n '/^all cases:/,$p' "$out/attention.log"; grep -m1 "copy" "$out/attention.log"
  echo "== offload"; tail -n 14 "$out/offload.log"
} | tee -a "$summary"
