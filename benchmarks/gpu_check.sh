#!/usr/bin/env bash
# Every check that needs an NVIDIA GPU, as one run of under ten minutes, for a machine
# that already has CUDA, PyTorch with CUDA, numba-cuda, Cython, scikit-build-core and
# pytest (no network needed):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: gpu-results
#
# 1. builds and installs fusedopt from this tree (the compiled checks included);
# 2. the CUDA tests on the device (tests/test_cuda.py, tests/test_cuda_dropin.py with
#    NUMBA_ENABLE_CUDASIM=0: every algorithm against the NumPy oracle and torch.optim
#    on CUDA tensors, Muon's device Newton-Schulz, bf16 parameters and state);
# 3. Adam float32 at 16M and 256M elements against the device-to-device copy
#    bandwidth and torch's fused CUDA AdamW (fusedopt-bench --device cuda);
# 4. the drop-in against torch.optim.AdamW(fused=True) on 500 small tensors and
#    GPT-2 small's 148 (benchmarks/dropin.py --device cuda).
# Each step has its own time limit and log in OUT_DIR; a failed step does not stop
# the next. The last lines printed sum up each step's exit status.
set -u
out=${1:-gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, record status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -n 15 "$out/$name.log"
}

: > "$out/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$python" -c "import torch, numba; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print('numba', numba.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
step build 150 "$python" -m pip install -q --no-build-isolation --no-deps .
step tests 200 env NUMBA_ENABLE_CUDASIM=0 "$python" -m pytest -q -p no:cacheprovider \
    tests/test_cuda.py tests/test_cuda_dropin.py
step bench 100 env NUMBA_ENABLE_CUDASIM=0 "$python" -m fusedopt.bench --device cuda \
    --sizes 16M,256M --json "$out/bench.json" --markdown "$out/bench.md"
step dropin 100 env NUMBA_ENABLE_CUDASIM=0 "$python" benchmarks/dropin.py --device cuda
cat "$out/summary.txt"
