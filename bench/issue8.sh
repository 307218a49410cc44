#!/bin/bash
# Every figure of issue 8's targets in one sequence, as docs/benchmarks.md reports them (about 30 minutes
# on the 2-core machine). Outputs go to $OUT (default a new temporary directory): one log and one JSON per
# benchmark, and the side-by-side harness's results in $OUT/peer/results.jsonl.
# Env: OUT, METERS (side by side, default 500), REPS (side-by-side runs per gateway, default 3), SEARCH (ramp loads), OUTAGE (drain, s),
#      PEER_BENCH, TB_VENV, HARNESS_VENV (see bench/peer/README.md), SKIP (space-separated step names).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d -t issue8.XXXXXX)}"; mkdir -p "$OUT/peer"
PY=.venv/bin/python
REPS="${REPS:-3}"
skip() { [[ " ${SKIP:-} " == *" $1 "* ]]; }
echo "issue 8 figures into $OUT"
step() { echo "== $1 $(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg)"; }
if ! skip peer; then
  for r in $(seq 1 "$REPS"); do   # alternate, so both see the same machine
    step "peer tb $r"; BENCH_TMP="$OUT/peer" bench/peer/run_peer.sh tb "${METERS:-500}" 1 >>"$OUT/peer.log" 2>&1
    step "peer cg $r"; BENCH_TMP="$OUT/peer" bench/peer/run_peer.sh cg "${METERS:-500}" 1 >>"$OUT/peer.log" 2>&1
  done
  $PY bench/peer/summary.py "$OUT/peer/results.jsonl" --json "$OUT/peer.json" | tee "$OUT/peer_summary.txt"
fi
skip soak || { step soak; $PY -m bench.plant soak --json "$OUT/soak.json" >"$OUT/soak.log" 2>&1; }
skip ramp || { step ramp; $PY -m bench.plant ramp --warmup 10 --search "${SEARCH:-10000,15000,20000,30000,40000,50000}" \
  --json "$OUT/ramp.json" >"$OUT/ramp.log" 2>&1; }
skip drain || { step drain; $PY -m bench.plant drain --outage "${OUTAGE:-200}" --json "$OUT/drain.json" \
  >"$OUT/drain.log" 2>&1; }
skip profile || { step profile; $PY -m bench.plant ramp --search 10000 --multiples "" --window 30 --profile "$OUT/prof" \
  --json "$OUT/profile.json" >"$OUT/profile.log" 2>&1; }
skip startup || { step startup; $PY -m bench.startup --meters 2500 --runs 1 --json "$OUT/startup.json" \
  >"$OUT/startup.log" 2>&1; }
skip footprint || { step footprint; $PY -m bench.footprint --json "$OUT/footprint.json" >"$OUT/footprint.log" 2>&1; }
step done
