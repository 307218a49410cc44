"""Pure mapping from OPC UA StatusCodes and DI DeviceHealth (NAMUR NE 107) to gateway quality/reason.

Reason format (documented in docs/opcua.md, table there):
- Good status: "" (REASON_OK), except GoodLocalOverride -> "manual:GoodLocalOverride".
- Not good and the code has a gateway meaning: "<gateway_reason>:<OpcUaName>", e.g.
  "no_communication:BadNoCommunication", "fault:BadSensorFailure".
- Not good otherwise: the bare OPC UA symbolic name, e.g. "BadTypeMismatch", "UncertainSubstituteValue".
So `reason.split(":", 1)[0]` is always the stable code a subscriber switches on, and the part after the
colon (when present) is the server's own word. The full 32-bit code is kept in RawSample.status.

Quality follows the severity bits (00 good, 01 uncertain, 10/11 bad), with two documented exceptions
from the flag mapping of docs/opcua.md: UncertainNoCommunicationLastUsableValue and UncertainInitialValue are demoted to
bad, because the value is stale or was never read from the source and must count as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from asyncua.ua import status_codes

from gateway.model import (
    REASON_CALIBRATION,
    REASON_MAINTENANCE,
    REASON_NO_COMMUNICATION,
    REASON_OK,
    Quality,
)

# Gateway reason codes this module adds to gateway.model's vocabulary.
REASON_FAULT = "fault"
REASON_OUT_OF_SPEC = "out_of_spec"
REASON_MAINTENANCE_REQUIRED = "maintenance_required"
REASON_OVER_RANGE = "over_range"
REASON_INITIAL = "initial"
REASON_MANUAL = "manual"
REASON_DEVICE_STATUS_UNKNOWN = "device_status_unknown"

_SEVERITY_MASK = 0xC0000000
_CODE_MASK = 0xFFFF0000  # drop structure-changed, info type and limit/overflow bits


class _Sc:
    """The codes named in OPC 10000-4 StatusCodes (docs/opcua.md)."""

    GoodLocalOverride = 0x00960000
    UncertainNoCommunicationLastUsableValue = 0x408F0000
    UncertainInitialValue = 0x40920000
    UncertainSensorNotAccurate = 0x40930000
    UncertainEngineeringUnitsExceeded = 0x40940000
    BadCommunicationError = 0x80050000
    BadTimeout = 0x800A0000
    BadNoCommunication = 0x80310000
    BadWaitingForInitialData = 0x80320000
    BadOutOfRange = 0x803C0000
    BadNotConnected = 0x808A0000
    BadDeviceFailure = 0x808B0000
    BadSensorFailure = 0x808C0000
    BadOutOfService = 0x808D0000


# masked code -> gateway reason (docs/opcua.md, "OPC UA code read from a server").
_GATEWAY_REASON: dict[int, str] = {
    _Sc.BadNoCommunication: REASON_NO_COMMUNICATION,
    _Sc.BadCommunicationError: REASON_NO_COMMUNICATION,
    _Sc.BadTimeout: REASON_NO_COMMUNICATION,
    _Sc.BadNotConnected: REASON_NO_COMMUNICATION,
    _Sc.UncertainNoCommunicationLastUsableValue: REASON_NO_COMMUNICATION,
    _Sc.BadDeviceFailure: REASON_FAULT,
    _Sc.BadSensorFailure: REASON_FAULT,
    # Out of service without the analyzer's calibration flag; with it, the device condition says
    # "calibration" instead (OPC UA has no calibration StatusCode).
    _Sc.BadOutOfService: REASON_MAINTENANCE,
    _Sc.UncertainEngineeringUnitsExceeded: REASON_OVER_RANGE,
    _Sc.UncertainSensorNotAccurate: REASON_OVER_RANGE,
    _Sc.BadOutOfRange: REASON_OVER_RANGE,
    _Sc.BadWaitingForInitialData: REASON_INITIAL,
    _Sc.UncertainInitialValue: REASON_INITIAL,
    _Sc.GoodLocalOverride: REASON_MANUAL,
}

# Uncertain by severity, but the value must count as missing (docs/opcua.md).
_DEMOTED_TO_BAD = frozenset({_Sc.UncertainNoCommunicationLastUsableValue, _Sc.UncertainInitialValue})

_RANK = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}


def severity(code: int) -> Quality:
    """Quality from the two severity bits alone (11, reserved, counts as bad per Part 4 7.34.1)."""
    bits = code & _SEVERITY_MASK
    if bits == 0:
        return Quality.GOOD
    if bits == 0x40000000:
        return Quality.UNCERTAIN
    return Quality.BAD


def status_name(code: int) -> str:
    """OPC UA symbolic name ignoring the info bits; unknown codes become e.g. "Bad_0x80FE0000"."""
    masked = code & _CODE_MASK
    table = status_codes.code_to_name_doc
    if masked in table:
        return table[masked][0]
    return f"{severity(code).value.capitalize()}_0x{masked:08X}"


def classify_status(code: int) -> tuple[Quality, str]:
    """StatusCode -> (quality, reason) as described in the module docstring."""
    masked = code & _CODE_MASK
    quality = Quality.BAD if masked in _DEMOTED_TO_BAD else severity(code)
    gateway_reason = _GATEWAY_REASON.get(masked)
    if quality is Quality.GOOD and gateway_reason is None:
        return Quality.GOOD, REASON_OK
    name = status_name(code)
    return quality, f"{gateway_reason}:{name}" if gateway_reason else name


class DeviceHealth(IntEnum):
    """OPC 10000-100 (DI) DeviceHealthEnumeration."""

    NORMAL = 0
    FAILURE = 1
    CHECK_FUNCTION = 2
    OFF_SPEC = 3
    MAINTENANCE_REQUIRED = 4


class Ne107(StrEnum):
    NORMAL = "N"
    FAILURE = "F"
    CHECK_FUNCTION = "C"
    OFF_SPEC = "S"
    MAINTENANCE_REQUIRED = "M"


NE107_OF_HEALTH: dict[DeviceHealth, Ne107] = {
    DeviceHealth.NORMAL: Ne107.NORMAL,
    DeviceHealth.FAILURE: Ne107.FAILURE,
    DeviceHealth.CHECK_FUNCTION: Ne107.CHECK_FUNCTION,
    DeviceHealth.OFF_SPEC: Ne107.OFF_SPEC,
    DeviceHealth.MAINTENANCE_REQUIRED: Ne107.MAINTENANCE_REQUIRED,
}


@dataclass(frozen=True, slots=True)
class DeviceCondition:
    """What the device says about itself, applied to every point of the device.

    `rank` orders conditions for aggregation: NE 107 priority F > C > S > M (protocols.md §7), with
    calibration above other function checks because it is the more specific C, and "unknown" between C
    and S: not knowing is worse than a known off-spec, better than a known check/failure.
    """

    rank: int
    quality: Quality
    reason: str


NORMAL = DeviceCondition(0, Quality.GOOD, REASON_OK)
MAINTENANCE_REQUIRED = DeviceCondition(1, Quality.GOOD, REASON_MAINTENANCE_REQUIRED)
OFF_SPEC = DeviceCondition(2, Quality.UNCERTAIN, REASON_OUT_OF_SPEC)
UNKNOWN = DeviceCondition(3, Quality.UNCERTAIN, REASON_DEVICE_STATUS_UNKNOWN)
CHECK_FUNCTION = DeviceCondition(4, Quality.BAD, REASON_MAINTENANCE)
CALIBRATING = DeviceCondition(5, Quality.BAD, REASON_CALIBRATION)
FAILURE = DeviceCondition(6, Quality.BAD, REASON_FAULT)

_CONDITION_OF_NE107: dict[Ne107, DeviceCondition] = {
    Ne107.NORMAL: NORMAL,
    Ne107.FAILURE: FAILURE,
    Ne107.CHECK_FUNCTION: CHECK_FUNCTION,
    Ne107.OFF_SPEC: OFF_SPEC,
    Ne107.MAINTENANCE_REQUIRED: MAINTENANCE_REQUIRED,
}


def health_condition(value: object) -> DeviceCondition:
    """DeviceHealth variable value -> condition. None (not read / bad status) or junk -> UNKNOWN."""
    if isinstance(value, bool) or not isinstance(value, int):
        return UNKNOWN
    try:
        health = DeviceHealth(value)
    except ValueError:
        return UNKNOWN
    return _CONDITION_OF_NE107[NE107_OF_HEALTH[health]]


def calibration_condition(value: object) -> DeviceCondition:
    """CalibrationInProgress value -> condition. Accepts Boolean, or 0/1 from servers that use integers."""
    if isinstance(value, bool):
        return CALIBRATING if value else NORMAL
    if isinstance(value, int) and value in (0, 1):
        return CALIBRATING if value else NORMAL
    return UNKNOWN


def worst(*conditions: DeviceCondition) -> DeviceCondition:
    return max(conditions, key=lambda c: c.rank, default=NORMAL)


def apply_condition(quality: Quality, reason: str, condition: DeviceCondition) -> tuple[Quality, str]:
    """Combine a point's own status with the device condition.

    Quality is the worse of the two. The device reason wins when the device condition is at least as
    severe as the point status (so BadOutOfService + calibration flag -> "calibration", Good + M ->
    "maintenance_required"); a more severe point status keeps its own reason.
    """
    if condition is NORMAL or condition.rank == NORMAL.rank:
        return quality, reason
    if _RANK[condition.quality] >= _RANK[quality]:
        return condition.quality, condition.reason
    return quality, reason
