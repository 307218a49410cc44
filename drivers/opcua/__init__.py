"""OPC UA driver (asyncua): subscriptions and polled reads, StatusCode/NE 107 quality, watchdog, reconnect.

`spec` and `status` are pure (no I/O); `driver` holds the asyncua session handling. See docs/opcua.md.
"""

from drivers.opcua.spec import (
    OpcUaDevice,
    OpcUaPoint,
    OpcUaSecurity,
    PointMode,
    SecurityMode,
    SecurityPolicy,
)

__all__ = [
    "OpcUaDevice",
    "OpcUaPoint",
    "OpcUaSecurity",
    "PointMode",
    "SecurityMode",
    "SecurityPolicy",
]
