"""Plain descriptions of an OPC UA device, its points and its security settings.

The gateway's config layer turns YAML into these (see docs/opcua.md). They check their own invariants
in __post_init__ and raise ConfigError, so a bad combination fails at load time, not at 3 a.m. on the
first reconnect. No asyncua import here: node id syntax is checked by the driver's constructor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.errors import ConfigError


class SecurityPolicy(StrEnum):
    NONE = "None"
    BASIC256SHA256 = "Basic256Sha256"


class SecurityMode(StrEnum):
    NONE = "None"
    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class PointMode(StrEnum):
    SUBSCRIBE = "subscribe"
    POLL = "poll"


def _coerce(obj: object, name: str, enum: type[StrEnum]) -> None:
    """Accept the plain string from YAML as well as the enum member (frozen: set via object.__setattr__)."""
    raw = getattr(obj, name)
    try:
        object.__setattr__(obj, name, enum(raw))
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ConfigError(f"{raw!r} is not one of: {allowed}", field=name) from None


def _positive(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"must be a positive number, got {value!r}", field=name)


@dataclass(frozen=True, slots=True)
class OpcUaSecurity:
    """How to secure the session and whom to trust.

    With policy/mode other than None the server certificate is checked against `trust_dir` (a directory
    of DER/PEM certificates, the OPC UA "trusted/certs" folder) and/or `trusted_certs` (individual
    files). Skipping that check needs `trust_server_certificate_without_check: true`, said explicitly.
    `application_uri` must equal the URI in the client certificate's subjectAltName.
    """

    policy: SecurityPolicy = SecurityPolicy.NONE
    mode: SecurityMode = SecurityMode.NONE
    client_cert: str | None = None
    client_key: str | None = None
    client_key_password: str | None = field(default=None, repr=False)
    application_uri: str = "urn:carbon-gateway:client"
    trust_dir: str | None = None
    trusted_certs: tuple[str, ...] = ()
    crl_dir: str | None = None
    trust_server_certificate_without_check: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _coerce(self, "policy", SecurityPolicy)
        _coerce(self, "mode", SecurityMode)
        object.__setattr__(self, "trusted_certs", tuple(self.trusted_certs))
        if (self.policy is SecurityPolicy.NONE) != (self.mode is SecurityMode.NONE):
            raise ConfigError(
                f"policy {self.policy.value} and mode {self.mode.value} do not go together: "
                "use both None, or Basic256Sha256 with Sign or SignAndEncrypt",
                field="security.mode",
            )
        if self.secured:
            for name in ("client_cert", "client_key"):
                if not getattr(self, name):
                    raise ConfigError(f"required for mode {self.mode.value}", field=f"security.{name}")
            if not (self.trust_dir or self.trusted_certs or self.trust_server_certificate_without_check):
                raise ConfigError(
                    "the server certificate must be checked: give trust_dir or trusted_certs, "
                    "or set trust_server_certificate_without_check: true explicitly",
                    field="security.trust_dir",
                )
        if self.password is not None and not self.username:
            raise ConfigError("a password needs a username", field="security.username")

    @property
    def secured(self) -> bool:
        return self.mode is not SecurityMode.NONE


@dataclass(frozen=True, slots=True)
class OpcUaPoint:
    """One variable. Engineering value in the device unit = raw * scale + offset.

    `sampling_interval_ms` None means "the device's publishing interval". `queue_size` and
    `deadband_abs` (absolute deadband, in raw units) apply to subscribe mode only.
    """

    name: str
    node_id: str
    mode: PointMode = PointMode.SUBSCRIBE
    sampling_interval_ms: float | None = None
    queue_size: int = 1
    deadband_abs: float | None = None
    scale: float = 1.0
    offset: float = 0.0

    def __post_init__(self) -> None:
        _coerce(self, "mode", PointMode)
        if not self.name:
            raise ConfigError("a point needs a name", field="name")
        where = f"points.{self.name}"
        if not self.node_id:
            raise ConfigError("a point needs a node_id", field=f"{where}.node_id")
        if self.sampling_interval_ms is not None and not (
            math.isfinite(self.sampling_interval_ms) and self.sampling_interval_ms >= 0
        ):
            raise ConfigError("must be >= 0", field=f"{where}.sampling_interval_ms")
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise ConfigError("must be an integer >= 1", field=f"{where}.queue_size")
        if self.deadband_abs is not None and not (math.isfinite(self.deadband_abs) and self.deadband_abs >= 0):
            raise ConfigError("must be >= 0", field=f"{where}.deadband")
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ConfigError("scale and offset must be finite numbers", field=f"{where}.scale")
        if self.mode is PointMode.POLL and (self.deadband_abs is not None or self.queue_size != 1):
            # Silently ignoring them would let someone believe a deadband is in force.
            raise ConfigError("deadband and queue_size apply to mode: subscribe only", field=f"{where}.mode")


@dataclass(frozen=True, slots=True)
class OpcUaDevice:
    """One instrument behind one OPC UA endpoint (one session per device).

    `watchdog_intervals`: a subscription with no notification and no keep-alive for this many
    publishing intervals is treated as dead. `health_node_id` is a DI DeviceHealthEnumeration (Int32,
    0..4); `calibration_node_id` a Boolean "calibration in progress". Both apply to every point.
    """

    instrument_id: str
    endpoint_url: str
    points: tuple[OpcUaPoint, ...]
    publishing_interval_ms: float = 1000.0
    poll_interval_s: float = 10.0
    health_node_id: str | None = None
    calibration_node_id: str | None = None
    watchdog_intervals: int = 3
    timeout_s: float = 5.0
    security: OpcUaSecurity = field(default_factory=OpcUaSecurity)
    reconnect_initial_s: float = 1.0
    reconnect_max_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))
        if not self.instrument_id:
            raise ConfigError("an instrument needs an id", field="id")
        if not self.endpoint_url.startswith("opc.tcp://"):
            raise ConfigError(f"must start with opc.tcp://, got {self.endpoint_url!r}", field="endpoint")
        if not self.points:
            raise ConfigError("an OPC UA instrument needs at least one point", field="points")
        names = [p.name for p in self.points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"duplicate point names: {', '.join(dupes)}", field="points")
        _positive(self.publishing_interval_ms, "publishing_interval_ms")
        _positive(self.poll_interval_s, "poll_interval_s")
        _positive(self.timeout_s, "timeout_s")
        _positive(self.reconnect_initial_s, "reconnect_initial_s")
        _positive(self.reconnect_max_s, "reconnect_max_s")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ConfigError("must be >= reconnect_initial_s", field="reconnect_max_s")
        # One missed keep-alive is normal network jitter; two in a row is the minimum worth a reconnect.
        if not isinstance(self.watchdog_intervals, int) or self.watchdog_intervals < 2:
            raise ConfigError("must be an integer >= 2", field="watchdog_intervals")

    @property
    def subscribed_points(self) -> tuple[OpcUaPoint, ...]:
        return tuple(p for p in self.points if p.mode is PointMode.SUBSCRIBE)

    @property
    def polled_points(self) -> tuple[OpcUaPoint, ...]:
        return tuple(p for p in self.points if p.mode is PointMode.POLL)
