#!/usr/bin/env bash
# Every GPU figure of drone_pose's real-time work as one JSON on stdout (progress on stderr), for the
# holder of a GPU machine: torch with CUDA preinstalled, no network. Pure-Python dependencies the
# machine lacks (roma, trimesh) come from a folder of wheels:
#   tools/gpu_check.sh [WHEEL_DIR] [gpu_check options, e.g. --sections estimator networks]
# (the first argument is the wheel folder when it is a directory)
# Runs from the source checkout (no install); figures and run time: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=""
if [ $# -gt 0 ] && [ -d "$1" ]; then
  wheels="$1"
  shift
fi
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
if [ -n "$wheels" ]; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}"
missing="$(python3 -c 'import importlib.util as u; print(" ".join(m for m in ("torch", "roma", "trimesh", "yaml", "cv2", "scipy") if u.find_spec(m) is None))')"
if [ -n "$missing" ]; then
  echo "gpu_check: missing Python packages: $missing (give a folder of their wheels as the first argument)" >&2
  exit 2
fi
exec python3 -m drone_pose.bench.gpu_check "$@"
