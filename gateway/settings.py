"""gateway.yaml: the gateway's own settings (identity, MQTT, store, limits)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayIdentity(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    site: str = ""
    timezone: str = "UTC"  # calendar dates (calibration) are site-local

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{v}'") from None
        return v


class TlsSettings(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False  # tests only; never in production


class MqttSettings(Strict):
    url: str = "mqtt://127.0.0.1:1883"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    client_id: str | None = None
    topic_prefix: str = Field(default="carbon", pattern=r"^[^#+]+$")
    username: str | None = None
    # Secrets never live in YAML: a file (e.g. systemd credentials) or an environment variable.
    password_file: Path | None = None
    password_env: str | None = None
    tls: TlsSettings | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    max_inflight: int = Field(default=100, ge=1, le=1000)  # perf-limits: paho slows past ~100
    readings_per_message: int = Field(default=100, ge=1, le=1000)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    status_interval_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError("must look like mqtt://host:port or mqtts://host:port")
        return v

    @model_validator(mode="after")
    def _password_source(self) -> MqttSettings:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        return self

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts" or self.tls is not None

    def password(self) -> str | None:
        """Read the secret at connect time; it is never logged or stored in settings dumps."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ValueError(f"environment variable {self.password_env} is not set")
            return value
        return None


class StoreSettings(Strict):
    path: Path = Path("var/gateway.db")
    # FULL survives power loss as well as kill -9; batched commits keep its cost low (perf-limits 4b).
    synchronous: Literal["full", "normal"] = "full"
    commit_interval_ms: int = Field(default=50, ge=5, le=5000)
    retention_days: float = Field(default=30.0, gt=0)  # delivered data only; undelivered is never pruned
    prune_interval_s: float = Field(default=600.0, gt=0)
    size_alarm_mb: float = Field(default=2048.0, gt=0)


class Limits(Strict):
    queue_readings: int = Field(default=20_000, ge=100)  # bound between pollers and the store writer
    due_soon_days: int = Field(default=30, ge=0, le=3650)
    default_poll_interval_s: float = Field(default=1.0, gt=0)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)


class Settings(Strict):
    gateway: GatewayIdentity
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    limits: Limits = Limits()
    instruments_dir: Path = Path("instruments")
