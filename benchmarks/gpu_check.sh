#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, as one run of about six minutes, for a
# machine that already has CUDA, PyTorch with CUDA, numba-cuda, ml_dtypes and pytest
# (no network needed):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]   # default: $OUT, else gpu-results
#
# 1. builds and installs fusedopt from this tree (needs Cython, cython-cmake,
#    scikit-build-core, CMake >= 3.21, NumPy >= 2 already installed; where the
#    build fails, the steps below run the source tree on PYTHONPATH instead: the
#    CUDA kernels are Numba's either way, but the drop-in's C plan is missing
#    then, so its small-tensor timings come out slower than an install's);
# 2. the CUDA tests on the device (tests/test_cuda.py, tests/test_cuda_dropin.py with
#    NUMBA_ENABLE_CUDASIM=0: every algorithm against the NumPy oracle and torch.optim
#    on CUDA tensors, Muon's device Newton-Schulz, bf16 parameters and state);
# 3. Adam float32 at 16M and 256M elements against the device-to-device copy
#    bandwidth and torch's fused CUDA AdamW (fusedopt-bench --device cuda);
# 4. the drop-in against torch.optim.AdamW(fused=True) on 500 small tensors and
#    GPT-2 small's 148 (benchmarks/dropin.py --device cuda).
# Each step has its own time limit and log in OUT_DIR; a failed step does not stop
# the next. The last lines sum up each step's exit status; the script exits with
# the highest of them.
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
python=${PYTHON:-python3}
worst=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -n 15 "$out/$name.log"
    if [ "$rc" -gt "$worst" ]; then worst=$rc; fi
    return "$rc"
}

: > "$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, numba; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('numba', numba.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
if ! step build 120 "$python" -m pip install -q --no-build-isolation --no-deps .; then
    echo "build failed: running the source tree on PYTHONPATH (no compiled checks)" \
        | tee -a "$out/summary.txt"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
step tests 150 env NUMBA_ENABLE_CUDASIM=0 "$python" -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_cuda_dropin.py
step bench 60 env NUMBA_ENABLE_CUDASIM=0 "$python" -m fusedopt.bench --device cuda \
    --sizes 16M,256M --json "$out/bench.json" --markdown "$out/bench.md"
step dropin 60 env NUMBA_ENABLE_CUDASIM=0 "$python" benchmarks/dropin.py --device cuda
cat "$out/summary.txt"
exit "$worst"
