#!/usr/bin/env bash
# The dedicated fuzz run of the NRI wire input (docs/fuzzing.md): by default
# 1.4 million inputs over the three targets of tests/fuzz (python -m tests.fuzz), coverage-guided by
# atheris when it installs, else by our own mutator (tests/fuzz/engines.py).
#
#   hack/fuzz.sh                 # everything, defaults below
#   RUNS_WIRE=100000 RUNS_PLUGIN=20000 RUNS_CONN=10000 hack/fuzz.sh   # a quick pass
#
# Seeds: synthetic sessions built with kubelet's values, plus the traffic of a
# real containerd 2.x and 1.7 (recorded when run as root with hack/e2e-setup.sh
# done). Results, crashes and logs go to $FUZZ_WORK (default /tmp/nmm-fuzz).
# Exit status 1 when any target found a crash, a hang or an out-of-memory.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${FUZZ_WORK:-/tmp/nmm-fuzz}
ENGINE=${FUZZ_ENGINE:-auto}
RUNS_WIRE=${RUNS_WIRE:-1000000}
RUNS_PLUGIN=${RUNS_PLUGIN:-300000}
RUNS_CONN=${RUNS_CONN:-100000}
PY=.venv/bin/python
mkdir -p "$WORK"

if [ "$ENGINE" != mutate ] && ! $PY -c "import atheris" 2>/dev/null; then
    .venv/bin/pip install --quiet atheris ||
        echo "== atheris does not install here: using our own mutator"
fi

if [ "$(id -u)" = 0 ] && [ -e "${NMM_E2E_DIR:-/tmp/nmm-e2e}/setup.done" ]; then
    echo "== recording real containerd traffic as seeds"
    $PY -m tests.fuzz capture --out "$WORK/corpus" || echo "== capture failed: synthetic seeds only"
else
    echo "== not root or no e2e setup: synthetic seeds only"
fi

declare -A RUNS=([wire]=$RUNS_WIRE [plugin]=$RUNS_PLUGIN [conn]=$RUNS_CONN)
declare -A MAXLEN=([wire]=131072 [plugin]=65536 [conn]=131072)
pids=()
for target in wire plugin conn; do
    echo "== $target: ${RUNS[$target]} inputs, log $WORK/$target.log"
    $PY -m tests.fuzz run --target "$target" --runs "${RUNS[$target]}" --engine "$ENGINE" \
        --corpus "$WORK/corpus" --work "$WORK" --max-len "${MAXLEN[$target]}" \
        --report-every 50000 >"$WORK/$target.log" 2>&1 &
    pids+=($!)
done

status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || status=1
done

echo "== results"
total=0
for target in wire plugin conn; do
    line=$(grep "^fuzz $target: [0-9]* inputs" "$WORK/$target.log" | tail -1 || true)
    echo "${line:-fuzz $target: no summary, see $WORK/$target.log}"
    n=$(echo "$line" | sed -n 's/^fuzz [a-z]*: \([0-9]*\) inputs.*/\1/p')
    total=$((total + ${n:-0}))
    grep -h "peak_rss_mb\|slowest_unit_time_sec" "$WORK/$target.log" | sed "s/^/  $target /" || true
done
echo "total: $total inputs"
if compgen -G "$WORK/crashes/*" >/dev/null; then
    echo "== crashes (reproduce with: .venv/bin/python -m tests.fuzz repro --target T FILE):"
    ls -1 "$WORK/crashes"
    status=1
fi
exit $status
