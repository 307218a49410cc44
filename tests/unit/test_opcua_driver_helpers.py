"""Pure parts of the OPC UA driver: backoff, schedule, timestamps, DataValue -> RawSample, error mapping."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from hypothesis import given
from hypothesis import strategies as hs

from drivers.opcua import status as st
from drivers.opcua.driver import (
    OpcUaDriver,
    backoff_delay,
    epoch_ms,
    next_slot,
    sample_from_datavalue,
    translate_error,
)
from drivers.opcua.spec import OpcUaDevice, OpcUaPoint, OpcUaSecurity
from gateway.errors import ConfigError, PermanentDriverError, TransientDriverError
from gateway.model import Quality

URL = "opc.tcp://127.0.0.1:4840/"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
T0_MS = 1_772_366_400_000
NOW_MS = 1_800_000_000_000
P = OpcUaPoint("co2", "ns=2;s=CEMS.CO2", scale=10.0, offset=1.0)


@given(
    hs.integers(min_value=0, max_value=10_000),
    hs.floats(min_value=0.01, max_value=10.0),
    hs.floats(min_value=10.0, max_value=300.0),
    hs.floats(min_value=0.0, max_value=0.999999),
)
def test_backoff_is_capped_and_jittered(attempt: int, initial: float, cap: float, jitter: float) -> None:
    delay = backoff_delay(attempt, initial, cap, jitter)
    base = min(cap, initial * 2.0**min(attempt, 60))
    assert 0.5 * base <= delay < base + 1e-9
    assert delay <= cap


def test_backoff_grows_exponentially_until_the_cap() -> None:
    assert [backoff_delay(a, 1.0, 30.0, 0.999999) for a in range(7)] == pytest.approx(
        [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0], rel=1e-5)
    assert backoff_delay(0, 1.0, 30.0, 0.0) == 0.5


def test_next_slot_keeps_the_grid_and_counts_skipped_slots() -> None:
    assert next_slot(10.0, 1.0, 10.2) == (11.0, 0)
    assert next_slot(10.0, 1.0, 11.0) == (12.0, 1)  # a slot exactly at now is already gone
    assert next_slot(10.0, 1.0, 13.5) == (14.0, 3)


def test_epoch_ms() -> None:
    assert epoch_ms(T0) == T0_MS
    assert epoch_ms(T0.replace(tzinfo=None)) == T0_MS  # naive = UTC
    assert epoch_ms(None) is None
    assert epoch_ms(datetime(1601, 1, 1, tzinfo=UTC)) is None  # OPC UA null DateTime


def dv(value: object, vtype: ua.VariantType = ua.VariantType.Double, code: int = 0,
       source: datetime | None = T0, server: datetime | None = None) -> ua.DataValue:
    variant = ua.Variant(value, vtype) if value is not None else ua.Variant()
    return ua.DataValue(Value=variant, StatusCode=ua.StatusCode(code), SourceTimestamp=source,
                        ServerTimestamp=server)


def test_good_value_is_scaled_and_uses_source_timestamp() -> None:
    s = sample_from_datavalue(P, dv(1.25), st.NORMAL, NOW_MS)
    assert (s.point, s.ts_ms, s.value, s.quality, s.reason, s.status) == ("co2", T0_MS, 13.5, Quality.GOOD, "", 0)


def test_timestamp_fallbacks() -> None:
    later = datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC)
    assert sample_from_datavalue(P, dv(1.0, source=None, server=later), st.NORMAL, NOW_MS).ts_ms == T0_MS + 1000
    assert sample_from_datavalue(P, dv(1.0, source=None), st.NORMAL, NOW_MS).ts_ms == NOW_MS


def test_bad_status_gives_none_and_keeps_the_code() -> None:
    s = sample_from_datavalue(P, dv(None, code=ua.StatusCodes.BadSensorFailure), st.NORMAL, NOW_MS)
    assert (s.value, s.quality, s.reason, s.status) == (
        None, Quality.BAD, "fault:BadSensorFailure", ua.StatusCodes.BadSensorFailure)


def test_uncertain_keeps_the_value() -> None:
    code = ua.StatusCodes.UncertainEngineeringUnitsExceeded
    s = sample_from_datavalue(P, dv(2.0, code=code), st.NORMAL, NOW_MS)
    assert (s.value, s.quality, s.reason) == (21.0, Quality.UNCERTAIN, "over_range:UncertainEngineeringUnitsExceeded")


@pytest.mark.parametrize(
    ("value", "vtype"),
    [(float("nan"), ua.VariantType.Double), (float("inf"), ua.VariantType.Double),
     ("12.0", ua.VariantType.String), (None, ua.VariantType.Null)],
)
def test_not_a_number_with_good_status_is_bad_nan(value: object, vtype: ua.VariantType) -> None:
    s = sample_from_datavalue(P, dv(value, vtype), st.NORMAL, NOW_MS)
    assert (s.value, s.quality, s.reason) == (None, Quality.BAD, "nan")


def test_booleans_and_integers_are_numbers() -> None:
    plain = OpcUaPoint("flag", "ns=2;s=CEMS.CalibrationInProgress")
    assert sample_from_datavalue(plain, dv(True, ua.VariantType.Boolean), st.NORMAL, NOW_MS).value == 1.0
    assert sample_from_datavalue(plain, dv(3, ua.VariantType.Int32), st.NORMAL, NOW_MS).value == 3.0


def test_device_condition_overrides_but_keeps_value_and_status() -> None:
    s = sample_from_datavalue(P, dv(1.0), st.CALIBRATING, NOW_MS)
    assert (s.value, s.quality, s.reason, s.status) == (11.0, Quality.BAD, "calibration", 0)


@pytest.mark.parametrize(
    ("exc", "connecting", "kind", "text"),
    [
        (ua.UaStatusCodeError(ua.StatusCodes.BadCertificateUntrusted), True, PermanentDriverError,
         "server certificate rejected (BadCertificateUntrusted)"),
        (ua.UaStatusCodeError(ua.StatusCodes.BadCertificateTimeInvalid), True, PermanentDriverError,
         "BadCertificateTimeInvalid"),
        (ServiceError(ua.StatusCodes.BadUserAccessDenied), True, PermanentDriverError, "BadUserAccessDenied"),
        (ua.UaStatusCodeError(ua.StatusCodes.BadIdentityTokenRejected), True, PermanentDriverError, "login"),
        (ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied), False, TransientDriverError, "BadUserAccess"),
        (ua.UaStatusCodeError(ua.StatusCodes.BadTooManySessions), True, TransientDriverError, "BadTooManySessions"),
        (ua.UaStatusCodeError(ua.StatusCodes.BadSessionIdInvalid), False, TransientDriverError, "BadSession"),
        (ConnectionRefusedError(111, "Connect call failed"), True, TransientDriverError, "Connect call failed"),
        (TimeoutError(), False, TransientDriverError, "timed out"),
        (EOFError(), False, TransientDriverError, "EOFError"),
        (FileNotFoundError(2, "No such file", "/x/key.pem"), True, PermanentDriverError, "/x/key.pem"),
        (ua.UaError("No matching endpoints: 3, uri"), True, PermanentDriverError, "No matching endpoints"),
        (ua.UaError("odd"), False, TransientDriverError, "odd"),
        (ValueError("bad PEM"), True, PermanentDriverError, "bad PEM"),
    ],
)
def test_translate_error(exc: BaseException, connecting: bool, kind: type, text: str) -> None:
    err = translate_error(exc, URL, connecting=connecting)
    assert type(err) is kind
    assert text in str(err)
    assert URL in str(err) or isinstance(exc, FileNotFoundError)


def test_translate_passes_driver_errors_through() -> None:
    err = TransientDriverError("x")
    assert translate_error(err, URL, connecting=True) is err


def device(**kw: object) -> OpcUaDevice:
    return OpcUaDevice(**{"instrument_id": "CEMS-01", "endpoint_url": URL, "points": (P,), **kw})  # type: ignore[arg-type]


def test_constructor_rejects_bad_node_ids() -> None:
    with pytest.raises(ConfigError) as err:
        OpcUaDriver(device(points=(OpcUaPoint("co2", "ns=x;s=1"),)))
    assert err.value.field == "points.co2.node_id"
    with pytest.raises(ConfigError) as err:
        OpcUaDriver(device(health_node_id="nonsense"))
    assert err.value.field == "health_node_id"


def test_constructor_checks_certificate_files(tmp_path: Path) -> None:
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="Sign", client_cert=str(tmp_path / "missing.der"),  # type: ignore[arg-type]
                        client_key=str(tmp_path / "k.pem"), trust_dir=str(tmp_path))
    with pytest.raises(ConfigError) as err:
        OpcUaDriver(device(security=sec))
    assert err.value.field == "security.client_cert"
    (tmp_path / "c.der").write_bytes(b"x")
    (tmp_path / "k.pem").write_bytes(b"x")
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="Sign", client_cert=str(tmp_path / "c.der"),  # type: ignore[arg-type]
                        client_key=str(tmp_path / "k.pem"), trust_dir=str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as err:
        OpcUaDriver(device(security=sec))
    assert err.value.field == "security.trust_dir"


def test_constructor_accepts_namespace_uri_ids() -> None:
    drv = OpcUaDriver(device(points=(OpcUaPoint("co2", "nsu=urn:carbon-gateway:sim:cems;s=CEMS.CO2"),)))
    assert drv.state == "starting"
