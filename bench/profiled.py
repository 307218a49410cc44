"""Run `carbon-gateway` under cProfile with a CPU clock (for `bench.throughput --profile`).

    python -m bench.profiled OUT.prof run --config DIR ...

`python -m cProfile` times with the wall clock, which on a loaded machine charges every moment the
process waits for a core (or for the GIL) to whichever call was running. This uses the calling
thread's CPU time instead, so the profile shows where the event-loop thread spends CPU. Only that
thread is profiled (paho's network thread is not); the stats file is written on a clean exit.
"""

from __future__ import annotations

import cProfile
import sys
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    out, args = sys.argv[1], sys.argv[2:]
    from gateway.cli import main as gateway_main

    prof = cProfile.Profile(time.thread_time)
    prof.enable()
    try:
        return gateway_main(args)
    finally:
        prof.disable()
        prof.dump_stats(out)


if __name__ == "__main__":
    raise SystemExit(main())
