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
    ap.add_argument("--time-scale", type=float, default=None,
                    help="run plant time N times faster (simulators and gateway alike), e.g. 120: an hour's "
                         "carbon record every 30 s")
    args = ap.parse_args(argv)
    scale = ["--time-scale", str(args.time_scale)] if args.time_scale else []
    exe = [sys.executable, "-m", "gateway"]
    with PrivateBroker() as broker, tempfile.TemporaryDirectory(prefix="carbon-demo-") as tmp:
        print(f"private mosquitto on {broker.url}; store in {tmp}/gateway.db", flush=True)
        if args.output is not None:
            args.config = with_output(args.config, Path(tmp) / "config", args.output)
            print(f"output.encoder: {args.output} (configuration copied to {args.config})", flush=True)
        if args.time_scale:
            args.config = with_plant_polling(args.config, Path(tmp) / "config-scaled", PLANT_POLL_S)
            print(f"plant time x{args.time_scale:g}: meters polled every {PLANT_POLL_S:g} plant seconds "
                  f"(configuration copied to {args.config})", flush=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        sim = subprocess.Popen([*exe, "simulate", "--config", str(args.config), *scale], env=env,
                               stdout=subprocess.PIPE, text=True)
        assert sim.stdout is not None
        for line in sim.stdout:  # start the gateway once every simulated meter listens
            print(line.rstrip(), flush=True)
            if line.startswith("simulators ready"):
                break
        gw_log = open(Path(tmp) / "gateway.log", "w")  # noqa: SIM115 - closed below
        gw = subprocess.Popen([*exe, "run", "--config", str(args.config), "--mqtt-url", broker.url,
                               "--store", str(Path(tmp) / "gateway.db"), *scale], env=env, stderr=gw_log)
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


PLANT_POLL_S = 60.0  # with an accelerated clock, a 1 s poll would be a few real milliseconds: too fast


def with_plant_polling(config: Path, target: Path, poll_s: float) -> Path:
    """A copy of the configuration whose instruments are polled every `poll_s` (plant) seconds."""
    shutil.copytree(config, target)
    settings_path = target / "gateway.yaml"
    settings = yaml.safe_load(settings_path.read_text()) or {}
    settings.setdefault("limits", {})["default_poll_interval_s"] = poll_s
    settings_path.write_text(yaml.safe_dump(settings, sort_keys=False))
    inst_dir = target / settings.get("instruments_dir", "instruments")
    for path in sorted(inst_dir.glob("*.y*ml")):
        tree = yaml.safe_load(path.read_text()) or {}
        for inst in tree.get("instruments", []):
            if "poll_interval_s" in inst:
                inst["poll_interval_s"] = poll_s
        path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return target


if __name__ == "__main__":
    raise SystemExit(main())
