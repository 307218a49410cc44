"""The one place raw samples become readings: every driver's samples pass through an `Ingest`.

Polling drivers' samples arrive through the poller, subscribing drivers push theirs as a
`drivers.base.SampleSink`; both end here, are tagged (unit conversion, NE 107 health, calibration) and
queued for the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from gateway.instruments import InstrumentSpec
from gateway.model import RawSample, Reading
from gateway.queue import ReadingQueue
from gateway.tagging import tag


class Ingest:
    """Tag the samples of an instrument and put them on the queue (waiting when it is full)."""

    def __init__(self, out: ReadingQueue, specs: Iterable[InstrumentSpec], *,
                 on_readings: Callable[[str, int], None] | None = None) -> None:
        self.out = out
        self.specs = {s.id: s for s in specs}
        self._on_readings = on_readings

    def readings(self, instrument_id: str, samples: Sequence[RawSample]) -> list[Reading]:
        return tag(self.specs[instrument_id], samples)

    async def __call__(self, instrument_id: str, samples: Sequence[RawSample]) -> None:
        readings = self.readings(instrument_id, samples)
        await self.out.put(readings)  # waits when the store falls behind: backpressure
        if self._on_readings is not None:
            self._on_readings(instrument_id, len(readings))
