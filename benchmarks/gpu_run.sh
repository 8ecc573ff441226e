#!/usr/bin/env bash
# Everything nbbag checks on a real GPU, in one run sized for a short lease (~4 min on
# an H200): the device and package versions, benchmarks/gpu_bench.py at two shapes,
# and the GPU's tests (pytest -m cuda) on the device instead of Numba's simulator.
# Each step has its own time limit, so that one step's failure still leaves the others'
# results.  Logs go to OUTDIR; the benchmark tables are printed last.
#
# Usage, on the GPU machine, from the repository root: bash benchmarks/gpu_run.sh OUTDIR
# (TESTS="tests/test_cuda.py ..." runs those files' GPU tests only; TEST_SECONDS caps
# them, 300 by default; SHAPES=d128 benchmarks the first shape only).
set -u
out="${1:-/tmp/nbbag-gpu}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NUMBA_ENABLE_CUDASIM=0 CI=1
python=${PYTHON:-python3}
# Wheels carried in .whl/ (a NumPy that numba-cuda supports, where the machine's is
# newer: numba-cuda 0.30 still names np.row_stack, gone in NumPy 2.5).  Fetched here
# with `pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux_2_28_x86_64 -d .whl numpy==2.4.6` (.whl/ is not committed).
if compgen -G ".whl/*.whl" >/dev/null; then
    $python -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem \
    --format=csv 2>&1 | tee "$out/device.txt"
$python - <<'EOF' 2>&1 | tee -a "$out/device.txt"
import sys, numpy, numba, torch
from importlib.metadata import version
print("python", sys.version.split()[0], "numpy", numpy.__version__, "numba",
      numba.__version__, "numba-cuda", version("numba-cuda"), "torch", torch.__version__)
EOF

# The default shape: V = 10M x 128 float32 (5.1 GB), 65,536 bags of 50.
timeout 180 $python benchmarks/gpu_bench.py --repeat 30 >"$out/bench_d128.txt" 2>&1
echo "gpu_bench (D = 128) exit $?" >>"$out/bench_d128.txt"
# A recommender's shape: D = 64, 262,144 bags of 20 (SHAPES=d128 leaves it out).
touch "$out/bench_d64.txt"
if [[ "${SHAPES:-d128 d64}" == *d64* ]]; then
    timeout 120 $python benchmarks/gpu_bench.py --dim 64 --bags 262144 --bag-size 20 \
        --repeat 30 >"$out/bench_d64.txt" 2>&1
    echo "gpu_bench (D = 64) exit $?" >>"$out/bench_d64.txt"
fi

timeout "${TEST_SECONDS:-300}" $python -m pytest -m cuda -n 8 --dist loadfile -q \
    -p no:cacheprovider --timeout 240 ${TESTS:-tests} >"$out/tests.log" 2>&1
echo "pytest -m cuda exit $?" >>"$out/tests.log"

tail -n 25 "$out/tests.log"
cat "$out/device.txt" "$out/bench_d128.txt" "$out/bench_d64.txt"
