"""`carbon-gateway`: validate, run, simulate, watch, correct, store, rules evaluate.

Exit codes: 0 ok, 1 runtime failure (and `store check` found damage), 2 configuration or usage error (also a
refused correction), 3 broker refused us, 4 the store failed (cannot be opened, corrupt, or a commit failed,
e.g. disk full): nothing can be kept.
Errors are printed as one line each, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway import (
    __version__,
    cli_config,
    cli_consume,
    cli_estimate,
    cli_explain,
    cli_explain_tree,
    cli_export,
    cli_instruments,
    cli_status,
    cli_verify,
)
from gateway.clock import ScaledClock, SystemClock
from gateway.errors import ConfigError, ConfigErrors, GatewayError, PublishError, StoreError

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG, EXIT_BROKER, EXIT_STORE = 0, 1, 2, 3, 4



# Commands that live in a module of their own (`add_parser(sub)` and `run(args)`): one line each.
_COMMAND_MODULES: dict[str, Any] = {
    "verify": cli_verify,  # issue 11: the hash chain
    "export": cli_export,  # issue 12 item 5
    "config": cli_config,  # issue 11: config history
    "status": cli_status,  # issue 11: status
    "consume": cli_consume,  # issue 12: reference consumer -> PostgreSQL
    "explain": cli_explain_tree,  # issue 13: a carbon record's derivation down to raw readings
    "instruments": cli_instruments,  # issue 11 item 6: instrument ledger, calibrations due
    "estimate": cli_estimate,  # issue 10 item 9: the estimate channel
}

def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config"), help="configuration directory (default: config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carbon-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"carbon-gateway {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check the configuration (and with --live, read each meter once)")
    _config_arg(v)
    v.add_argument("--live", action="store_true", help="also read every meter once and check `expect` ranges")

    r = sub.add_parser("run", help="poll meters, store readings, forward them over MQTT")
    _config_arg(r)
    r.add_argument("--mqtt-url", help="override mqtt.url, e.g. mqtt://127.0.0.1:1883")
    r.add_argument("--store", type=Path, help="override store.path")
    r.add_argument("--duration", type=float, help="stop after this many seconds (default: run until signalled)")
    r.add_argument("--time-scale", type=float, help=argparse.SUPPRESS)  # simulations only: plant time x N
    r.add_argument("--time-origin", help=argparse.SUPPRESS)  # simulations only: ISO time the plant clock starts at

    s = sub.add_parser("simulate", help="serve simulated meters for every loopback instrument of the config")
    _config_arg(s)
    s.add_argument("--fault", action="append", default=[], metavar="ID=KNOB[:ARG]",
                   help="inject a fault: refuse, timeout, exception:CODE, frozen, nan, status:BITS (repeatable)")
    s.add_argument("--duration", type=float, help="stop after this many seconds")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--time-scale", type=float, default=1.0,
                   help="advance the simulated signals N times faster (to match `run --time-scale`: totals "
                        "then count plant hours)")

    w = sub.add_parser("watch", help="subscribe and show readings arriving per instrument (a live table)")
    w.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    w.add_argument("--prefix", default="carbon")
    w.add_argument("--duration", type=float)
    w.add_argument("--until-instruments", type=int, default=0,
                   help="exit 0 as soon as this many instruments have sent readings")
    w.add_argument("--sparkplug", action="store_true",  # issue 12.1
                   help="read Sparkplug B (spBv1.0/#) instead of the JSON topics (output.encoder: sparkplug)")

    c = sub.add_parser("correct", help="record a manual correction (a new version; the original stays)")
    _config_arg(c)
    c.add_argument("--store", type=Path, help="store path (default: store.path of the config)")
    c.add_argument("--instrument", required=True)
    c.add_argument("--point", required=True)
    c.add_argument("--at", required=True, help="source time of the corrected reading, ISO 8601 with zone")
    c.add_argument("--value", required=True, type=float, help="corrected value, in the point's reporting unit")
    c.add_argument("--reason", required=True)
    c.add_argument("--author", required=True)
    c.add_argument("--force", action="store_true",
                   help="accept a value outside the point's measuring range (recorded as forced)")

    so = sub.add_parser("store", help="store integrity: check, recover into a new store, online backup")
    osub = so.add_subparsers(dest="store_command", required=True)
    for name, text in (("check", "full integrity check (exit 0 ok, 1 damaged): one line per problem"),
                       ("recover", "copy every readable row into a new store (with a new epoch)"),
                       ("backup", "consistent copy while the gateway runs (with a new epoch)")):
        sp = osub.add_parser(name, help=text)
        where = sp.add_mutually_exclusive_group()
        where.add_argument("--config", type=Path, default=Path("config"),
                           help="configuration directory whose store.path is used (default: config)")
        where.add_argument("--store", type=Path, help="the store file (default: store.path of the config)")
        if name == "recover":
            sp.add_argument("--to", type=Path, required=True, metavar="NEW_PATH", help="the new store (must not exist)")
        if name == "backup":
            sp.add_argument("target", type=Path, metavar="PATH", help="the backup file (must not exist)")

    cli_verify.add_parser(sub)
    cli_export.add_parser(sub)  # issue 12 item 5

    sc = sub.add_parser("schema", help="print the JSON Schema of a configuration file kind")
    sc.add_argument("kind", choices=["gateway", "instruments", "profile"])

    rules = sub.add_parser("rules", help="missing-data rules tools")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    ev = rsub.add_parser("evaluate", help="evaluate substitution scenarios (JSON) and print one result per line")
    ev.add_argument("file", type=Path)
    cli_explain.add_parser(rsub)  # issue 10 item 10: rules explain RECORD

    for name, module in _COMMAND_MODULES.items():
        if name not in ("verify", "export"):  # those two are listed above, beside the store commands
            module.add_parser(sub)
    return parser


def _load(config_dir: Path, **kwargs: Any):
    from gateway.registry import few_collections, load_config

    # The configuration lives as long as the process: its objects (50,000 points at plant scale) are kept out
    # of every later cyclic collection instead of being rescanned at each (few_collections(freeze=True)).
    with few_collections(freeze=True):
        return load_config(config_dir, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except ConfigErrors as err:
        for e in err.errors:
            print(e.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    except PublishError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BROKER
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_STORE
    except ConfigError as err:
        print(err.one_line(), file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        cfg = _load(args.config, check_store=True)
        if args.live:
            from gateway.live_check import live_check

            problems = asyncio.run(live_check(cfg))
            for line in problems:
                print(line, file=sys.stderr)
            if problems:
                return EXIT_CONFIG
        for line in cfg.warnings:
            print(line, file=sys.stderr)
        n = len(cfg.instruments)
        print(f"{args.config}: ok ({n} instruments, config version {cfg.version})")
        return EXIT_OK
    if args.command == "run":
        from gateway.reload import hold_sighup

        hold_sighup()  # a SIGHUP (systemctl reload) while starting is remembered, never the default: exit
        from gateway.app import Gateway

        cfg = _load(args.config)
        cfg = _override(cfg, mqtt_url=args.mqtt_url, store=args.store)
        from gateway.settings import check_credentials

        # issue 11: ${CREDENTIALS_DIRECTORY} files need the service's credentials
        check_credentials(cfg.settings, cfg.instruments)
        from gateway.registry import check_store_path

        for problem in check_store_path(cfg.settings.store.path):  # one line and exit 1, not a traceback
            raise StoreError(problem.message)
        clock = SystemClock()
        if args.time_scale:
            from gateway.corrections import parse_time

            origin = parse_time(args.time_origin) if args.time_origin else None
            clock = ScaledClock(args.time_scale, origin)
        import functools

        loader = functools.partial(_reload_config, args.config, mqtt_url=args.mqtt_url, store=args.store)
        asyncio.run(Gateway(cfg, clock=clock, loader=loader).run(duration_s=args.duration))
        return EXIT_OK
    if args.command == "correct":
        from gateway.corrections import submit

        cfg = _load(args.config)
        path = submit(cfg, args.store or cfg.settings.store.path, instrument=args.instrument, point=args.point,
                      at=args.at, value=args.value, reason=args.reason, author=args.author, force=args.force)
        print(f"correction queued: {path} (the running gateway stores and publishes it)")
        return EXIT_OK
    if args.command == "store":
        return _store_command(args)
    module = _COMMAND_MODULES.get(args.command)
    if module is not None:
        return int(module.run(args))
    if args.command == "simulate":
        from simulators.runner import parse_faults, run_simulators

        cfg = _load(args.config)
        faults = parse_faults(args.fault)
        return asyncio.run(run_simulators(cfg, faults=faults, duration_s=args.duration, seed=args.seed,
                                          time_scale=args.time_scale))
    if args.command == "watch":
        from gateway.watch import watch

        _check_url_arg(args.mqtt_url)
        from gateway.settings import check_topic_prefix

        try:
            check_topic_prefix(args.prefix)
        except ValueError as err:
            raise ConfigError(str(err), file="--prefix") from None
        if args.sparkplug:
            from gateway.watch_sparkplug import watch_sparkplug

            return watch_sparkplug(args.mqtt_url, duration_s=args.duration, until_instruments=args.until_instruments)
        return watch(args.mqtt_url, args.prefix, duration_s=args.duration, until_instruments=args.until_instruments)
    if args.command == "schema":
        from gateway.config_schema import config_schemas, render

        sys.stdout.write(render(config_schemas()[args.kind]))
        return EXIT_OK
    if args.command == "rules" and args.rules_command == "explain":
        return cli_explain.run(args)
    if args.command == "rules" and args.rules_command == "evaluate":
        from gateway.audit import main as evaluate_main

        return evaluate_main(str(args.file), sys.stdout)
    raise AssertionError(args.command)


def _check_url_arg(url: str) -> None:
    from gateway.settings import check_mqtt_url

    try:
        check_mqtt_url(url)
    except ValueError as err:
        raise ConfigError(str(err), file="--mqtt-url") from None


def _store_command(args: argparse.Namespace) -> int:
    from gateway import store_check

    path: Path = args.store if args.store is not None else _load(args.config).settings.store.path
    if args.store_command == "check":
        problems = store_check.check(path)
        for line in problems:
            print(f"{path}: {line}", file=sys.stderr)
        if problems:
            print(f"{path}: damaged ({len(problems)} problems); `carbon-gateway store recover --store {path} "
                  f"--to NEW.db` copies every readable row into a new store", file=sys.stderr)
            return EXIT_RUNTIME
        print(f"{path}: ok")
        return EXIT_OK
    if args.store_command == "recover":
        report = store_check.recover(path, args.to)
        for line in report.lines():
            print(f"{args.to}: {line}")
        print(f"{args.to}: recovered from {path}; stop the gateway and move it to {path} to use it "
              f"(subscribers see the new epoch)")
        return EXIT_OK
    if args.store_command == "backup":
        epoch = store_check.backup(path, args.target)
        print(f"{args.target}: backup of {path}, epoch {epoch} (a restored backup is a new store to subscribers)")
        return EXIT_OK
    raise AssertionError(args.store_command)


def _reload_config(config_dir: Path, *, mqtt_url: str | None, store: Path | None):
    """The configuration again, for a reload on SIGHUP (gateway/reload.py), with `run`'s overrides."""
    from gateway.registry import load_config

    return _override(load_config(config_dir), mqtt_url=mqtt_url, store=store)


def _override(cfg, *, mqtt_url: str | None, store: Path | None):
    import dataclasses

    settings = cfg.settings
    if mqtt_url is not None:
        _check_url_arg(mqtt_url)
        mqtt = settings.mqtt.model_copy(update={"url": mqtt_url})
        settings = settings.model_copy(update={"mqtt": mqtt})
    if store is not None:
        settings = settings.model_copy(update={"store": settings.store.model_copy(update={"path": store})})
    return dataclasses.replace(cfg, settings=settings)
