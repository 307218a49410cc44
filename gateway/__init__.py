"""Carbon-metering edge gateway: meters -> tagged readings -> SQLite -> MQTT."""

__version__ = "0.1.0"
