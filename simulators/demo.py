"""`make demo`: simulators + a private Mosquitto + the gateway + a live subscriber table.

Everything runs on loopback and stops on Ctrl-C or after --duration seconds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from simulators.broker import PrivateBroker


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.demo")
    ap.add_argument("--config", type=Path, default=Path("config"))
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--output", choices=["json", "json_compact", "sparkplug"], default=None,
                    help="run the gateway with this output.encoder (sparkplug: the table decodes Sparkplug B)")
    args = ap.parse_args(argv)
    exe = [sys.executable, "-m", "gateway"]
    with PrivateBroker() as broker, tempfile.TemporaryDirectory(prefix="carbon-demo-") as tmp:
        print(f"private mosquitto on {broker.url}; store in {tmp}/gateway.db", flush=True)
        if args.output is not None:
            args.config = with_output(args.config, Path(tmp) / "config", args.output)
            print(f"output.encoder: {args.output} (configuration copied to {args.config})", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        sim = subprocess.Popen([*exe, "simulate", "--config", str(args.config)], env=env, stdout=subprocess.PIPE,
                               text=True)
        assert sim.stdout is not None
        for line in sim.stdout:  # start the gateway once every simulated meter listens
            print(line.rstrip(), flush=True)
            if line.startswith("simulators ready"):
                break
        gw_log = open(Path(tmp) / "gateway.log", "w")  # noqa: SIM115 - closed below
        gw = subprocess.Popen([*exe, "run", "--config", str(args.config), "--mqtt-url", broker.url,
                               "--store", str(Path(tmp) / "gateway.db")], env=env, stderr=gw_log)
        watch_cmd = [*exe, "watch", "--mqtt-url", broker.url, *(["--sparkplug"] if args.output == "sparkplug" else [])]
        if args.duration:
            watch_cmd += ["--duration", str(args.duration)]
        rc = 0
        try:
            rc = subprocess.call(watch_cmd, env=env)
        except KeyboardInterrupt:
            pass
        finally:
            for p in (gw, sim):
                p.send_signal(signal.SIGINT)
            for p in (gw, sim):
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            gw_log.close()
            log_text = (Path(tmp) / "gateway.log").read_text()
            errors = [line for line in log_text.splitlines() if " ERROR " in line]
            if errors:
                print("gateway errors during the demo:\n  " + "\n  ".join(errors[-10:]))
        return rc


def with_output(config: Path, target: Path, encoder: str) -> Path:
    """A copy of the configuration directory whose gateway.yaml selects `encoder` (the original is untouched)."""
    shutil.copytree(config, target)
    path = target / "gateway.yaml"
    settings = yaml.safe_load(path.read_text()) or {}
    settings.setdefault("output", {})["encoder"] = encoder
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return target


if __name__ == "__main__":
    raise SystemExit(main())
