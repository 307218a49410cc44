"""Read-only access to a store for the reporting commands (`config history`, `status`): SQLite WAL readers,
so they work while the gateway writes (they never take the store's lock file and never write)."""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from gateway.errors import StoreError


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at `path`; StoreError (one line) when there is none."""
    if not path.is_file():
        raise StoreError(f"{path}: no store here (the gateway creates it at its first start)")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
    except sqlite3.Error as err:
        raise StoreError(f"{path}: cannot read the store: {err}") from None
    return db


def add_store_args(p: argparse.ArgumentParser) -> None:
    """--config DIR | --store PATH, as the `store` commands take them."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, default=Path("config"),
                       help="configuration directory whose store.path is used (default: config)")
    where.add_argument("--store", type=Path, help="the store file (default: store.path of the config)")


def store_path(args: argparse.Namespace) -> Path:
    if getattr(args, "store", None) is not None:
        return Path(args.store)
    from gateway.cli import _load

    return Path(_load(args.config).settings.store.path)
