"""OPC UA driver: one session per device, subscriptions and polled reads, watchdog, rebuild on failure.

Life cycle of `run(sink)` (see docs/opcua.md for the operator's view):

    connect (security, trust check) -> open session (resolve nsu= ids, read health/calibration,
    create subscription + monitored items) -> serve (notifications, polls, watchdog) -> on any fault:
    emit no_communication samples, tear the session down, back off, connect again ... forever.

Decisions that matter:
- asyncua's own auto-reconnect and stale-subscription recreation are not used. A new Client, session
  and subscription are built after every fault (pitfall #2020: re-subscribing on a recovering client
  object is unreliable), and the Subscription object is created directly rather than through
  Client.create_subscription so the library's stale watchdog never recreates it behind our back.
- The subscription asks for a keep-alive every publishing interval (MaxKeepAliveCount=1), so "nothing
  heard for N publishing intervals" is a fault even when values do not change.
- The asyncua subscription handler only enqueues; the serve loop batches what arrived, applies the device
  condition, and awaits the sink. A slow sink therefore slows us, not asyncua's publish loop; if more
  than _QUEUE_MAX notifications pile up the session is dropped and the gap is recorded.
- During an outage every point gets one bad/no_communication sample per its nominal cadence (the
  publishing interval for subscribed points, poll_interval_s for polled ones), starting at the moment
  the fault is detected and ending when a new session is open. A gap is never silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.common.utils import ServiceError

from drivers.base import SampleSink
from drivers.opcua import status as st
from drivers.opcua.security import MESSAGE_MODE, POLICY_CLASS, build_server_certificate_check
from drivers.opcua.spec import OpcUaDevice, OpcUaPoint
from drivers.pacing import LinkHealth, backoff_delay, next_slot
from gateway.errors import ConfigError, DriverError, PermanentDriverError, TransientDriverError
from gateway.model import REASON_NAN, REASON_NO_COMMUNICATION, Quality, RawSample

_log = logging.getLogger(__name__)

__all__ = ["OpcUaDriver", "backoff_delay", "next_slot"]  # the pacing helpers are shared (drivers.pacing)

_QUEUE_MAX = 10_000
_SESSION_TIMEOUT_MS = 120_000  # server drops our session 2 min after we vanish (network cut)
_SUBSCRIPTION_LIFETIME_S = 60.0  # server drops an orphaned subscription after this long
_CONNECT_BUDGET_FACTOR = 4  # whole connect sequence (endpoints, channel, session) <= 4 x timeout_s
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Errors from asyncua and the network that are translated into gateway.errors at this boundary.
_LIBRARY_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, TimeoutError, ua.UaError, ValueError)

# Refusals that retrying cannot cure until someone changes a configuration or a trust list.
_SECURITY_REFUSALS = frozenset(
    {
        ua.StatusCodes.BadSecurityChecksFailed,
        ua.StatusCodes.BadSecurityPolicyRejected,
        ua.StatusCodes.BadSecurityModeRejected,
        ua.StatusCodes.BadUserAccessDenied,
        ua.StatusCodes.BadIdentityTokenInvalid,
        ua.StatusCodes.BadIdentityTokenRejected,
        ua.StatusCodes.BadUserSignatureInvalid,
        ua.StatusCodes.BadApplicationSignatureInvalid,
        ua.StatusCodes.BadNoValidCertificates,
    }
)


# --- pure helpers (unit-tested) --------------------------------------------------------------------


def epoch_ms(ts: datetime | None) -> int | None:
    """UTC milliseconds, or None for a missing/null OPC UA DateTime (naive datetimes are UTC)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    ms = (ts - _EPOCH) // _ONE_MS
    return ms if ms > 0 else None


def _as_number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        number = float(raw)
        return number if math.isfinite(number) else None
    return None


def sample_from_datavalue(
    point: OpcUaPoint, dv: ua.DataValue, condition: st.DeviceCondition, now_ms: int
) -> RawSample:
    """One DataValue -> RawSample: timestamp, scaled value, StatusCode quality, then the device condition."""
    code = dv.StatusCode.value if dv.StatusCode is not None else ua.StatusCodes.Good
    quality, reason = st.classify_status(code)
    raw = dv.Value.Value if dv.Value is not None else None
    number = _as_number(raw)
    value = None if number is None else number * point.scale + point.offset
    if value is None and quality is not Quality.BAD:
        # Good/Uncertain but nothing numeric (null, NaN, text): nothing that could be averaged.
        quality, reason = Quality.BAD, REASON_NAN
    quality, reason = st.apply_condition(quality, reason, condition)
    ts = epoch_ms(dv.SourceTimestamp) or epoch_ms(dv.ServerTimestamp) or now_ms
    return RawSample(point.name, ts, value, quality, reason, code)


def translate_error(exc: BaseException, url: str, *, connecting: bool) -> DriverError:
    """asyncua/network exception -> gateway.errors. Only refusals while connecting are permanent."""
    if isinstance(exc, DriverError):
        return exc
    code = exc.code if isinstance(exc, ua.UaStatusCodeError | ServiceError) else None
    if code is not None:
        name = st.status_name(code)
        if connecting and name.startswith("BadCertificate"):
            return PermanentDriverError(
                f"{url}: server certificate rejected ({name}); if this is the right server, put its "
                "certificate in security.trust_dir (or trusted_certs) after checking its fingerprint"
            )
        if connecting and (code & 0xFFFF0000) in _SECURITY_REFUSALS:
            return PermanentDriverError(f"{url}: security or login refused by the server ({name})")
        return TransientDriverError(f"{url}: {name}")
    if connecting and isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return PermanentDriverError(f"cannot read {exc.filename}: {exc.strerror}")
    if isinstance(exc, TimeoutError):
        return TransientDriverError(f"{url}: timed out")
    if isinstance(exc, OSError | EOFError):
        return TransientDriverError(f"{url}: {str(exc) or type(exc).__name__}")
    if connecting and isinstance(exc, ValueError | ua.UaError):
        if str(exc).startswith("No matching endpoints"):
            return PermanentDriverError(f"{url}: the server offers no endpoint with the configured security "
                                        f"policy and mode ({exc})")
        return PermanentDriverError(f"{url}: {exc}")  # e.g. an unreadable key or certificate
    return TransientDriverError(f"{url}: {type(exc).__name__}: {exc}")


def parse_node_id(text: str, where: str) -> ua.NodeId:
    try:
        return ua.NodeId.from_string(text)
    except (ua.UaError, ValueError, IndexError) as exc:
        raise ConfigError(f"not an OPC UA node id ({exc}): {text!r}", field=where) from None


# --- session plumbing ------------------------------------------------------------------------------


class _State(Enum):
    STARTING = "starting"
    OK = "ok"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class _DataChange:
    handle: int
    value: ua.DataValue


@dataclass(frozen=True, slots=True)
class _StatusChange:
    code: int


class _Wake:
    """Queued to wake the serve loop after a connection-loss callback."""


_Event = _DataChange | _StatusChange | _Wake
_HEALTH = "health"
_CALIBRATION = "calibration"


@dataclass(slots=True)
class OpcUaDriverStats:
    """Counters for health endpoints and tests. Monotonic over the driver's life."""

    sessions: int = 0  # sessions opened
    outages: int = 0  # ok -> failing transitions
    watchdog_expiries: int = 0
    notifications: int = 0  # data-change notifications received
    polls: int = 0
    missed_polls: int = 0
    samples: int = 0  # samples handed to the sink, outage samples included
    outage_samples: int = 0


@dataclass(eq=False)
class _Session:
    client: Client
    queue: asyncio.Queue[_Event] = field(default_factory=lambda: asyncio.Queue(maxsize=_QUEUE_MAX))
    lost: BaseException | None = None
    overflowed: bool = False
    subscription: Subscription | None = None
    watchdog_s: float = math.inf
    opened_at: float = 0.0
    point_handles: dict[int, OpcUaPoint] = field(default_factory=dict)
    status_handles: dict[int, str] = field(default_factory=dict)
    poll_points: list[OpcUaPoint] = field(default_factory=list)
    poll_status: list[str] = field(default_factory=list)  # health/calibration read with every poll
    nodes: dict[str, ua.NodeId] = field(default_factory=dict)  # point name or _HEALTH/_CALIBRATION

    def push(self, event: _Event) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            if not isinstance(event, _Wake):
                self.overflowed = True

    def last_alive(self) -> float:
        published = self.subscription.last_publish_at if self.subscription is not None else None
        return max(self.opened_at, published or 0.0)


class _Notifications:
    """asyncua subscription handler. Only enqueues: the publish loop must never wait for our sink."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        item = data.monitored_item
        self._session.push(_DataChange(int(item.ClientHandle), item.Value))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._session.push(_StatusChange(int(status.Status.value)))


# --- the driver ------------------------------------------------------------------------------------


class OpcUaDriver:
    """SubscribingDriver for one OPC UA device. `run(sink)` runs until cancelled or `close()`d.

    `rng` only feeds reconnect jitter (inject a seeded one in tests).
    """

    def __init__(self, device: OpcUaDevice, *, rng: random.Random | None = None) -> None:
        self.device = device
        self.stats = OpcUaDriverStats()
        self.health = LinkHealth()  # what the status topic shows, as for every driver
        self.last_error: DriverError | None = None
        self._rng = rng or random.Random()
        self._node_ids: dict[str, ua.NodeId] = {
            p.name: parse_node_id(p.node_id, f"points.{p.name}.node_id") for p in device.points
        }
        if device.health_node_id:
            self._node_ids[_HEALTH] = parse_node_id(device.health_node_id, "health_node_id")
        if device.calibration_node_id:
            self._node_ids[_CALIBRATION] = parse_node_id(device.calibration_node_id, "calibration_node_id")
        self._status_roles = [r for r in (_HEALTH, _CALIBRATION) if r in self._node_ids]
        sec = device.security
        for name in ("client_cert", "client_key"):
            path = getattr(sec, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"file not found: {path}", field=f"security.{name}")
        for name in ("trust_dir", "crl_dir"):
            path = getattr(sec, name)
            if path and not Path(path).is_dir():
                raise ConfigError(f"directory not found: {path}", field=f"security.{name}")
        self._status_values: dict[str, Any] = {}  # role -> last usable value; absent = unknown
        self._state = _State.STARTING
        self._failed_since = 0.0
        self._failed_attempts = 0
        self._warned_items: set[str] = set()
        self._run_task: asyncio.Task[None] | None = None
        self._outage_task: asyncio.Task[None] | None = None
        self._outage_stop: asyncio.Event | None = None
        self._wall_ms = lambda: time.time_ns() // 1_000_000

    @property
    def state(self) -> str:
        return self._state.value

    # --- SubscribingDriver ---

    async def run(self, sink: SampleSink) -> None:
        if self._run_task is not None:
            raise RuntimeError(f"{self.device.instrument_id}: run() is already running")
        self._run_task = asyncio.current_task()
        attempt = 0
        try:
            while True:
                session: _Session | None = None
                try:
                    session = await self._connect()
                    await self._open_session(session)
                    await self._stop_outage()
                    self._on_session_open()
                    attempt = 0
                    await self._serve(session, sink)
                except DriverError as exc:
                    self._on_failure(exc)
                    self._start_outage(sink)
                finally:
                    if session is not None:
                        await self._teardown(session)
                delay = backoff_delay(
                    attempt, self.device.reconnect_initial_s, self.device.reconnect_max_s, self._rng.random()
                )
                attempt += 1
                await asyncio.sleep(delay)
        finally:
            await self._cancel_outage()
            self._run_task = None

    async def close(self) -> None:
        """Cancel run() and wait until its session is torn down. Safe to call any time, more than once."""
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        task.cancel()
        await asyncio.wait([task])

    async def probe(self) -> None:
        """Connect once, read the server state, disconnect. Raises the typed DriverError on failure.

        For "check the configuration" commands and tests; run() never raises for connection problems.
        """
        session = await self._connect()
        try:
            await self._call(session.client.nodes.server_state.read_value(), connecting=True)
        finally:
            await self._teardown(session)

    # --- connect / open / teardown ---

    async def _call(self, awaitable: Any, *, connecting: bool) -> Any:
        try:
            return await awaitable
        except _LIBRARY_ERRORS as exc:
            raise translate_error(exc, self.device.endpoint_url, connecting=connecting) from exc

    async def _connect(self) -> _Session:
        dev, sec = self.device, self.device.security
        client = Client(dev.endpoint_url, timeout=dev.timeout_s, watchdog_intervall=dev.timeout_s)
        client.application_uri = sec.application_uri
        client.name = client.description = f"carbon-gateway {dev.instrument_id}"
        client.session_timeout = _SESSION_TIMEOUT_MS
        session = _Session(client)

        async def on_lost(exc: Exception) -> None:
            session.lost = exc
            session.push(_Wake())

        client.connection_lost_callback = on_lost
        try:
            async with asyncio.timeout(dev.timeout_s * _CONNECT_BUDGET_FACTOR):
                if sec.username:
                    client.set_user(sec.username)
                if sec.password is not None:
                    client.set_password(sec.password)
                if sec.secured:
                    assert sec.client_cert is not None
                    assert sec.client_key is not None
                    # No server certificate given: asyncua fetches it from GetEndpoints; the trust check
                    # below then decides at CreateSession whether we talk to it at all.
                    await client.set_security(
                        POLICY_CLASS[sec.policy],
                        sec.client_cert,
                        sec.client_key,
                        sec.client_key_password,
                        None,
                        MESSAGE_MODE[sec.mode],
                    )
                    if sec.trust_server_certificate_without_check:
                        if self._state is _State.STARTING:
                            _log.warning(
                                "%s: server certificate of %s is NOT checked "
                                "(trust_server_certificate_without_check: true)",
                                dev.instrument_id, dev.endpoint_url,
                            )
                    else:
                        client.certificate_validator = await build_server_certificate_check(sec)
                await client.connect()
        except _LIBRARY_ERRORS as exc:
            client.disconnect_socket()
            raise translate_error(exc, dev.endpoint_url, connecting=True) from exc
        except asyncio.CancelledError:
            client.disconnect_socket()  # close() during a connect attempt: leave no socket behind
            raise
        return session

    async def _open_session(self, session: _Session) -> None:
        dev, client = self.device, session.client
        session.nodes = await self._resolve_nodes(client)
        self._status_values.clear()  # unknown until read on this session
        if self._status_roles:
            dvs = await self._call(
                client.read_attributes([client.get_node(session.nodes[r]) for r in self._status_roles]),
                connecting=False,
            )
            for role, dv in zip(self._status_roles, dvs, strict=True):
                self._set_status_value(role, dv)
        session.poll_points = list(dev.polled_points)
        if dev.subscribed_points:
            await self._subscribe(session, dev.subscribed_points)  # refused items join the poll lists
        if session.poll_points or not dev.subscribed_points:
            # Health/calibration go into every poll read too: one atomic snapshot per poll.
            session.poll_status = list(self._status_roles)
        session.opened_at = time.monotonic()
        self.stats.sessions += 1

    async def _resolve_nodes(self, client: Client) -> dict[str, ua.NodeId]:
        """Turn "nsu=<uri>;..." ids into index-based ones: servers may renumber namespaces on restart."""
        if not any(isinstance(n, ua.ExpandedNodeId) and n.NamespaceUri for n in self._node_ids.values()):
            return dict(self._node_ids)
        namespaces: list[str] = await self._call(client.get_namespace_array(), connecting=False)
        resolved: dict[str, ua.NodeId] = {}
        for key, nid in self._node_ids.items():
            uri = nid.NamespaceUri if isinstance(nid, ua.ExpandedNodeId) else None
            if uri:
                if uri not in namespaces:
                    raise PermanentDriverError(f"{self.device.endpoint_url}: namespace {uri!r} (for {key}) "
                                               "is not on the server")
                nid = ua.NodeId(nid.Identifier, namespaces.index(uri), nid.NodeIdType)
            resolved[key] = nid
        return resolved

    async def _subscribe(self, session: _Session, points: tuple[OpcUaPoint, ...]) -> None:
        dev, client = self.device, session.client
        interval_ms = dev.publishing_interval_ms
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval_ms,
            RequestedLifetimeCount=max(3, math.ceil(_SUBSCRIPTION_LIFETIME_S * 1000 / interval_ms)),
            RequestedMaxKeepAliveCount=1,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        sub = Subscription(client.uaclient.session, params, _Notifications(session))
        result = await self._call(sub.init(), connecting=False)
        session.subscription = sub
        revised_ms = result.RevisedPublishingInterval if result.RevisedPublishingInterval > 0 else interval_ms
        keepalive = max(1, int(result.RevisedMaxKeepAliveCount or 1))
        # N publishing intervals when the server honours MaxKeepAliveCount=1, N keep-alive periods if not.
        session.watchdog_s = dev.watchdog_intervals * keepalive * revised_ms / 1000.0

        requests: list[ua.MonitoredItemCreateRequest] = []
        targets: list[OpcUaPoint | str] = []
        for role in self._status_roles:
            requests.append(_item_request(len(requests) + 1, session.nodes[role], interval_ms, 1, None))
            targets.append(role)
        for p in points:
            sampling = p.sampling_interval_ms if p.sampling_interval_ms is not None else interval_ms
            requests.append(
                _item_request(len(requests) + 1, session.nodes[p.name], sampling, p.queue_size, p.deadband_abs)
            )
            targets.append(p)
        results = await self._call(sub.create_monitored_items(requests), connecting=False)
        for req, target, res in zip(requests, targets, results, strict=True):
            handle = int(req.RequestedParameters.ClientHandle)
            if isinstance(res, ua.StatusCode):
                self._item_refused(session, target, res)
            elif isinstance(target, str):
                session.status_handles[handle] = target
            else:
                session.point_handles[handle] = target

    def _item_refused(self, session: _Session, target: OpcUaPoint | str, code: ua.StatusCode) -> None:
        """A monitored item the server refused is polled instead, so its bad status is still recorded."""
        name = target if isinstance(target, str) else target.name
        if name not in self._warned_items:
            self._warned_items.add(name)
            _log.warning("%s: server refused to monitor %s (%s); polling it every %s s instead",
                         self.device.instrument_id, name, code.name, self.device.poll_interval_s)
        if isinstance(target, str):
            session.poll_status.append(target)
        else:
            session.poll_points.append(target)

    async def _teardown(self, session: _Session) -> None:
        client = session.client
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self.device.timeout_s):
                await client.disconnect()  # closes the session and, with it, its subscriptions
        except _LIBRARY_ERRORS:
            client.disconnect_socket()

    # --- serving ---

    async def _serve(self, session: _Session, sink: SampleSink) -> None:
        polling = bool(session.poll_points or session.poll_status)
        next_poll = time.monotonic() if polling else math.inf
        while True:
            fault = self._fault(session)
            if fault is not None:
                await self._handle_batch(session, self._drain(session, []), sink)  # keep what arrived
                raise fault
            now = time.monotonic()
            if now >= next_poll:
                await self._poll(session, sink)
                next_poll, missed = next_slot(next_poll, self.device.poll_interval_s, time.monotonic())
                if missed:
                    self.stats.missed_polls += missed
                    self.health.missed_polls += missed
                    _log.debug("%s: %d poll slot(s) skipped", self.device.instrument_id, missed)
                continue
            deadline = min(next_poll, session.last_alive() + session.watchdog_s)
            try:
                first = await asyncio.wait_for(session.queue.get(), timeout=max(0.0, deadline - now))
            except TimeoutError:
                continue
            await self._handle_batch(session, self._drain(session, [first]), sink)

    def _fault(self, session: _Session) -> DriverError | None:
        url = self.device.endpoint_url
        if session.lost is not None:
            return TransientDriverError(f"{url}: connection lost ({session.lost!r})")
        if session.overflowed:
            return TransientDriverError(f"{url}: more than {_QUEUE_MAX} notifications waiting for a slow sink")
        if session.subscription is not None and time.monotonic() > session.last_alive() + session.watchdog_s:
            self.stats.watchdog_expiries += 1
            return TransientDriverError(
                f"{url}: watchdog: no notification or keep-alive for {self.device.watchdog_intervals} "
                f"publishing intervals ({session.watchdog_s:.3g} s)"
            )
        return None

    @staticmethod
    def _drain(session: _Session, events: list[_Event]) -> list[_Event]:
        while True:
            try:
                events.append(session.queue.get_nowait())
            except asyncio.QueueEmpty:
                return events

    async def _handle_batch(self, session: _Session, events: list[_Event], sink: SampleSink) -> None:
        # Device condition for the batch: the worse of before and after it, so a sample that shares a
        # publish with a calibration start or end is flagged rather than passed as good.
        before = self._condition()
        pending: list[tuple[OpcUaPoint, ua.DataValue]] = []
        fault: DriverError | None = None
        for event in events:
            if isinstance(event, _DataChange):
                self.stats.notifications += 1
                if event.handle in session.status_handles:
                    self._set_status_value(session.status_handles[event.handle], event.value)
                elif event.handle in session.point_handles:
                    pending.append((session.point_handles[event.handle], event.value))
            elif isinstance(event, _StatusChange) and not ua.StatusCode(event.code).is_good():
                # BadTimeout (subscription expired on the server), BadShutdown (connection lost), ...
                fault = TransientDriverError(
                    f"{self.device.endpoint_url}: subscription status {st.status_name(event.code)}"
                )
        condition = st.worst(before, self._condition())
        now_ms = self._wall_ms()
        samples = [sample_from_datavalue(p, dv, condition, now_ms) for p, dv in pending]
        if samples:
            await self._emit(sink, samples)
        if fault is not None:
            raise fault

    async def _poll(self, session: _Session, sink: SampleSink) -> None:
        client = session.client
        keys = [*session.poll_status, *(p.name for p in session.poll_points)]
        dvs = await self._call(
            client.read_attributes([client.get_node(session.nodes[k]) for k in keys]), connecting=False
        )
        self.stats.polls += 1
        self.health.polls += 1
        n_status = len(session.poll_status)
        for role, dv in zip(session.poll_status, dvs[:n_status], strict=True):
            self._set_status_value(role, dv)
        # One Read is one snapshot: the condition read with the values applies to them, no widening.
        condition = self._condition()
        now_ms = self._wall_ms()
        samples = [
            sample_from_datavalue(p, dv, condition, now_ms)
            for p, dv in zip(session.poll_points, dvs[n_status:], strict=True)
        ]
        if samples:
            await self._emit(sink, samples)

    def _set_status_value(self, role: str, dv: ua.DataValue) -> None:
        usable = dv.StatusCode is None or not dv.StatusCode.is_bad()
        value = dv.Value.Value if (usable and dv.Value is not None) else None
        if value is None:
            self._status_values.pop(role, None)
        else:
            self._status_values[role] = value

    def _condition(self) -> st.DeviceCondition:
        conditions = []
        if _HEALTH in self._node_ids:
            conditions.append(st.health_condition(self._status_values.get(_HEALTH)))
        if _CALIBRATION in self._node_ids:
            conditions.append(st.calibration_condition(self._status_values.get(_CALIBRATION)))
        return st.worst(*conditions)

    async def _emit(self, sink: SampleSink, samples: list[RawSample]) -> None:
        self.stats.samples += len(samples)
        await sink(self.device.instrument_id, samples)

    # --- outage bookkeeping ---

    def _on_session_open(self) -> None:
        dev = self.device
        if self._state is _State.FAILING:
            _log.info("%s: %s recovered after %d failed attempt(s), %.1f s without data",
                      dev.instrument_id, dev.endpoint_url, self._failed_attempts,
                      time.monotonic() - self._failed_since)
        else:
            _log.info("%s: connected to %s", dev.instrument_id, dev.endpoint_url)
        self._state = _State.OK
        self.last_error = None
        self.health.succeeded(self._wall_ms())  # logged above, with the OPC UA details

    def _on_failure(self, exc: DriverError) -> None:
        dev = self.device
        previous, self.last_error = self.last_error, exc
        self.health.failed(exc)  # logged below, with the OPC UA details
        if self._state is not _State.FAILING:
            self._state = _State.FAILING
            self._failed_since = time.monotonic()
            self._failed_attempts = 1
            self.stats.outages += 1
            _log.error("%s: %s failing, readings are recorded as %s until it recovers: %s",
                       dev.instrument_id, dev.endpoint_url, REASON_NO_COMMUNICATION, exc)
            return
        self._failed_attempts += 1
        if previous is None or str(previous) != str(exc):
            _log.warning("%s: still failing, now: %s", dev.instrument_id, exc)
        else:
            _log.debug("%s: reconnect attempt %d failed: %s", dev.instrument_id, self._failed_attempts, exc)

    def _start_outage(self, sink: SampleSink) -> None:
        if self._outage_task is None:
            self._outage_stop = asyncio.Event()
            self._outage_task = asyncio.create_task(
                self._outage_loop(sink, self._outage_stop), name=f"opcua-outage:{self.device.instrument_id}"
            )

    async def _stop_outage(self) -> None:
        """Let the outage loop finish its current sink call, then return (no half-delivered batch)."""
        task, self._outage_task = self._outage_task, None
        if task is not None and self._outage_stop is not None:
            self._outage_stop.set()
            await task

    async def _cancel_outage(self) -> None:
        task, self._outage_task = self._outage_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _cadence_s(self, point: OpcUaPoint) -> float:
        if point in self.device.subscribed_points:
            return self.device.publishing_interval_ms / 1000.0
        return self.device.poll_interval_s

    async def _outage_loop(self, sink: SampleSink, stop: asyncio.Event) -> None:
        points = self.device.points
        due = dict.fromkeys((p.name for p in points), time.monotonic())
        while not stop.is_set():
            now = time.monotonic()
            batch = [p for p in points if due[p.name] <= now]
            if batch:
                ts = self._wall_ms()
                samples = [RawSample(p.name, ts, None, Quality.BAD, REASON_NO_COMMUNICATION) for p in batch]
                self.stats.outage_samples += len(samples)
                await self._emit(sink, samples)
                now = time.monotonic()
                for p in batch:
                    due[p.name], _ = next_slot(due[p.name], self._cadence_s(p), now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, min(due.values()) - time.monotonic()))


def _item_request(
    handle: int, node_id: ua.NodeId, sampling_ms: float, queue_size: int, deadband_abs: float | None
) -> ua.MonitoredItemCreateRequest:
    flt = None
    if deadband_abs is not None:
        flt = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute,
            DeadbandValue=deadband_abs,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=node_id, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=ua.MonitoringParameters(
            ClientHandle=handle, SamplingInterval=sampling_ms, QueueSize=queue_size, DiscardOldest=True,
            Filter=flt,
        ),
    )
