#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), the Python packages that the GPU machine's image lacks, as
# wheels for CPython 3.12 on x86-64 Linux, so that benchmarks/gpu_check.py can install them there
# without a network:
#     bash scripts/get_gpu_wheels.sh [NAME==VERSION ...]
# Default: datasets and the two packages it needs that the image lacks (dill, multiprocess), at the
# versions the test suite runs with. The rest of what they need (pyarrow, pandas, fsspec, xxhash,
# huggingface-hub, ...) is on the image; the script prints each wheel's requirements to check against
# the image's package list. The image takes one version of each package: name every one only once.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

rm -rf .whl
mkdir .whl
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --dest .whl "${packages[@]}"

"$python" - <<'PY'
import pathlib
import zipfile

for wheel in sorted(pathlib.Path(".whl").glob("*.whl")):
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    needs = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    print(f"{wheel.name}: needs {', '.join(n for n in needs if 'extra ==' not in n) or 'nothing'}")
PY
du -sh .whl
