"""Pure OPC UA StatusCode and DeviceHealth (NE 107) mapping: every branch of drivers/opcua/status.py."""

from __future__ import annotations

import itertools

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as hs

from drivers.opcua import status as st
from gateway.model import Quality

SC = ua.StatusCodes


def test_local_code_table_matches_asyncua() -> None:
    for name, value in vars(st._Sc).items():
        if not name.startswith("_"):
            assert getattr(SC, name) == value, name


@pytest.mark.parametrize(
    ("code", "quality", "reason"),
    [
        (SC.Good, Quality.GOOD, ""),
        (SC.GoodClamped, Quality.GOOD, ""),
        (SC.GoodLocalOverride, Quality.GOOD, "manual:GoodLocalOverride"),
        # docs/opcua.md, COMM_LOSS row
        (SC.BadNoCommunication, Quality.BAD, "no_communication:BadNoCommunication"),
        (SC.BadCommunicationError, Quality.BAD, "no_communication:BadCommunicationError"),
        (SC.BadTimeout, Quality.BAD, "no_communication:BadTimeout"),
        (SC.BadNotConnected, Quality.BAD, "no_communication:BadNotConnected"),
        (SC.UncertainNoCommunicationLastUsableValue, Quality.BAD,
         "no_communication:UncertainNoCommunicationLastUsableValue"),
        # FAULT, MAINTENANCE, OVER_RANGE, INITIAL rows
        (SC.BadDeviceFailure, Quality.BAD, "fault:BadDeviceFailure"),
        (SC.BadSensorFailure, Quality.BAD, "fault:BadSensorFailure"),
        (SC.BadOutOfService, Quality.BAD, "maintenance:BadOutOfService"),
        (SC.UncertainEngineeringUnitsExceeded, Quality.UNCERTAIN, "over_range:UncertainEngineeringUnitsExceeded"),
        (SC.UncertainSensorNotAccurate, Quality.UNCERTAIN, "over_range:UncertainSensorNotAccurate"),
        (SC.BadOutOfRange, Quality.BAD, "over_range:BadOutOfRange"),
        (SC.BadWaitingForInitialData, Quality.BAD, "initial:BadWaitingForInitialData"),
        (SC.UncertainInitialValue, Quality.BAD, "initial:UncertainInitialValue"),
        # no gateway meaning: bare OPC UA name, quality from the severity bits
        (SC.Uncertain, Quality.UNCERTAIN, "Uncertain"),
        (SC.UncertainSubstituteValue, Quality.UNCERTAIN, "UncertainSubstituteValue"),
        (SC.UncertainLastUsableValue, Quality.UNCERTAIN, "UncertainLastUsableValue"),
        (SC.Bad, Quality.BAD, "Bad"),
        (SC.BadTypeMismatch, Quality.BAD, "BadTypeMismatch"),
        (SC.BadNodeIdUnknown, Quality.BAD, "BadNodeIdUnknown"),
    ],
)
def test_classify_status(code: int, quality: Quality, reason: str) -> None:
    assert st.classify_status(code) == (quality, reason)


def test_info_bits_are_ignored() -> None:
    limit_high = 0x0200  # DataValue limit bits = high
    overflow = 0x0080
    assert st.classify_status(SC.UncertainEngineeringUnitsExceeded | limit_high) == (
        Quality.UNCERTAIN, "over_range:UncertainEngineeringUnitsExceeded")
    assert st.classify_status(SC.Good | overflow) == (Quality.GOOD, "")
    assert st.status_name(SC.BadSensorFailure | 0x0400) == "BadSensorFailure"


def test_unknown_codes_get_a_hex_name() -> None:
    assert st.status_name(0x80FE0000) == "Bad_0x80FE0000"
    assert st.status_name(0x40FE0000) == "Uncertain_0x40FE0000"
    assert st.status_name(0x00FE0000) == "Good_0x00FE0000"
    assert st.classify_status(0x80FE0000) == (Quality.BAD, "Bad_0x80FE0000")


def test_reserved_severity_counts_as_bad() -> None:
    assert st.severity(0xC0000000) is Quality.BAD
    assert st.classify_status(0xC0120000)[0] is Quality.BAD


@given(hs.integers(min_value=0, max_value=0xFFFFFFFF))
def test_classification_invariants(code: int) -> None:
    quality, reason = st.classify_status(code)
    sev = st.severity(code)
    masked = code & 0xFFFF0000
    if masked in (SC.UncertainNoCommunicationLastUsableValue, SC.UncertainInitialValue):
        assert quality is Quality.BAD
    else:
        assert quality is sev
    if quality is not Quality.GOOD:
        # Never empty for non-good, and the OPC UA name is always the last ':'-part.
        assert reason
        assert reason.split(":")[-1] == st.status_name(code)


@pytest.mark.parametrize(
    ("value", "condition"),
    [
        (0, st.NORMAL),
        (1, st.FAILURE),
        (2, st.CHECK_FUNCTION),
        (3, st.OFF_SPEC),
        (4, st.MAINTENANCE_REQUIRED),
        (5, st.UNKNOWN),
        (-1, st.UNKNOWN),
        (None, st.UNKNOWN),
        (True, st.UNKNOWN),
        (2.0, st.UNKNOWN),
        ("2", st.UNKNOWN),
    ],
)
def test_health_condition(value: object, condition: st.DeviceCondition) -> None:
    assert st.health_condition(value) is condition


def test_health_to_ne107_and_quality() -> None:
    expected = {
        st.DeviceHealth.NORMAL: (st.Ne107.NORMAL, Quality.GOOD, ""),
        st.DeviceHealth.FAILURE: (st.Ne107.FAILURE, Quality.BAD, "fault"),
        st.DeviceHealth.CHECK_FUNCTION: (st.Ne107.CHECK_FUNCTION, Quality.BAD, "maintenance"),
        st.DeviceHealth.OFF_SPEC: (st.Ne107.OFF_SPEC, Quality.UNCERTAIN, "out_of_spec"),
        st.DeviceHealth.MAINTENANCE_REQUIRED: (st.Ne107.MAINTENANCE_REQUIRED, Quality.GOOD, "maintenance_required"),
    }
    for health, (category, quality, reason) in expected.items():
        assert st.NE107_OF_HEALTH[health] is category
        cond = st.health_condition(int(health))
        assert (cond.quality, cond.reason) == (quality, reason)


@pytest.mark.parametrize(
    ("value", "condition"),
    [(True, st.CALIBRATING), (False, st.NORMAL), (1, st.CALIBRATING), (0, st.NORMAL),
     (2, st.UNKNOWN), (None, st.UNKNOWN), ("yes", st.UNKNOWN)],
)
def test_calibration_condition(value: object, condition: st.DeviceCondition) -> None:
    assert st.calibration_condition(value) is condition


def test_worst_follows_ne107_priority() -> None:
    order = [st.NORMAL, st.MAINTENANCE_REQUIRED, st.OFF_SPEC, st.UNKNOWN, st.CHECK_FUNCTION, st.CALIBRATING,
             st.FAILURE]
    for lower, higher in itertools.pairwise(order):
        assert st.worst(lower, higher) is higher
        assert st.worst(higher, lower) is higher
    assert st.worst() is st.NORMAL
    assert st.worst(st.CALIBRATING, st.FAILURE).reason == "fault"  # F > C


@pytest.mark.parametrize(
    ("status", "condition", "expected"),
    [
        # normal device: the point's own status passes through unchanged
        ((Quality.GOOD, ""), st.NORMAL, (Quality.GOOD, "")),
        ((Quality.BAD, "fault:BadSensorFailure"), st.NORMAL, (Quality.BAD, "fault:BadSensorFailure")),
        # device condition more severe: it wins
        ((Quality.GOOD, ""), st.CALIBRATING, (Quality.BAD, "calibration")),
        ((Quality.GOOD, ""), st.FAILURE, (Quality.BAD, "fault")),
        ((Quality.GOOD, ""), st.CHECK_FUNCTION, (Quality.BAD, "maintenance")),
        ((Quality.GOOD, ""), st.OFF_SPEC, (Quality.UNCERTAIN, "out_of_spec")),
        ((Quality.GOOD, ""), st.UNKNOWN, (Quality.UNCERTAIN, "device_status_unknown")),
        ((Quality.UNCERTAIN, "UncertainSubstituteValue"), st.CALIBRATING, (Quality.BAD, "calibration")),
        # tie: the device explains better (OPC UA has no calibration code)
        ((Quality.BAD, "maintenance:BadOutOfService"), st.CALIBRATING, (Quality.BAD, "calibration")),
        ((Quality.GOOD, ""), st.MAINTENANCE_REQUIRED, (Quality.GOOD, "maintenance_required")),
        ((Quality.UNCERTAIN, "over_range:UncertainEngineeringUnitsExceeded"), st.OFF_SPEC,
         (Quality.UNCERTAIN, "out_of_spec")),
        # point status more severe: it keeps its own reason
        ((Quality.BAD, "fault:BadSensorFailure"), st.OFF_SPEC, (Quality.BAD, "fault:BadSensorFailure")),
        ((Quality.UNCERTAIN, "Uncertain"), st.MAINTENANCE_REQUIRED, (Quality.UNCERTAIN, "Uncertain")),
        ((Quality.BAD, "no_communication:BadNoCommunication"), st.UNKNOWN,
         (Quality.BAD, "no_communication:BadNoCommunication")),
    ],
)
def test_apply_condition(
    status: tuple[Quality, str], condition: st.DeviceCondition, expected: tuple[Quality, str]
) -> None:
    assert st.apply_condition(*status, condition) == expected
