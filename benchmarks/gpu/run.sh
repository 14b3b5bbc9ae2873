#!/usr/bin/env bash
# ddpm-bench on a GPU: every measurement of issue 30 in one call, on one H100/H200 in at most 8 minutes.
#
#   benchmarks/gpu/run.sh OUT_DIR [--smoke]
#
# Writes OUT_DIR/results.json, OUT_DIR/results.md and OUT_DIR/run.log (nothing else goes to OUT_DIR).
# Installs the project with `pip install --no-deps -e .` (offline; on failure it runs from the source tree),
# uses the torch-fidelity wheel in benchmarks/gpu/wheels when torch-fidelity is not installed, and runs
# benchmarks/gpu/measure.py, restarting it at the next section when a section runs past its hard limit.
# --smoke: the same code on the CPU at tiny sizes, installing nothing (the test suite runs it).
# PYTHON picks the interpreter (default python3).
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [--smoke]" >&2
    exit 2
fi
OUT=$1
shift
SMOKE=""
for arg in "$@"; do
    case $arg in
        --smoke) SMOKE=--smoke ;;
        *) echo "$0: unknown argument $arg (usage: $0 OUT_DIR [--smoke])" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
COMMAND="benchmarks/gpu/run.sh $OUT${SMOKE:+ $SMOKE}"
START=$(date +%s)
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT/results.json" "$OUT/results.md" "$OUT/run.log"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ddpm-bench-gpu.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT
cd "$REPO" || exit 1

{
    if [ -n "$SMOKE" ]; then
        PIP="skipped: --smoke leaves the environment as it is"
        export OMP_NUM_THREADS=1  # one thread per process: a shared CPU slows torch's threads down many times
    elif "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . > "$WORK/pip.log" 2>&1; then
        PIP="ok: pip install --no-deps --no-build-isolation --no-index -e ."
    else
        PIP="failed: $(tail -n 1 "$WORK/pip.log"); running from the source tree (PYTHONPATH)"
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    WHEEL=$(ls "$REPO"/benchmarks/gpu/wheels/torch_fidelity-*.whl 2>/dev/null | head -n 1)
    if "$PY" -c "import torch_fidelity" 2> /dev/null; then
        TF="installed"
    elif [ -n "$WHEEL" ]; then
        export PYTHONPATH="$PYTHONPATH:$WHEEL"
        TF="not installed: the wheel in the tree, ${WHEEL#"$REPO"/}"
    else
        TF="missing"
    fi
    DDPM_BENCH_GPU_INSTALL=$("$PY" -c 'import json, sys; print(json.dumps({"pip": sys.argv[1], "torch_fidelity": sys.argv[2]}))' "$PIP" "$TF")
    export DDPM_BENCH_GPU_INSTALL
    echo "run.sh: install: $DDPM_BENCH_GPU_INSTALL"

    CONTINUE=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        "$PY" -m benchmarks.gpu.measure "$OUT" --work "$WORK" --started "$START" --command "$COMMAND" \
            $SMOKE $CONTINUE
        rc=$?
        [ $rc -eq 75 ] || break  # 75: a section ran past its hard limit; go on with the next one
        CONTINUE=--continue
    done
    if [ ! -f "$OUT/results.json" ]; then  # measure.py died before writing anything: say so in the results
        "$PY" -c 'import json, sys; json.dump({"schema": "ddpm-bench-gpu/1", "command": sys.argv[2], "sections": {},
"error": f"measure.py exited {sys.argv[3]} before writing results (see run.log)"}, open(sys.argv[1], "w"))' \
            "$OUT/results.json" "$COMMAND" "$rc"
    fi
    echo "run.sh: $(($(date +%s) - START)) s in all, exit $rc"
    exit "$rc"
} 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
