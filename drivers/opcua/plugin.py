"""The OPC UA protocol plugin: subscriptions and polled reads of one session per device (docs/opcua.md).

Registered in gateway/protocols.py. Everything OPC UA-specific the configuration loader, `validate`,
the schemas and the runtime need comes from here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from drivers.base import PlannedPoint, ProtocolPlugin, Reporter, SubscribingDriver
from drivers.opcua.spec import OpcUaDevice, OpcUaPoint, OpcUaSecurity
from gateway.errors import ConfigError
from gateway.schema_base import MIN_POLL_INTERVAL_S, ConnectionBase, PointBase, Strict, is_loopback_host
from gateway.settings import CredentialsUnavailable, credential_path, read_secret_file


class OpcUaPointModel(PointBase):
    """An OPC UA point: a variable given by its node id, subscribed to or polled."""

    node_id: str | None = None
    mode: Literal["subscribe", "poll"] | None = None
    sampling_interval_ms: float | None = Field(default=None, ge=MIN_POLL_INTERVAL_S * 1000)
    queue_size: int | None = Field(default=None, ge=1)
    deadband: float | None = Field(default=None, ge=0)


class OpcUaSecurityModel(Strict):
    policy: Literal["None", "Basic256Sha256"] = "None"
    mode: Literal["None", "Sign", "SignAndEncrypt"] = "None"
    client_cert: str | None = None
    client_key: str | None = None
    application_uri: str = "urn:carbon-gateway:client"
    trust_dir: str | None = None
    trusted_certs: list[str] = []
    crl_dir: str | None = None
    trust_server_certificate_without_check: bool = False
    username: str | None = None
    # Secrets never live in YAML: a file or an environment variable.
    password_file: str | None = None
    password_env: str | None = None
    key_password_env: str | None = None


class OpcUaConnection(ConnectionBase):
    protocol: Literal["opcua"]
    endpoint: str = Field(pattern=r"^opc\.tcp://[^/:]+(:\d+)?(/.*)?$")  # type: ignore[assignment]
    publishing_interval_ms: float = Field(default=1000.0, ge=MIN_POLL_INTERVAL_S * 1000, le=86_400_000)
    watchdog_intervals: int = Field(default=3, ge=2, le=100)
    poll_interval_s: float = Field(default=10.0, ge=MIN_POLL_INTERVAL_S, le=86_400)
    timeout_s: float = Field(default=5.0, gt=0, le=120)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    health_node_id: str | None = None
    calibration_node_id: str | None = None
    security: OpcUaSecurityModel = OpcUaSecurityModel()

    @property
    def host(self) -> str:
        return self.endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        hostport = self.endpoint.split("://", 1)[1].split("/", 1)[0]
        return int(hostport.rsplit(":", 1)[1]) if ":" in hostport else 4840

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)


def _secret(sec: Any, file_key: str | None, env_key: str, ctx: Reporter) -> str | None:
    """A secret from a file (`file_key`) or the value of an environment variable (`env_key`)."""
    path = getattr(sec, file_key) if file_key else None
    env = getattr(sec, env_key)
    if path is not None:
        try:
            return read_secret_file(Path(path))
        except CredentialsUnavailable:
            # A command run by hand beside the service (`status`, `instruments` ...) has no systemd credentials
            # and needs none; `run` without them is refused (settings.check_credentials).
            return None
        except ValueError as err:
            ctx.error(("connection", "security", file_key), f"connection.security.{file_key}", str(err))  # type: ignore[arg-type]
            return None
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            ctx.error(("connection", "security", env_key), f"connection.security.{env_key}",
                      f"environment variable {env} is not set")
        return value
    return None


def _file(sec: Any, key: str, ctx: Reporter) -> str | None:
    """A client certificate or key path, `${CREDENTIALS_DIRECTORY}/NAME` resolved (systemd LoadCredential=)."""
    path = getattr(sec, key)
    if path is None:
        return None
    try:
        return str(credential_path(path))
    except CredentialsUnavailable:
        return path  # not under the service: only `run` opens it, and it refuses first (settings.check_credentials)
    except ValueError as err:
        ctx.error(("connection", "security", key), f"connection.security.{key}", str(err))
        return None


class OpcUaPlugin(ProtocolPlugin):
    name = "opcua"
    title = "OPC UA"
    connections = (OpcUaConnection,)
    point_model = OpcUaPointModel
    required_point_fields = ("node_id",)
    kind = "subscribing"

    def cadence(self, point: Any, inst: Any, default_poll_s: float) -> tuple[float, bool]:
        c = inst.connection
        if (point.mode or "subscribe") == "subscribe":
            return c.publishing_interval_ms / 1000, True
        return inst.poll_interval_s or c.poll_interval_s, False

    def build_device(self, inst: Any, points: Sequence[PlannedPoint], profile: Any,
                     ctx: Reporter) -> OpcUaDevice | None:
        c = inst.connection
        built = []
        for pp in points:
            p = pp.point
            try:
                built.append(OpcUaPoint(name=p.name, node_id=p.node_id or "", mode=p.mode or "subscribe",  # type: ignore[arg-type]
                                        sampling_interval_ms=p.sampling_interval_ms, queue_size=p.queue_size or 1,
                                        deadband_abs=p.deadband, scale=p.scale if p.scale is not None else 1.0,
                                        offset=p.offset or 0.0))
            except ConfigError as err:
                sub = (err.field or "").rsplit(".", 1)[-1]
                ctx.error(pp.loc + ((sub,) if sub else ()), f"{pp.field}.{sub}" if sub else pp.field, err.message)
        sec = c.security
        password = _secret(sec, "password_file", "password_env", ctx)
        # The variable's value is the passphrase of client_key (it was once read as a file name).
        key_password = _secret(sec, None, "key_password_env", ctx)
        client_cert, client_key = (_file(sec, "client_cert", ctx), _file(sec, "client_key", ctx))
        try:
            security = OpcUaSecurity(policy=sec.policy, mode=sec.mode, client_cert=client_cert,  # type: ignore[arg-type]
                                     client_key=client_key, client_key_password=key_password,
                                     application_uri=sec.application_uri, trust_dir=sec.trust_dir,
                                     trusted_certs=tuple(sec.trusted_certs), crl_dir=sec.crl_dir,
                                     trust_server_certificate_without_check=sec.trust_server_certificate_without_check,
                                     username=sec.username, password=password)
            return OpcUaDevice(instrument_id=inst.id, endpoint_url=c.endpoint, points=tuple(built),
                               publishing_interval_ms=c.publishing_interval_ms,
                               poll_interval_s=inst.poll_interval_s or c.poll_interval_s,
                               health_node_id=c.health_node_id, calibration_node_id=c.calibration_node_id,
                               watchdog_intervals=c.watchdog_intervals, timeout_s=c.timeout_s, security=security,
                               reconnect_initial_s=c.reconnect_initial_s, reconnect_max_s=c.reconnect_max_s)
        except ConfigError as err:
            field = err.field or "connection"
            loc = tuple(x for x in field.split(".") if x)
            ctx.error(("connection", *loc) if loc[:1] != ("connection",) else loc, f"connection.{field}", err.message)
            return None

    def open_subscriber(self, device: Any) -> SubscribingDriver:
        from drivers.opcua.driver import OpcUaDriver

        # asyncua logs a traceback per lost connection; the driver logs one line per state change.
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)
        return OpcUaDriver(device)


PLUGIN = OpcUaPlugin()
