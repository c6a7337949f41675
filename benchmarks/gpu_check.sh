#!/usr/bin/env bash
# The GPU check of lungtumor as ONE prepared command (issue 9, section 4): sets up Python on a bare
# GPU machine (its own python and torch; the project installed editable, without touching torch),
# then runs benchmarks/gpu_check.py under a hard time cap, so that it always leaves (partial) results.
#
# Usage (from anywhere; it works in the repository root):
#   bash benchmarks/gpu_check.sh                 # GPU mode: set up, then measure (whole run capped at 480 s)
#   bash benchmarks/gpu_check.sh --tiny          # the CPU mode the test suite runs (seconds)
#   bash benchmarks/gpu_check.sh --plan          # print the set-up it would do and stop (changes nothing)
#   bash benchmarks/gpu_check.sh --fetch-wheels  # on a machine WITH network: wheels the offline GPU machine lacks -> .whl/
#   bash benchmarks/gpu_check.sh --real-ct .gpu_data   # also the real-CT stage: configs/real_ct.yaml leave-one-scan-out
#                                                      # at its GPU budget (+300 s; data: python benchmarks/make_gpu_data.py)
#   any other arguments go to gpu_check.py (e.g. --only peak,train)
#
# Issue 17 (the training levers side by side; a cohort folder with and without --workers), as two calls
# that each fit one 10-minute device command:
#   GPU_CHECK_CAP_S=590 bash benchmarks/gpu_check.sh --only peak,train_levers,train_lightning
#   GPU_CHECK_CAP_S=420 bash benchmarks/gpu_check.sh --only predict,cohort
#
# Environment:
#   OUT              results folder (default benchmarks/results): gpu_check.json, gpu_check.txt, gpu_check.log
#   PYTHON           interpreter (default: .venv/bin/python if present, else python3)
#   GPU_CHECK_CAP_S  hard cap of the whole run in seconds (default 480; --tiny: 300; +300 with --real-ct)
#   GPU_CHECK_VENV   venv made (with the system's packages visible) when PYTHON is not in a venv
#                    (default /tmp/lungtumor-gpu-check-venv)
#
# A GPU machine without network: `pip install -e .` cannot fetch missing dependencies there. Run
# `bash benchmarks/gpu_check.sh --fetch-wheels` here first and carry `.whl` (it is git-ignored): the
# set-up installs those wheels offline. Only nibabel is needed on the measured path; torch, lightning,
# numpy, scipy, matplotlib, rich, pyyaml and tensorboard are in such images already.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
START_S=$(date +%s)

MODE=run
TINY=0
OUT_ARG=""
DRIVER_ARGS=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --plan) MODE=plan ;;
        --fetch-wheels) MODE=fetch ;;
        --tiny) TINY=1; DRIVER_ARGS+=("$1") ;;
        --out) OUT_ARG="${2:-}"; shift ;;
        --out=*) OUT_ARG="${1#--out=}" ;;
        *) DRIVER_ARGS+=("$1") ;;
    esac
    shift
done

if [ "$TINY" = 1 ]; then DEFAULT_CAP_S=300; else DEFAULT_CAP_S=480; fi
#: the optional real-CT stage (--real-ct DIR, made by benchmarks/make_gpu_data.py) adds its own 300 s
case " ${DRIVER_ARGS[*]-} " in *" --real-ct "*|*" --real-ct="*) DEFAULT_CAP_S=$((DEFAULT_CAP_S + 300)) ;; esac
CAP_S=${GPU_CHECK_CAP_S:-$DEFAULT_CAP_S}
#: seconds of the cap kept for the driver to write its results after the outer timeout's TERM
KILL_GRACE_S=15
#: at most this long for the whole set-up (pip)
SETUP_CAP_S=120
#: wheels for an offline GPU machine (python 3.12, x86-64): the measured path's missing dependencies
WHEELS=(nibabel isal)
#: modules the measured path cannot run without (isal only speeds up gzip)
ESSENTIAL=(nibabel)
WHEEL_DIR="$ROOT/.whl"
#: where carried wheels go when the environment itself cannot take them
SITE_DIR=/tmp/lungtumor-gpu-check-site

OUT_DIR="${OUT_ARG:-${OUT:-$ROOT/benchmarks/results}}"
LOG="$OUT_DIR/gpu_check.log"

log() { echo "gpu_check.sh: $*" >&2; }

if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
fi

if [ "$MODE" = fetch ]; then
    mkdir -p "$WHEEL_DIR"
    for name in "${WHEELS[@]}"; do
        version=$("$PY" -c "from importlib.metadata import version; print(version('$name'))" 2>/dev/null)
        spec="$name${version:+==$version}"
        "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHEEL_DIR" "$spec" || exit 1
    done
    ls -l "$WHEEL_DIR"
    echo "gpu_check.sh: carry .whl to the GPU machine (run tool: carry [\".whl\"]); the set-up installs it offline"
    exit 0
fi

if [ "$MODE" = run ]; then
    mkdir -p "$OUT_DIR" || exit 2
    # Everything from here on (set-up and measurements) also goes to the log in the results folder.
    exec > >(tee "$LOG") 2>&1
fi

in_venv() { "$1" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' 2>/dev/null; }
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
# A set-up command, or in --plan mode only its echo; all set-up commands together get SETUP_CAP_S.
run_or_plan() {
    if [ "$MODE" = plan ]; then echo "plan: $*"; return 0; fi
    local left=$((SETUP_CAP_S - ($(date +%s) - START_S)))
    if [ "$left" -lt 5 ]; then log "set-up time ($SETUP_CAP_S s) used up; skipped: $*"; return 1; fi
    log "$*"
    timeout "$left" "$@"
}

# Distributions of pyproject's dependencies that are not installed (torch left out: never reinstalled).
missing_dependencies() {
    "$PY" - "$ROOT/pyproject.toml" <<'PYEOF'
import re, sys
from importlib import metadata
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
for req in re.findall(r"\"([^\"]+)\"", block):
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
    if name.lower() == "torch":
        continue
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        print(name)
PYEOF
}

setup() {
    if ! command -v "$PY" >/dev/null 2>&1; then log "no python ($PY); set PYTHON"; return 1; fi
    if ! in_venv "$PY"; then
        venv="${GPU_CHECK_VENV:-/tmp/lungtumor-gpu-check-venv}"
        # --system-site-packages: the image's torch and friends stay visible, nothing is reinstalled.
        if run_or_plan "$PY" -m venv --system-site-packages "$venv"; then
            [ "$MODE" = plan ] || PY="$venv/bin/python"
        else
            log "could not make a venv; using $PY as it is"
        fi
    fi
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0], sys.prefix)' 2>/dev/null))"
    if has_module torch; then
        torch_version=$("$PY" -c "from importlib.metadata import version; print(version('torch'))" 2>/dev/null)
        echo "torch: $torch_version is installed; it is kept as it is"
    else
        run_or_plan "$PY" -m pip install -q "torch==2.13.0" || log "torch could not be installed"
        torch_version=$("$PY" -c "from importlib.metadata import version; print(version('torch'))" 2>/dev/null)
    fi
    # Pin the torch that is there, so that no dependency's requirement can swap it.
    pins=$(mktemp)
    if [ -n "$torch_version" ]; then echo "torch==$torch_version" >"$pins"; fi
    # Carried wheels of distributions that are not installed (nothing installed is replaced), one by
    # one: a wheel for another Python must not stop the others.
    for wheel in "$WHEEL_DIR"/*.whl; do
        [ -e "$wheel" ] || continue
        dist=$(basename "$wheel"); dist=${dist%%-*}
        if "$PY" -c "from importlib.metadata import version; version('$dist')" 2>/dev/null; then continue; fi
        run_or_plan "$PY" -m pip install -q --no-index --no-deps --no-compile "$wheel" && continue
        # A read-only environment: beside it, on PYTHONPATH (what the device notes suggest).
        if run_or_plan "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE_DIR" "$wheel"; then
            export PYTHONPATH="$SITE_DIR${PYTHONPATH:+:$PYTHONPATH}"
        else
            log "carried wheel $(basename "$wheel") did not install"
        fi
    done
    mapfile -t missing < <(missing_dependencies)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "missing dependencies: ${missing[*]}"
        if "$PY" -c "import socket; socket.create_connection(('pypi.org', 443), timeout=3).close()" 2>/dev/null; then
            run_or_plan "$PY" -m pip install -q --retries 1 --timeout 15 -c "$pins" "${missing[@]}" \
                || log "could not install ${missing[*]}; stages that need them will say so"
        else
            log "no network: not installing ${missing[*]}"
        fi
        for name in "${ESSENTIAL[@]}"; do
            has_module "$name" || log "$name is missing and the measured path needs it: run \`bash benchmarks/gpu_check.sh --fetch-wheels\` where there is network and carry .whl"
        done
    fi
    rm -f "$pins"
    here=$("$PY" -c 'import lungtumor, pathlib; print(pathlib.Path(lungtumor.__file__).resolve().parent)' 2>/dev/null)
    if [ "$here" = "$ROOT/src/lungtumor" ]; then
        echo "lungtumor: imports from this tree ($here)"
    else
        # --no-deps: dependencies were handled above (torch never touched); --no-build-isolation: offline.
        run_or_plan "$PY" -m pip install -q --no-deps --no-build-isolation -e "$ROOT" || {
            log "pip install -e . failed; using PYTHONPATH=$ROOT/src"
            export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
        }
    fi
}

if [ "$MODE" = plan ]; then
    setup
    echo "plan: timeout -k $KILL_GRACE_S <cap left - $KILL_GRACE_S> $PY -u benchmarks/gpu_check.py --out $OUT_DIR --deadline-s <that - 5> ${DRIVER_ARGS[*]}"
    exit 0
fi

setup
if ! "$PY" -c 'import lungtumor' 2>/dev/null; then
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
fi

left_s=$((CAP_S - ($(date +%s) - START_S)))
driver_s=$((left_s - KILL_GRACE_S))
if [ "$driver_s" -lt 30 ]; then
    log "only ${left_s} s of the ${CAP_S} s cap left after set-up; not running"
    exit 1
fi
log "running: $PY -u benchmarks/gpu_check.py --out $OUT_DIR --deadline-s $((driver_s - 5)) ${DRIVER_ARGS[*]} (killed at ${driver_s} s)"
# TERM at the cap (the driver then marks the stage in flight and saves), KILL KILL_GRACE_S later.
PYTHONUNBUFFERED=1 timeout -k "$KILL_GRACE_S" "$driver_s" \
    "$PY" -u benchmarks/gpu_check.py --out "$OUT_DIR" --deadline-s "$((driver_s - 5))" ${DRIVER_ARGS[@]+"${DRIVER_ARGS[@]}"}
rc=$?
log "gpu_check.py exited with $rc after $(($(date +%s) - START_S)) s; results in $OUT_DIR"
exit "$rc"
