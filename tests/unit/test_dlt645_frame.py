"""DL/T 645-2007 codec: frames, BCD value formats, error words; malformed input only ever raises typed errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.dlt645.di import (
    DATA_ITEMS,
    BcdError,
    DataFormat,
    data_item,
    decode_value,
    di_bytes,
    encode_value,
    parse_di,
)
from drivers.dlt645.frame import (
    PREAMBLE,
    WILDCARD,
    AbnormalAnswer,
    ChecksumError,
    Frame,
    FrameError,
    GarbledFrame,
    TruncatedFrame,
    UnexpectedAnswer,
    decode_frame,
    encode_frame,
    error_reason,
    extract,
    format_address,
    parse_address,
    read_address_answer,
    read_address_request,
    read_answer_value,
    read_request,
)
from gateway.errors import DecodeError

FORMATS = sorted({i.fmt for i in DATA_ITEMS.values()}, key=lambda f: f.pattern + str(f.signed))
addresses = st.binary(min_size=6, max_size=6)
controls = st.integers(0, 255)
payloads = st.binary(max_size=64)


def test_known_request_bytes() -> None:
    # Read phase A voltage from meter 000012345678 (the textbook example frame).
    assert read_request(parse_address("000012345678"), 0x02010100).hex(" ") == \
        "fe fe fe fe 68 78 56 34 12 00 00 68 11 04 33 34 34 35 c9 16"
    # Read address on the wildcard address: 68 AA*6 68 13 00 DF 16.
    assert read_address_request() == PREAMBLE + bytes.fromhex("68aaaaaaaaaaaa681300df16")


def test_address_text_round_trip() -> None:
    a = parse_address("12345678")
    assert a == bytes.fromhex("785634120000")
    assert format_address(a) == "000012345678"
    for bad in ("", "1234567890123", "12a4", " ", "\uff11\uff12"):
        with pytest.raises(ValueError, match="address"):
            parse_address(bad)


def test_di_parsing_and_wire_order() -> None:
    assert parse_di("02010100") == parse_di("0x02010100") == parse_di("02 01 01 00") == 0x02010100
    assert di_bytes(0x02800002) == bytes([0x02, 0x00, 0x80, 0x02])  # DI0 first
    for bad in ("0201010", "zz010100", "020101000"):
        with pytest.raises(ValueError, match="data identifier"):
            parse_di(bad)
    with pytest.raises(ValueError, match="not in the DL/T 645 table"):
        data_item(0x12345678)


@pytest.mark.parametrize(("di", "unit", "pattern", "signed"), [
    (0x00000000, "kWh", "XXXXXX.XX", False),
    (0x00010000, "kWh", "XXXXXX.XX", False),
    (0x00020000, "kWh", "XXXXXX.XX", False),
    (0x02010100, "V", "XXX.X", False),
    (0x02010300, "V", "XXX.X", False),
    (0x02020100, "A", "XXX.XXX", True),
    (0x02030000, "kW", "XX.XXXX", True),
    (0x02060000, "1", "X.XXX", True),
    (0x02800002, "Hz", "XX.XX", False),
])
def test_di_table(di: int, unit: str, pattern: str, signed: bool) -> None:
    item = data_item(di)
    assert (item.unit, item.fmt.pattern, item.fmt.signed) == (unit, pattern, signed)
    assert item.fmt.nbytes == sum(c == "X" for c in pattern) // 2


def test_signed_values_use_the_top_bit() -> None:
    current = data_item(0x02020100).fmt
    assert encode_value(current, -1.234) == bytes([0x34, 0x12, 0x80])
    assert decode_value(current, bytes([0x34, 0x12, 0x80])) == -1.234
    assert decode_value(current, bytes([0x00, 0x00, 0x80])) == 0.0  # "negative zero" is zero
    power = data_item(0x02030000).fmt
    assert decode_value(power, encode_value(power, 79.9999)) == 79.9999
    with pytest.raises(ValueError, match="does not fit"):
        encode_value(power, 80.0)
    with pytest.raises(ValueError, match="unsigned"):
        encode_value(data_item(0x02010100).fmt, -1.0)


@st.composite
def format_and_value(draw: st.DrawFn) -> tuple[DataFormat, int]:
    fmt = draw(st.sampled_from(FORMATS))
    raw = draw(st.integers(-fmt.max_raw if fmt.signed else 0, fmt.max_raw))
    return fmt, raw


@given(format_and_value())
def test_value_round_trip_every_format(case: tuple[DataFormat, int]) -> None:
    fmt, raw = case
    value = raw / 10**fmt.decimals
    data = encode_value(fmt, value)
    assert len(data) == fmt.nbytes
    assert decode_value(fmt, data) == value


@given(st.sampled_from(FORMATS), st.binary(max_size=6))
def test_any_value_bytes_decode_or_raise_bcd_error(fmt: DataFormat, data: bytes) -> None:
    try:
        v = decode_value(fmt, data)
    except BcdError:
        return
    assert len(data) == fmt.nbytes
    assert abs(v) <= fmt.max_raw / 10**fmt.decimals


@given(addresses, controls, payloads, st.booleans())
def test_frame_round_trip(address: bytes, control: int, data: bytes, preamble: bool) -> None:
    raw = encode_frame(address, control, data, preamble=preamble)
    assert decode_frame(raw) == Frame(address, control, data)
    # Arriving in pieces: incomplete until the last byte, then the frame.
    for cut in range(len(raw)):
        assert extract(raw[:cut]) == (None, 0)
    assert extract(raw + b"\x68")[1] == len(raw)


@given(addresses, controls, payloads, st.data())
def test_any_corrupted_byte_is_a_typed_error(address: bytes, control: int, data: bytes, draw: st.DataObject) -> None:
    raw = bytearray(encode_frame(address, control, data, preamble=False))
    i = draw.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= draw.draw(st.integers(1, 255))
    try:
        frame = decode_frame(raw)
    except FrameError:
        return
    # Changing one byte may still leave a valid frame only if it changed L and the frame then
    # happens to be consistent; never silently the original contents.
    assert frame != Frame(address, control, data)


def test_checksum_truncation_and_garbage_errors() -> None:
    raw = encode_frame(parse_address("1"), 0x91, di_bytes(0x02010100) + b"\x00\x23")
    bad_cs = raw[:-2] + bytes([(raw[-2] + 1) & 0xFF, raw[-1]])
    with pytest.raises(ChecksumError):
        decode_frame(bad_cs)
    with pytest.raises(TruncatedFrame):
        decode_frame(raw[:-1])
    with pytest.raises(GarbledFrame):
        decode_frame(b"\x00" + raw)
    with pytest.raises(GarbledFrame):
        decode_frame(raw[:-1] + b"\x17")  # wrong end byte
    with pytest.raises(GarbledFrame):
        decode_frame(raw + b"\x00")  # trailing bytes
    with pytest.raises(GarbledFrame):
        extract(PREAMBLE + bytes.fromhex("68 01 00 00 00 00 00 69"))  # second start byte wrong


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_frame_errors(raw: bytes) -> None:
    try:
        frame, used = extract(raw)
    except FrameError:
        return
    assert (frame is None and used == 0) or (frame is not None and 12 <= used <= len(raw))
    try:
        decode_frame(raw)
    except FrameError:
        pass


@given(st.binary(max_size=40), st.integers(0, 0xFFFFFFFF), st.integers(0, 255))
def test_answer_parsing_only_raises_decode_errors(data: bytes, di: int, control: int) -> None:
    frame = Frame(parse_address("1"), control, data)
    try:
        value = read_answer_value(frame, di, 2)
    except DecodeError:
        return
    assert len(value) == 2


def test_answers() -> None:
    a = parse_address("000012345678")
    item = data_item(0x02010100)
    normal = decode_frame(encode_frame(a, 0x91, di_bytes(0x02010100) + encode_value(item.fmt, 231.4)))
    assert decode_value(item.fmt, read_answer_value(normal, 0x02010100, 2)) == 231.4
    more = decode_frame(encode_frame(a, 0xB1, di_bytes(0x02010100) + encode_value(item.fmt, 231.4)))
    assert read_answer_value(more, 0x02010100, 2) == encode_value(item.fmt, 231.4)
    with pytest.raises(UnexpectedAnswer, match="02010200"):
        read_answer_value(normal, 0x02010200, 2)
    with pytest.raises(UnexpectedAnswer, match="value bytes"):
        read_answer_value(normal, 0x02010100, 3)
    abnormal = decode_frame(encode_frame(a, 0xD1, b"\x02"))
    with pytest.raises(AbnormalAnswer) as info:
        read_answer_value(abnormal, 0x02010100, 2)
    assert info.value.reason == "dlt645_no_data"
    assert "no requested data" in str(info.value)
    assert read_address_answer(decode_frame(encode_frame(a, 0x93, a))) == a
    with pytest.raises(UnexpectedAnswer):
        read_address_answer(normal)
    assert decode_frame(read_address_request()).address == WILDCARD


@pytest.mark.parametrize(("err", "reason"), [
    (0x01, "dlt645_other_error"), (0x02, "dlt645_no_data"), (0x04, "dlt645_unauthorised"),
    (0x08, "dlt645_baud_rate"), (0x10, "dlt645_time_zones"), (0x20, "dlt645_day_periods"),
    (0x40, "dlt645_tariffs"), (0x03, "dlt645_no_data"), (0x80, "dlt645_error"), (0x00, "dlt645_error"),
])
def test_error_word_reasons(err: int, reason: str) -> None:
    assert error_reason(err) == reason
