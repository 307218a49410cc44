"""`validate --live`: read every polled meter once and check each point's `expect` range.

A value far outside its expected range usually means a wrong word order or scale, which is the
most common registration mistake (peers.md 3); catching it here keeps bad data out of the store.
"""

from __future__ import annotations

from gateway.app import group_by_endpoint, make_connection
from gateway.clock import SystemClock
from gateway.errors import DriverError
from gateway.ingest import Ingest
from gateway.protocols import PROTOCOLS
from gateway.queue import ReadingQueue
from gateway.registry import Config


async def live_check(cfg: Config) -> list[str]:
    problems: list[str] = []
    clock = SystemClock()
    ingest = Ingest(ReadingQueue(1), cfg.instruments)
    for specs in group_by_endpoint(cfg.instruments).values():
        conn = make_connection(specs[0], clock)
        try:
            for spec in specs:
                try:
                    readings = ingest.readings(spec.id, await conn.read(spec.device))
                except DriverError as err:
                    problems.append(f"{spec.source_file}: instruments.{spec.id}.connection: {err}")
                    continue
                for r in readings:
                    p = spec.point_index[r.point]
                    where = f"{p.source_file}:{p.source_line}: {spec.id}.{r.point}"
                    if r.quality.value == "bad":
                        problems.append(f"{where}: read failed ({r.reason})")
                    elif p.expect is not None and r.value is not None:
                        # `expect` is written in the device unit, before conversion to the reporting unit.
                        raw = (r.value - p.conversion.offset) / p.conversion.factor
                        lo, hi = p.expect
                        if not lo <= raw <= hi:
                            problems.append(f"{where}: read {raw:.6g} {p.device_unit}, expected {lo:g}..{hi:g} "
                                            f"({PROTOCOLS.named(spec.protocol).expect_hint(p.wire)})")
        finally:
            await conn.close()
    return problems
