#!/usr/bin/env bash
# GPU check of raylab's model-level code without Ray, decord or PyAV (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh prepare     here, once: decode clips into .gpu_check/ (about 10 MiB) and copy
#                                       PyYAML's pure-Python package there
#   benchmarks/gpu_check.sh [ARGS]      on the GPU machine (Python 3.12 + CUDA torch; carry .gpu_check):
#                                       prints progress, then one JSON line; under 8 minutes on one GPU
#
# ARGS go to `python -m benchmarks.gpu_check run` (e.g. --device cpu --presets small --steps 4).
# PYTHON picks the interpreter (default python3), GPU_CHECK_DIR the folder (default .gpu_check).
# Exit status 0 only when the check's "ok" is true.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DIR="$(realpath -m "${GPU_CHECK_DIR:-.gpu_check}")"
if [[ "${1:-}" == "prepare" ]]; then
    shift
    exec "${PY}" -m benchmarks.gpu_check prepare --out "${DIR}" "$@"
fi
[[ -f "${DIR}/clips.npz" ]] || { echo "no ${DIR}/clips.npz: run 'benchmarks/gpu_check.sh prepare' first" >&2; exit 2; }
# the repository first (raylab from this tree), then the vendored PyYAML for a Python that has none
export PYTHONPATH="${PWD}:${DIR}/vendor${PYTHONPATH:+:${PYTHONPATH}}"
out="$(timeout 470 "${PY}" -m benchmarks.gpu_check run --clips "${DIR}/clips.npz" "$@")"
echo "${out}"
tail -n 1 <<<"${out}" | "${PY}" -c 'import json, sys; sys.exit(0 if json.loads(sys.stdin.read())["ok"] else 1)'
