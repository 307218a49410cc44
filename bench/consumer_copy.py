"""Where PostgreSQL's time goes when the consumer writes readings (issue 12; docs/architecture.md).

100,000 readings rows COPYed in 500-row transactions into a private, durable PostgreSQL with the consumer's
schema, in four variants: as shipped, without the secondary index, without the generated `ts` column,
and binary instead of text COPY. Prints PostgreSQL CPU (all its processes) and client CPU per row.
Figures only, never asserted; on a busy machine compare the variants of one run.

    python -m bench.consumer_copy [--rows 100000]
"""

from __future__ import annotations

import argparse
import time

import psutil
import psycopg

from gateway.central.pgschema import migrate
from simulators.postgres import PrivatePostgres

COLS = "gateway, epoch, instrument, seq, idx, point, ts_ms, value, unit, quality, reason, calibration"
TYPES = ["text", "text", "text", "int8", "int4", "text", "int8", "float8", "text", "text", "text", "text"]


def tree_cpu(p: psutil.Process) -> float:
    return sum(x.cpu_times().user + x.cpu_times().system for x in [p, *p.children(recursive=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    n = ap.parse_args().rows
    rows = [("gw-001", "e" * 32, f"M-{(i // 100) % 5:02d}", i // 100 + 1, i % 100, f"p{i % 10}", 1_795_000_000_000 + i,
             20.5, "kW", "good", "", "valid") for i in range(n)]
    with PrivatePostgres(durable=True) as pg:
        server = psutil.Process(pg._proc.pid)  # type: ignore[union-attr]
        for variant in ("text COPY, as shipped", "text COPY, no secondary index", "text COPY, no generated ts",
                        "binary COPY, as shipped"):
            dsn = pg.create_database(variant.replace(" ", "_").replace(",", ""))
            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate(conn)
                if "secondary" in variant:
                    conn.execute("DROP INDEX carbon.readings_by_point_time")
                if "generated" in variant:
                    conn.execute("ALTER TABLE carbon.readings DROP COLUMN ts")
                binary = variant.startswith("binary")
                pg0, me0, t0 = tree_cpu(server), time.process_time(), time.monotonic()
                for b in range(0, n, 500):
                    with conn.transaction(), conn.cursor() as cur, cur.copy(
                            f"COPY carbon.readings ({COLS}) FROM STDIN" + (" (FORMAT BINARY)" if binary else "")) as cp:
                        if binary:
                            cp.set_types(TYPES)
                        for r in rows[b:b + 500]:
                            cp.write_row(r)
                print(f"{variant}: PostgreSQL {1e6 * (tree_cpu(server) - pg0) / n:.1f} us/row, client "
                      f"{1e6 * (time.process_time() - me0) / n:.1f} us/row, wall {time.monotonic() - t0:.1f} s "
                      f"(load {psutil.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
