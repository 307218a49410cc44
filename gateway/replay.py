"""Replay on request (issue 12 item 2): a central system asks for messages again, the gateway republishes
them from its store.

A request arrives on `{prefix}/{gateway}/cmd/replay` (subscribed only when `commands.subscribe` names
`replay`) and names one stream, an instrument's `kind` messages, by seq range or by time range. The answer
goes to `{prefix}/{gateway}/cmd/response`: `accepted` (with the seq range that will be sent) or `rejected`
with the reason, then `done` once every message was handed to the transport. Replayed messages go to
their usual topics with their original `seq` and rows, marked `"replay": "<request id>"`, at most
`commands.replay.rate_msgs_s` per second and never more than `window_share` of the in-flight window, so live
data keeps flowing beside a replay. The store keeps delivered messages until retention prunes them
(`store.retention_days`, `store.max_size_mb`): that is the replay window (docs/mqtt.md).

`parse_request` is pure and never raises anything but `Rejected`; `Replayer` does the rest on the event
loop thread, beside the forwarder and the store's single connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.encode import Encoder, Publish, dumps
from gateway.errors import StoreError
from gateway.settings import ReplaySettings
from gateway.store import DERIVED_KINDS, KIND_READINGS, Outgoing, Store

log = logging.getLogger("gateway.replay")

REQUEST_SCHEMA = "carbon-gateway/replay-request/1"
RESPONSE_SCHEMA = "carbon-gateway/cmd-response/1"
KINDS = (KIND_READINGS, *DERIVED_KINDS)
_ID = re.compile(r"^[A-Za-z0-9._:@/-]{1,64}$")
_MAX_INT = 2**62


def replay_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/cmd/replay"


def response_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/cmd/response"


class Rejected(Exception):
    """A request that is not served: `code` is one word (docs/mqtt.md), `detail` says why."""

    def __init__(self, code: str, detail: str, request_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.request_id = code, detail, request_id


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    id: str
    instrument: str
    kind: str
    epoch: str | None
    from_seq: int | None = None
    to_seq: int | None = None
    from_ts: int | None = None
    to_ts: int | None = None


def _int(body: dict[str, Any], key: str, rid: str | None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _MAX_INT:
        raise Rejected("malformed", f"{key} must be a non-negative integer", rid)
    return v


def parse_request(payload: bytes, *, max_bytes: int, max_messages: int) -> ReplayRequest:
    """The request in `payload`, or Rejected (never another exception, whatever the bytes)."""
    if len(payload) > max_bytes:
        raise Rejected("too_large", f"request of {len(payload)} bytes, at most {max_bytes}")
    try:
        body = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("malformed", "not a UTF-8 JSON object") from None
    if not isinstance(body, dict):
        raise Rejected("malformed", "not a JSON object")
    rid = body.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise Rejected("malformed", "id must be 1-64 characters of A-Z a-z 0-9 . _ : @ / -")
    schema = body.get("schema", REQUEST_SCHEMA)
    if schema != REQUEST_SCHEMA:
        raise Rejected("malformed", f"schema must be {REQUEST_SCHEMA}", rid)
    unknown = set(body) - {"schema", "id", "instrument", "kind", "epoch", "from_seq", "to_seq", "from_ts", "to_ts"}
    if unknown:
        raise Rejected("malformed", f"unknown field {sorted(unknown)[0]}", rid)
    instrument = body.get("instrument")
    if not isinstance(instrument, str) or not 0 < len(instrument) <= 128:
        raise Rejected("malformed", "instrument must be a non-empty string", rid)
    kind = body.get("kind", KIND_READINGS)
    if kind not in KINDS:
        raise Rejected("malformed", f"kind must be one of {', '.join(KINDS)}", rid)
    epoch = body.get("epoch")
    if epoch is not None and not isinstance(epoch, str):
        raise Rejected("malformed", "epoch must be a string", rid)
    fs, ts_, ft, tt = (_int(body, k, rid) for k in ("from_seq", "to_seq", "from_ts", "to_ts"))
    by_seq, by_time = fs is not None or ts_ is not None, ft is not None or tt is not None
    if by_seq == by_time:
        raise Rejected("malformed", "give from_seq and to_seq, or from_ts and to_ts", rid)
    lo, hi = (fs, ts_) if by_seq else (ft, tt)
    if lo is None or hi is None:
        raise Rejected("malformed", "a range needs both ends", rid)
    if lo > hi:
        raise Rejected("malformed", "the range ends before it starts", rid)
    if by_seq:
        if lo < 1:
            raise Rejected("malformed", "seqs start at 1", rid)
        if hi - lo + 1 > max_messages:
            raise Rejected("too_many_messages", f"{hi - lo + 1} messages asked, at most {max_messages} a request", rid)
        return ReplayRequest(rid, instrument, kind, epoch, from_seq=lo, to_seq=hi)
    return ReplayRequest(rid, instrument, kind, epoch, from_ts=lo, to_ts=hi)


def mark_replay(pub: Publish, request_id: str) -> Publish:
    """The same message, marked as a replay of this request (JSON encoders; the rows are untouched)."""
    body = json.loads(pub.payload)
    body["replay"] = request_id
    return pub._replace(payload=dumps(body), retain=False)


@dataclass
class _Job:
    req: ReplayRequest
    after: int  # the last seq sent
    last: int  # the last seq to send
    sent: int = 0


class Replayer:
    """Serves replay requests, one at a time, from the store through `send` (the forwarder's)."""

    def __init__(self, settings: ReplaySettings, store: Store, encoder: Encoder, *, prefix: str, gateway: str,
                 send: Callable[[Publish], bool], window_free: Callable[[], int], max_inflight: int,
                 retention_ms: Callable[[], int], wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self.settings = settings
        self.store, self.encoder = store, encoder
        self.prefix, self.gateway = prefix, gateway
        self._send, self._window_free, self._max_inflight = send, window_free, max_inflight
        self._retention_ms, self._wall_ms = retention_ms, wall_ms
        self._jobs: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self.stats = {"accepted": 0, "rejected": 0, "done": 0, "messages": 0}
        self.last_rejection = ""

    def status(self) -> dict[str, Any]:
        """The status topic's `replay` (counts since the start, what waits, the last refusal)."""
        return {**self.stats, "queued": len(self._jobs), "last_rejection": self.last_rejection}

    @property
    def topic(self) -> str:
        return replay_topic(self.prefix, self.gateway)

    def _replay(self, out: Outgoing, request_id: str) -> Publish:
        """An encoder that is not JSON (e.g. Sparkplug: `is_historical`) marks replays itself with `replay()`."""
        own = getattr(self.encoder, "replay", None)
        if own is not None:
            return own(out, request_id)  # type: ignore[no-any-return]
        return mark_replay(self.encoder.message(out), request_id)

    def _respond(self, state: str, request_id: str | None, **fields: Any) -> None:
        body = {"schema": RESPONSE_SCHEMA, "gateway": self.gateway, "epoch": self.store.epoch, "command": "replay",
                "id": request_id, "state": state, "ts": self._wall_ms(), **fields}
        self._send(Publish(response_topic(self.prefix, self.gateway), dumps(body), qos=1))

    def request(self, payload: bytes) -> None:
        """A request arrived (event loop thread): accept it into the queue or reject it, and say so."""
        try:
            req = parse_request(payload, max_bytes=self.settings.max_request_bytes,
                                max_messages=self.settings.max_messages)
            job = self._plan(req)
        except Rejected as err:
            self.stats["rejected"] += 1
            self.last_rejection = f"{err.request_id or '(no id)'}: {err}"
            log.warning("replay request %s rejected: %s", err.request_id or "(no id)", err)
            self._respond("rejected", err.request_id, reason=f"{err.code}: {err.detail}")
            return
        except StoreError as err:
            self.stats["rejected"] += 1
            log.error("replay request rejected: %s", err)
            self._respond("rejected", None, reason=f"store_failed: {err}")
            return
        self.stats["accepted"] += 1
        log.info("replay request %s accepted: %s/%s seq %d..%d", req.id, req.instrument, req.kind,
                 job.after + 1, job.last)
        self._respond("accepted", req.id, instrument=req.instrument, kind=req.kind, from_seq=job.after + 1,
                      to_seq=job.last)
        self._jobs.append(job)
        self._wake.set()

    def _plan(self, req: ReplayRequest) -> _Job:
        if len(self._jobs) > self.settings.max_queued:
            raise Rejected("busy", f"{len(self._jobs)} requests are waiting; ask again later", req.id)
        if req.epoch is not None and req.epoch != self.store.epoch:
            raise Rejected("epoch_mismatch", f"this store is epoch {self.store.epoch}: the seqs of epoch "
                                             f"{req.epoch} are no longer here", req.id)
        bounds = self.store.stream_bounds(req.instrument, req.kind)
        if bounds is None:
            raise Rejected("unknown_stream", f"instrument {req.instrument} never had {req.kind} messages here", req.id)
        oldest, last = bounds
        if req.from_seq is not None and req.to_seq is not None:
            lo, hi = req.from_seq, req.to_seq
            if hi > last:
                raise Rejected("beyond_last_seq", f"the last seq of {req.instrument}/{req.kind} is {last}", req.id)
        else:
            assert req.from_ts is not None
            assert req.to_ts is not None
            if req.from_ts < self._wall_ms() - self._retention_ms():
                raise Rejected("out_of_retention", "the time range starts before the retention window "
                                                   "(store.retention_days)", req.id)
            span = self.store.seq_span(req.instrument, req.kind, req.from_ts, req.to_ts)
            if span is None:
                raise Rejected("empty_range", "no kept message meets the time range", req.id)
            lo, hi = span
            if hi - lo + 1 > self.settings.max_messages:
                raise Rejected("too_many_messages", f"the time range spans {hi - lo + 1} messages, at most "
                                                    f"{self.settings.max_messages} a request", req.id)
        if lo < oldest:
            raise Rejected("out_of_retention", f"seq {lo} was pruned by retention; the oldest kept seq of "
                                               f"{req.instrument}/{req.kind} is {oldest}", req.id)
        return _Job(req, lo - 1, hi)

    async def run(self) -> None:
        """Send the accepted requests' messages, rate-limited, forever (a supervised task)."""
        s = self.settings
        tick = 0.05
        tokens = 0.0
        reserve = int(self._max_inflight * (1 - s.window_share))  # what is always left to live traffic
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                tokens = 0.0
            await asyncio.sleep(tick)
            tokens = min(tokens + s.rate_msgs_s * tick, max(1.0, s.rate_msgs_s * tick * 4))
            budget = min(int(tokens), self._window_free() - reserve)
            if budget <= 0:
                continue
            job = self._jobs[0]
            req = job.req
            batch: list[Outgoing] = self.store.stream_messages(
                req.instrument, req.kind, after_seq=job.after, up_to_seq=job.last, ts_from=req.from_ts,
                ts_to=req.to_ts, limit=budget)
            for out in batch:
                if not self._send(self._replay(out, req.id)):
                    break  # not connected now: go on from here later
                job.after = out.seq
                job.sent += 1
                tokens -= 1
                self.stats["messages"] += 1
            if not batch or job.after >= job.last:
                self._jobs.popleft()
                self.stats["done"] += 1
                complete = job.after >= job.last or req.from_ts is not None
                log.info("replay request %s done: %d messages sent", req.id, job.sent)
                self._respond("done", req.id, messages=job.sent, instrument=req.instrument, kind=req.kind,
                              **({} if complete else {"reason": f"out_of_retention: pruned after seq {job.after}"}))


def attach(forwarder: Any, settings: Any, store: Store, encoder: Encoder,
           wall_ms: Callable[[], int]) -> Replayer | None:
    """The gateway's replayer when `commands.subscribe` names `replay` (its topic registered with the
    forwarder, which subscribes it on every connect), else None: nothing is subscribed."""
    if "replay" not in settings.commands.subscribe:
        return None
    st = settings
    replayer = Replayer(st.commands.replay, store, encoder, prefix=st.mqtt.topic_prefix, gateway=st.gateway.id,
                        send=forwarder.send_extra, window_free=lambda: forwarder.window_free,
                        max_inflight=st.mqtt.max_inflight,
                        retention_ms=lambda: int(st.store.retention_days * 86_400_000), wall_ms=wall_ms)
    forwarder.commands[replayer.topic] = replayer.request
    return replayer
