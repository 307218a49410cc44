"""OPC UA spec dataclasses: defaults, string coercion from YAML, and every ConfigError they raise."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.opcua.spec import OpcUaDevice, OpcUaPoint, OpcUaSecurity, PointMode, SecurityMode, SecurityPolicy
from gateway.errors import ConfigError

URL = "opc.tcp://127.0.0.1:4840/"


def point(**kw: Any) -> OpcUaPoint:
    return OpcUaPoint(**{"name": "co2", "node_id": "ns=2;s=CEMS.CO2", **kw})


def device(**kw: Any) -> OpcUaDevice:
    return OpcUaDevice(**{"instrument_id": "CEMS-01", "endpoint_url": URL, "points": (point(),), **kw})


def test_defaults_and_coercion_from_plain_strings() -> None:
    d = device(points=[point(), point(name="t", node_id="ns=2;s=CEMS.Temperature", mode="poll")])
    assert isinstance(d.points, tuple)
    assert d.points[1].mode is PointMode.POLL
    assert d.security.policy is SecurityPolicy.NONE
    assert d.watchdog_intervals == 3
    assert [p.name for p in d.subscribed_points] == ["co2"]
    assert [p.name for p in d.polled_points] == ["t"]
    sec = OpcUaSecurity(policy="Basic256Sha256", mode="SignAndEncrypt", client_cert="c.der", client_key="k.pem",
                        trusted_certs=["s.der"])  # type: ignore[arg-type]
    assert sec.mode is SecurityMode.SIGN_AND_ENCRYPT
    assert sec.trusted_certs == ("s.der",)
    assert sec.secured
    assert "password" not in repr(OpcUaSecurity(username="u", password="secret"))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"policy": "Basic128"}, "policy"),
        ({"mode": "Encrypt"}, "mode"),
        ({"policy": "Basic256Sha256"}, "security.mode"),
        ({"mode": "Sign"}, "security.mode"),
        ({"policy": "Basic256Sha256", "mode": "Sign", "client_key": "k", "trust_dir": "t"}, "security.client_cert"),
        ({"policy": "Basic256Sha256", "mode": "Sign", "client_cert": "c", "trust_dir": "t"}, "security.client_key"),
        ({"policy": "Basic256Sha256", "mode": "Sign", "client_cert": "c", "client_key": "k"}, "security.trust_dir"),
        ({"password": "x"}, "security.username"),
    ],
)
def test_security_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        OpcUaSecurity(**kwargs)
    assert err.value.field == field


def test_explicitly_unchecked_server_certificate_is_allowed() -> None:
    sec = OpcUaSecurity(policy=SecurityPolicy.BASIC256SHA256, mode=SecurityMode.SIGN, client_cert="c",
                        client_key="k", trust_server_certificate_without_check=True)
    assert sec.trust_dir is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": ""}, "name"),
        ({"node_id": ""}, "points.co2.node_id"),
        ({"mode": "push"}, "mode"),
        ({"sampling_interval_ms": -1.0}, "points.co2.sampling_interval_ms"),
        ({"queue_size": 0}, "points.co2.queue_size"),
        ({"deadband_abs": -0.1}, "points.co2.deadband"),
        ({"scale": float("nan")}, "points.co2.scale"),
        ({"mode": "poll", "deadband_abs": 0.5}, "points.co2.mode"),
        ({"mode": "poll", "queue_size": 5}, "points.co2.mode"),
    ],
)
def test_point_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        point(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"instrument_id": ""}, "id"),
        ({"endpoint_url": "http://x"}, "endpoint"),
        ({"points": ()}, "points"),
        ({"points": (point(), point())}, "points"),
        ({"publishing_interval_ms": 0}, "publishing_interval_ms"),
        ({"poll_interval_s": -1}, "poll_interval_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"reconnect_initial_s": 0}, "reconnect_initial_s"),
        ({"reconnect_initial_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_max_s"),
        ({"watchdog_intervals": 1}, "watchdog_intervals"),
    ],
)
def test_device_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        device(**kwargs)
    assert err.value.field == field
