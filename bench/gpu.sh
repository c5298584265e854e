#!/usr/bin/env bash
# Issue 16's GPU check, as one prepared script for a bare GPU machine (the device tool's H200:
# Python 3.12 with torch, numpy and pillow, no package registry). Carry the wheels it lacks in
# .whl/ (ignored by git), made here beforehand with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
#     --platform manylinux_2_35_x86_64 -d .whl $(grep -v '^#' bench/gpu-wheels.txt)
#   (13 wheels, 16 MB, checked on 2026-12-04)
# then run (device tool):  bash bench/gpu.sh        with carry [".whl"], timeout_s 540
# It writes $OUT/gpu.json and $OUT/summary.txt (or ./gpu-out without $OUT), within 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-out}"
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
missing=$(python3 - <<'PY'
import importlib
names = ["torch", "monai", "pydicom", "highdicom", "pydantic", "pydantic_settings", "yaml", "PIL"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
    echo "missing Python packages: $missing (carry their wheels in .whl/, see the top)" | tee "$out/summary.txt"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
PYTHONUNBUFFERED=1 timeout 460 python3 bench/gpu_bench.py --device cuda --images 200 \
    --seconds 8 --out "$out" | tee "$out/run.log"
python3 - "$out/gpu.json" <<'PY' | tee "$out/summary.txt"
import json, sys
report = json.load(open(sys.argv[1]))
print(f"{report['device']}, torch {report['torch']}, {report['cpu_cores']} cores")
for key, value in report["model_only_images_per_s"].items():
    print(f"  model-only {key}: {value * 60:.0f} images/min")
print(f"  one full-size image: p50 {report['single_image_s']['p50']} s")
print(f"  largest probability difference to the CPU: {report['max_probability_difference_to_cpu']}")
a = report["analysis"]
print(f"  analysis of {a['images']} full-size images, {a['threads']} threads: "
      f"{a['images_per_min']} images/min, mean batch {a['mean_batch']}, "
      f"{a['fraction_of_model_only']} of model-only")
PY
