#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: system packages, a virtualenv in .venv,
# and Voxgraph with its extras installed into it. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")"

EXTRAS="${VOXGRAPH_EXTRAS:-dev}"
SYSTEM_PACKAGES=()   # Debian packages the project needs (none yet for the core)

step() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if ((${#SYSTEM_PACKAGES[@]})); then
  missing=()
  for pkg in "${SYSTEM_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    step "installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  step "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
step "installing voxgraph[$EXTRAS] into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
.venv/bin/python -c "import pipeline, processors, transports" || { echo "setup failed: voxgraph does not import" >&2; exit 1; }
step "ready: .venv/bin/python -m pipeline --help"
