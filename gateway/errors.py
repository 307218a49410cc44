"""The project's error types. Library exceptions are translated into these at each boundary."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration problem, located as precisely as we can: file:line: field: message."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        text = f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        # One line, whatever the input held: control characters (a newline in a key) are escaped.
        return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigErrors(GatewayError):
    """Several configuration errors found in one validation pass (all are reported, not just the first)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.one_line() for e in errors))


class DriverError(GatewayError):
    """A device could not be read. `reason` is the short code stored with the bad readings."""

    reason = "driver_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class TransientDriverError(DriverError):
    """Worth retrying: timeouts, refused connections, busy devices."""

    reason = "no_communication"


class PermanentDriverError(DriverError):
    """Retrying will not help until the configuration changes (e.g. illegal address)."""

    reason = "device_rejected"


class DecodeError(GatewayError):
    """Registers or values that cannot be turned into a number (bad BCD, wrong register count)."""


class StoreError(GatewayError):
    """The SQLite store failed (disk full, corrupt file, schema from a newer version)."""


class PublishError(GatewayError):
    """The MQTT broker refused us (bad credentials, not authorised) or cannot be reached."""
