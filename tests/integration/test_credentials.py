"""Secrets through systemd's LoadCredential= (issue 11 item 4): `${CREDENTIALS_DIRECTORY}/NAME` in gateway.yaml.

systemd gives the service a directory holding a copy of each credential and names it in
$CREDENTIALS_DIRECTORY; the test does the same for a real `carbon-gateway run` against a private
Mosquitto that requires the password. Outside the service (a technician's `validate` or report by hand) the
file cannot be checked: a warning, not an error; `run` without credentials is a configuration error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import CredentialsUnavailable, credential_path
from simulators.broker import PrivateBroker
from tests.helpers import Recorder, three_meters, write_config

PW_LINE = 'topic_prefix: carbon, username: gateway, password_file: "${CREDENTIALS_DIRECTORY}/mqtt-password",'


def gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--log-level", "WARNING", *args], capture_output=True,
                          text=True, timeout=90, env=env)


def config_with_credential(tmp_path: Path, url: str, ports: tuple[int, int, int]) -> Path:
    cfg = write_config(tmp_path / "cfg", three_meters(ports), url=url, store=tmp_path / "gw.db")
    text = (cfg / "gateway.yaml").read_text().replace("topic_prefix: carbon,", PW_LINE)
    (cfg / "gateway.yaml").write_text(text)
    return cfg


def test_credential_path_expands_only_the_systemd_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/carbon-gateway.service")
    assert credential_path("${CREDENTIALS_DIRECTORY}/mqtt-password") == \
        Path("/run/credentials/carbon-gateway.service/mqtt-password")
    assert credential_path("$CREDENTIALS_DIRECTORY/key") == Path("/run/credentials/carbon-gateway.service/key")
    assert credential_path("/etc/carbon-gateway/pw") == Path("/etc/carbon-gateway/pw")
    for bad in ("${CREDENTIALS_DIRECTORY}/", "${CREDENTIALS_DIRECTORY}/../shadow", "${CREDENTIALS_DIRECTORY}/a/b"):
        with pytest.raises(ValueError, match="one file name"):
            credential_path(bad)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(CredentialsUnavailable, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        credential_path("${CREDENTIALS_DIRECTORY}/mqtt-password")


def test_run_reads_the_password_from_the_credentials_directory(tmp_path: Path, ports: tuple[int, int, int]) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "mqtt-password").write_text("right-secret\n")
    base = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    with PrivateBroker(users={"gateway": "right-secret"}) as broker:
        cfg = config_with_credential(tmp_path, broker.url, ports)
        rec = Recorder("127.0.0.1", broker.port, topic="carbon/+/status")
        rec.client.username_pw_set("gateway", "right-secret")
        rec.start()
        try:
            # Outside the service: validate warns (it cannot check), run refuses (exit 2, one line).
            out = gateway("validate", "--config", str(cfg), env=base)
            assert out.returncode == 0, out.stderr
            assert "mqtt.password_file: warning: not checked:" in out.stderr
            out = gateway("run", "--config", str(cfg), "--duration", "1", env=base)
            assert out.returncode == 2
            assert out.stderr.strip().endswith("$CREDENTIALS_DIRECTORY is not set (systemd sets it for a service "
                                               "with LoadCredential=)"), out.stderr
            # As systemd starts it: the broker accepts the password read from the credential.
            env = {**base, "CREDENTIALS_DIRECTORY": str(creds)}
            out = gateway("validate", "--config", str(cfg), env=env)
            assert out.returncode == 0
            assert "warning" not in out.stderr
            out = gateway("run", "--config", str(cfg), "--duration", "3", env=env)
            assert out.returncode == 0, out.stderr
            assert rec.wait_for(lambda: any(b.get("state") == "online" for b in rec.by_topic_suffix("/status")), 10)
            assert "right-secret" not in out.stderr
        finally:
            rec.stop()


OPCUA = """\
instruments:
  - id: CEMS-UA
    name: stack CEMS over OPC UA
    kind: gas_analyzer
    connection:
      protocol: opcua
      endpoint: opc.tcp://127.0.0.1:14840/
      security: {username: gateway, password_file: "${CREDENTIALS_DIRECTORY}/opcua-password"}
    points:
      - {name: co2, node_id: "ns=2;s=CEMS.CO2", unit: "%vol", mode: poll}
"""


def test_opcua_password_credential_by_hand_and_under_the_service(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg", OPCUA, store=tmp_path / "gw.db")
    base = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    # By hand (no credentials): the technician's commands work, run refuses naming the instrument's field.
    out = gateway("instruments", "--config", str(cfg), env=base)
    assert out.returncode == 0, out.stderr
    out = gateway("run", "--config", str(cfg), "--duration", "1", env=base)
    assert out.returncode == 2
    assert "instrument CEMS-UA: connection.security.password_file: " in out.stderr
    assert "$CREDENTIALS_DIRECTORY is not set" in out.stderr
    # Under the service: the credential is read (a missing one is a located error, an empty one too).
    creds = tmp_path / "credentials"
    creds.mkdir()
    env = {**base, "CREDENTIALS_DIRECTORY": str(creds)}
    out = gateway("validate", "--config", str(cfg), env=env)
    assert out.returncode == 2
    assert "connection.security.password_file: cannot read" in out.stderr
    (creds / "opcua-password").write_text("s3cret\n")
    out = gateway("validate", "--config", str(cfg), env=env)
    assert out.returncode == 0, out.stderr
