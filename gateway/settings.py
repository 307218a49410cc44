"""gateway.yaml: the gateway's own settings (identity, MQTT, store, limits)."""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.errors import ConfigError
from gateway.schema_base import MIN_POLL_INTERVAL_S
from gateway.yamlload import DEFAULT_MAX_FILE_BYTES

# The topic prefix is the first levels of every topic the gateway publishes; the rest (gateway id,
# instrument id, kind) adds at most ~200 bytes, far below MQTT's 65,535-byte limit.
MAX_TOPIC_PREFIX_BYTES = 128
MAX_SECRET_BYTES = 64 * 1024


class Strict(BaseModel):
    # Unknown keys are errors at every level; NaN and infinity are never a configuration value.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_mqtt_url(v: str) -> str:
    """mqtt://host[:port] or mqtts://host[:port]; ValueError with the reason otherwise.

    Credentials in the URL (mqtt://user:secret@host) are refused, not honoured: a URL is logged,
    shown by `ps` when given with --mqtt-url and kept in the YAML, and secrets never live there.
    """
    try:
        parsed = urlparse(v)
        port = parsed.port  # raises ValueError for 99999 or "12ab"
        host = parsed.hostname
    except ValueError as err:
        raise ValueError(f"must look like mqtt://host:port or mqtts://host:port ({err})") from None
    if parsed.scheme not in ("mqtt", "mqtts") or not host:
        raise ValueError("must look like mqtt://host:port or mqtts://host:port")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError("credentials in the URL are not used: give mqtt.username, and the password in "
                         "mqtt.password_file or mqtt.password_env")
    if port == 0:
        raise ValueError("port must be 1..65535")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.params:
        raise ValueError("must be only mqtt://host:port or mqtts://host:port (no path or query)")
    return v


def check_topic_prefix(v: str) -> str:
    """The MQTT topic grammar (MQTT 3.1.1 4.7, 5.0 4.7) for the levels the gateway puts first.

    No wildcards (`+`, `#`) in a topic name, no NUL or other control character (brokers drop the
    connection), no leading `$` (topics starting with `$` are the broker's own, e.g. `$SYS`, and
    are not matched by subscribers' wildcards), no empty level, at most MAX_TOPIC_PREFIX_BYTES in UTF-8.
    """
    if not v:
        raise ValueError("must not be empty")
    if "+" in v or "#" in v:
        raise ValueError("must not contain the MQTT wildcards '+' or '#'")
    if any(unicodedata.category(c) in ("Cc", "Cs") or c in "\ufffe\uffff" for c in v):
        raise ValueError("must not contain NUL or other control characters")
    if v.startswith("$"):
        raise ValueError("must not start with '$' (reserved for the broker's own topics such as $SYS)")
    if "" in v.split("/"):
        raise ValueError("must not start or end with '/' or contain '//' (empty topic levels)")
    size = len(v.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_PREFIX_BYTES:
        raise ValueError(f"is {size} bytes in UTF-8, above the limit of {MAX_TOPIC_PREFIX_BYTES}")
    return v


# -- issue 11 item 4: secrets through systemd credentials (LoadCredential=) ------------------------------------
# A password or TLS file written as `${CREDENTIALS_DIRECTORY}/NAME` is NAME in the directory systemd gives a
# service for its LoadCredential= lines (in memory, readable by that service only). Expanded where the file
# is read, so the configuration stays the same text whoever loads it.
CREDENTIALS_VAR = "CREDENTIALS_DIRECTORY"
_CREDENTIAL_PREFIXES = ("${CREDENTIALS_DIRECTORY}/", "$CREDENTIALS_DIRECTORY/")


class CredentialsUnavailable(ValueError):
    """The file is a systemd credential and this process was not given any (not started by the service)."""


def credential_path(path: Path | str) -> Path:
    """`path`, with a leading `${CREDENTIALS_DIRECTORY}/` replaced by the variable's value."""
    text = str(path)
    for prefix in _CREDENTIAL_PREFIXES:
        if text.startswith(prefix):
            name = text[len(prefix):]
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{text}: a credential is one file name after ${{{CREDENTIALS_VAR}}}/")
            base = os.environ.get(CREDENTIALS_VAR)
            if not base:
                raise CredentialsUnavailable(
                    f"{text}: ${CREDENTIALS_VAR} is not set (systemd sets it for a service with LoadCredential=)")
            return Path(base) / name
    return Path(path)


def check_credentials(settings: Settings, instruments: Iterable[Any] = ()) -> None:
    """For `run`: a `${CREDENTIALS_DIRECTORY}/` file without credentials is a ConfigError (exit 2), not a
    warning as in `validate` or the reports run by hand beside the service. `instruments`: compiled
    instruments whose connection has a `security` block (OPC UA: password_file, client_cert, client_key)."""
    m = settings.mqtt
    files: dict[str, Any] = {"mqtt.password_file": m.password_file}
    if m.tls is not None:
        files.update({f"mqtt.tls.{k}": getattr(m.tls, k) for k in ("ca_file", "cert_file", "key_file")})
    for spec in instruments:
        sec = getattr(getattr(spec, "connection", None), "security", None)
        for key in ("password_file", "client_cert", "client_key"):
            files[f"instrument {spec.id}: connection.security.{key}"] = getattr(sec, key, None)
    for name, path in files.items():
        if path is not None:
            try:
                credential_path(path)
            except ValueError as err:
                raise ConfigError(str(err), field=name) from None


def _regular_file(path: Path) -> os.stat_result:
    """stat() of a regular file, or ValueError naming why it cannot be read (a FIFO would hang a read)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"cannot read {path}: not a regular file")
    return st


def read_secret_file(path: Path) -> str:
    """The secret in a file (stripped), or ValueError saying why it cannot be used (never the content)."""
    path = credential_path(path)
    st = _regular_file(path)
    if st.st_size > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is {st.st_size:,} bytes: not a password file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = os.read(fd, MAX_SECRET_BYTES + 1)
        finally:
            os.close(fd)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text (a binary file?)") from None
    if "\x00" in text:
        raise ValueError(f"{path} is a binary file, not a password")
    if not text:
        raise ValueError(f"{path} is empty")
    return text


def check_readable_file(path: Path) -> None:
    """A certificate/key/CA file must be a readable regular file; ValueError otherwise."""
    path = credential_path(path)
    _regular_file(path)
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {path}: Permission denied")


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
    topic_prefix: str = "carbon"  # MQTT topic grammar, see check_topic_prefix
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
    # Truthful status: `connecting` is reported once no CONNACK came for this long, `stalled` once
    # messages are in flight and no PUBACK came for this long.
    connack_timeout_s: float = Field(default=10.0, gt=0)
    puback_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_mqtt_url(v)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_topic_prefix(v)

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
        """Read the secret at connect time; it is never logged or stored in settings dumps.

        `validate` and start-up check the same (registry.check_mqtt_files), so this raises only if
        the file or variable went away since: a ConfigError, one line, never a traceback."""
        if self.password_file is not None:
            try:
                return read_secret_file(self.password_file)
            except ValueError as err:
                raise ConfigError(str(err), field="mqtt.password_file") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} is not set", field="mqtt.password_env")
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
    # Parsed instrument files are cached beside the store (<store dir>/config-cache/, keyed by each
    # file's SHA-256): a large configuration starts in seconds. Off: every start parses every file.
    config_cache: bool = True
    # Retention by size: delivered readings are pruned oldest first to keep the store's used size
    # under this (undelivered data never); None = by age only.
    max_size_mb: float | None = Field(default=None, gt=0)


# -- issue 12 item 1: Sparkplug B output (docs/sparkplug.md) --------------------------------------
_SPARKPLUG_ID = r"^[^/+#]{1,64}$"  # one topic level, no wildcards (Sparkplug 3.0 4.1.1)


class SparkplugSettings(Strict):
    group_id: str = Field(default="carbon", pattern=_SPARKPLUG_ID)
    edge_node_id: str | None = Field(default=None, pattern=_SPARKPLUG_ID)  # None: gateway.id
    # The primary host application's id: no births (and no data) until its spBv1.0/STATE/{id} says
    # online; while it is offline the readings wait in the store and are sent with is_historical.
    primary_host_id: str | None = Field(default=None, pattern=_SPARKPLUG_ID)
    # The JSON topics beside Sparkplug (same messages, acknowledged together), or none: Sparkplug only.
    json_topics: Literal["none", "json", "json_compact"] = "none"


class OutputSettings(Strict):
    # The wire format of readings (docs/mqtt.md): `json` (carbon-gateway/readings/1, every field per
    # reading) or `json_compact` (carbon-gateway/readings-compact/2: units and defaults once per message),
    # or `sparkplug` (Sparkplug B 3.0, docs/sparkplug.md; JSON beside it with sparkplug.json_topics).
    encoder: Literal["json", "json_compact", "sparkplug"] = "json"
    sparkplug: SparkplugSettings = SparkplugSettings()


# -- issue 12 item 2: commands to the gateway (replay on request) -----------------------------------
class ReplaySettings(Strict):
    # The largest request payload read; anything longer is rejected unread.
    max_request_bytes: int = Field(default=4096, ge=256, le=65_536)
    # The most messages one request may ask for (larger ranges: several requests).
    max_messages: int = Field(default=10_000, ge=1, le=1_000_000)
    # Replayed messages per second at most, and at most this share of the in-flight window, so live
    # data keeps flowing beside a replay.
    rate_msgs_s: float = Field(default=50.0, gt=0, le=10_000)
    window_share: float = Field(default=0.5, gt=0, le=1)
    # Requests waiting behind the one being served; more are rejected as `busy`.
    max_queued: int = Field(default=8, ge=0, le=1000)


class CommandSettings(Strict):
    # The command topics subscribed, by name: `replay` is {prefix}/{gateway}/cmd/replay. Nothing else
    # is ever subscribed; an empty list (the default) subscribes to nothing.
    subscribe: list[Literal["replay"]] = Field(default_factory=list)
    replay: ReplaySettings = ReplaySettings()


class Limits(Strict):
    queue_readings: int = Field(default=20_000, ge=100)  # bound between pollers and the store writer
    due_soon_days: int = Field(default=30, ge=0, le=3650)
    default_poll_interval_s: float = Field(default=1.0, ge=MIN_POLL_INTERVAL_S, le=86_400)
    # Largest instrument file read (gateway.yaml itself is read before its settings, with the default).
    max_config_file_bytes: int = Field(default=DEFAULT_MAX_FILE_BYTES, ge=1024, le=1_000_000_000)
    backoff_min_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)


class Settings(Strict):
    gateway: GatewayIdentity
    mqtt: MqttSettings = MqttSettings()
    store: StoreSettings = StoreSettings()
    output: OutputSettings = OutputSettings()
    commands: CommandSettings = CommandSettings()  # issue 12: replay on request
    limits: Limits = Limits()
    instruments_dir: Path = Path("instruments")
