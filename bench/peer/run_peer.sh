#!/bin/bash
# The shared side-by-side harness (../shared/peer-bench: ThingsBoard IoT Gateway 3.8 vs carbon-gateway)
# run against this checkout. The harness is not part of this repository: this script copies it from
# $PEER_BENCH into $BENCH_TMP/harness, puts this folder's adapted generator and parser over its cg/
# (the configuration format changed since the harness was written), and runs its run_tb.sh / run_cg.sh.
#
# Usage: bench/peer/run_peer.sh tb|cg LOAD [REPS]     LOAD = meters (x20 float32 points at 1 s)
# Env:   PEER_BENCH (default /work/shared/peer-bench), BENCH_TMP (scratch root: reuses its tb_venv and
#        harness_venv; results accumulate in $BENCH_TMP/results.jsonl and cg_extra.jsonl),
#        CG_BIN (default: .venv/bin/carbon-gateway of this checkout), CG_ENCODER=json|json_compact,
#        CG_GEN_ARGS (more options for gen_cg_config.py),
#        WARMUP, MEASURE and the rest of the harness's variables.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PEER_BENCH="${PEER_BENCH:-/work/shared/peer-bench}"
[ -f "$PEER_BENCH/bench.py" ] || { echo "run_peer.sh: no harness at PEER_BENCH=$PEER_BENCH" >&2; exit 2; }
: "${BENCH_TMP:?set BENCH_TMP to a scratch directory (it keeps the ThingsBoard venv between runs)}"
export BENCH_TMP
which=${1:?usage: run_peer.sh tb|cg LOAD [REPS]}; shift
H="$BENCH_TMP/harness"
rm -rf "$H"; mkdir -p "$H"
cp -r "$PEER_BENCH"/. "$H"/
chmod -R u+w "$H"
cp "$HERE/gen_cg_config.py" "$HERE/cg_parser.py" "$H/cg/"
# The harness's SETUP line passes no encoder and no other setting: append ours (CG_GEN_ARGS: any of
# gen_cg_config.py's options, e.g. "--commit-interval-ms 200").
GEN_EXTRA="${CG_ENCODER:+--encoder $CG_ENCODER} ${CG_GEN_ARGS:-}"
if [ -n "${GEN_EXTRA// /}" ]; then
  sed -i "s|--synchronous \$SYNC\"|--synchronous \$SYNC $GEN_EXTRA\"|" "$H/run_cg.sh"
fi
if [ "$which" = tb ]; then
  # ThingsBoard's Modbus connector pip-installs pymodbus 3.9.2 and pyserial(-asyncio) into its environment at
  # its first start; where that fails (no direct PyPI access from the gateway) it delivers nothing. So the
  # virtualenv is made here, as the harness would make it, with those three installed beforehand.
  TB_VENV="${TB_VENV:-$BENCH_TMP/tb_venv}"
  export TB_VENV
  if [ ! -x "$TB_VENV/bin/python" ]; then
    python3 -m venv "$TB_VENV"
    "$TB_VENV/bin/pip" install -q "${TB_VERSION_SPEC:-thingsboard-gateway>=3.8,<3.9}" >"$BENCH_TMP/tb_pip_install.log" 2>&1
  fi
  if ! "$TB_VENV/bin/python" -c 'import pymodbus, serial, serial_asyncio; assert pymodbus.__version__ == "3.9.2"' 2>/dev/null; then
    "$TB_VENV/bin/pip" install -q "pymodbus==3.9.2" pyserial pyserial-asyncio >>"$BENCH_TMP/tb_pip_install.log" 2>&1
  fi
fi
case "$which" in
  tb) exec "$H/run_tb.sh" "$@" ;;
  cg) export CG_BIN="${CG_BIN:-$REPO/.venv/bin/carbon-gateway}"; exec "$H/run_cg.sh" "$@" ;;
  *) echo "run_peer.sh: tb or cg" >&2; exit 2 ;;
esac
