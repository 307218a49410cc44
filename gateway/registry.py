"""Load and check the whole configuration: gateway.yaml, meter profiles and the instrument registry.

Every problem becomes one ConfigError line `file:line: field: message`; all of them are collected
in one pass so a technician sees every mistake at once.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

import drivers
from drivers.base import PlannedPoint, ProtocolPlugin
from gateway.calibration import due_date, window_for
from gateway.derived.config import EMPTY, DerivedPlan, plan_derived
from gateway.errors import ConfigError, ConfigErrors
from gateway.instruments import DerivedDecl, HealthRule, InstrumentSpec, PointSpec
from gateway.point_rules import compile_point_rules
from gateway.protocols import PROTOCOLS
from gateway.registry_schema import (
    CalibrationMethod,
    CalibrationResult,
    InstrumentFile,
    InstrumentModel,
    Lifecycle,
    PointBase,
    PointModel,
    ProfileModel,
)
from gateway.rules.methods import error_line as missing_data_error
from gateway.settings import CredentialsUnavailable, Limits, Settings, check_readable_file, read_secret_file
from gateway.units import IDENTITY, UnitError, check_unit, conversion
from gateway.yamlload import LineDict, ParseCache, line_of, load_yaml

_PROTOCOL_TAGS = frozenset(PROTOCOLS.tags)
PROFILES_DIR = Path(drivers.__file__).resolve().parent / "profiles"


def profile_dirs() -> list[Path]:
    """The shared profile directory and each protocol plugin's own."""
    return [PROFILES_DIR, *(p.profiles_dir for p in PROTOCOLS.plugins if p.profiles_dir is not None)]


@dataclass(frozen=True)
class Config:
    directory: Path
    settings: Settings
    instruments: tuple[InstrumentSpec, ...]
    version: str  # hash of every config byte that shapes the data; stored with each reading
    warnings: tuple[str, ...] = ()  # legal but risky settings, one `file:line: field: warning: ...` line each
    derived: DerivedPlan = EMPTY  # derived points and carbon methods, compiled (gateway/derived)

    def instrument(self, instrument_id: str) -> InstrumentSpec:
        for spec in self.instruments:
            if spec.id == instrument_id:
                return spec
        raise KeyError(instrument_id)


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validate(model: type[BaseModel], tree: Any, file: Path, errors: list[ConfigError]) -> Any:
    return _validate_at(model, tree, tree, (), file, errors)


def _validate_at(model: type[BaseModel], node: Any, tree: Any, base: tuple[int | str, ...], file: Path,
                 errors: list[ConfigError]) -> Any:
    try:
        # LineDict/LineList are a dict and a list: pydantic validates them as they are (no copy).
        return model.model_validate(node)
    except ValidationError as err:
        for e in err.errors():
            raw, msg = tuple(e["loc"]), e["msg"].removeprefix("Value error, ")
            if "missing_data" in raw:  # a point's substitution method: its union tag out, its own words in
                cut = raw.index("missing_data") + 1
                sub, msg = missing_data_error(raw[cut:], e)
                raw = raw[:cut] + sub
            loc = base + tuple(p for p in raw if not (isinstance(p, str) and p in _PROTOCOL_TAGS))
            if e["type"] == "union_tag_invalid" and "missing_data" not in raw:
                msg = f"unknown protocol; expected one of {e.get('ctx', {}).get('expected_tags', '')}"
            errors.append(ConfigError(msg, file=str(file), line=line_of(tree, loc), field=_loc_text(loc)))
        return None


def load_profiles(directory: Path | None = None) -> tuple[dict[str, ProfileModel], dict[str, Any], list[ConfigError]]:
    """All built-in profiles, their parsed trees (for line numbers) and any errors in them."""
    profiles: dict[str, ProfileModel] = {}
    trees: dict[str, Any] = {}
    errors: list[ConfigError] = []
    dirs = [directory] if directory is not None else profile_dirs()
    for path in sorted(p for d in dirs for p in d.glob("*.yaml")):
        try:
            tree = load_yaml(path)
        except ConfigError as err:
            errors.append(err)
            continue
        profile = _validate(ProfileModel, tree, path, errors)
        if profile is not None:
            if profile.profile != path.stem:
                errors.append(ConfigError(f"must equal the file name '{path.stem}'", file=str(path),
                                          line=line_of(tree, ("profile",)), field="profile"))
            profiles[profile.profile] = profile
            trees[profile.profile] = (path, tree)
    return profiles, trees, errors


_FIELDS = tuple(f for f in PointModel.model_fields if f != "name")  # what an instrument may override


def _merge_points(base: list[PointModel], overrides: list[PointModel]) -> list[tuple[PointModel, bool]]:
    """Profile points overridden field by field by instrument points of the same name.

    Returns (point, from_instrument) pairs in profile order, new instrument points appended.
    """
    merged: dict[str, tuple[PointModel, bool]] = {p.name: (p, False) for p in base}
    for ov in overrides:
        if ov.name in merged:
            old = merged[ov.name][0]
            data = {f: getattr(ov, f) if getattr(ov, f) is not None else getattr(old, f) for f in _FIELDS}
            merged[ov.name] = (PointModel(name=ov.name, **data), True)
        else:
            merged[ov.name] = (ov, True)
    return list(merged.values())


def device_points(inst: InstrumentModel, profiles: dict[str, ProfileModel]) -> list[PointModel]:
    """Every point the physical device has (profile plus overrides), ignoring only_points.

    The simulator serves these, as a real meter answers for all its registers. Derived points (with a
    formula) are the gateway's, not the device's."""
    base = profiles[inst.profile].points if inst.profile in profiles else []
    return [p for p, _ in _merge_points(base, inst.points) if p.formula is None and p.inputs is None]


def config_version(directory: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(str(f.relative_to(directory) if f.is_relative_to(directory) else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_config(directory: Path, *, today: date | None = None, check_store: bool = False) -> Config:
    """Load everything under `directory` (gateway.yaml + instruments_dir/*.yaml). Raises ConfigErrors.

    Every file is checked even when another one is broken: a mistake in gateway.yaml does not hide
    the instruments' mistakes (they are then checked against default settings), and a schema error
    in one instrument does not hide the unit errors of the others. `check_store` (validate) also
    checks that the store's directory is writable.
    """
    with few_collections():
        return _load_config(directory, today=today, check_store=check_store)


@contextlib.contextmanager
def few_collections(*, freeze: bool = False) -> Iterator[None]:
    """Fewer cyclic garbage collections while a configuration is built: it allocates hundreds of thousands
    of objects that all stay alive, and with the default thresholds the collector kept scanning them
    (~1 s of 3.5 s CPU for 2,500 meters x 20 points, cached parse). Thresholds are restored after.

    With ``freeze`` (for objects that live as long as the process: `run`'s configuration and rules stage),
    what is alive at the end is moved out of the collector's reach first (gc.freeze): else restoring the
    thresholds sets off a full collection that scans all of it (~0.7 s), and every later one again."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 100_000), max(old[1], 50), max(old[2], 100))
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        gc.set_threshold(*old)


def _load_config(directory: Path, *, today: date | None, check_store: bool) -> Config:
    errors: list[ConfigError] = []
    warnings: list[ConfigError] = []
    directory = directory.resolve()
    gw_file = directory / "gateway.yaml"
    settings: Settings | None = None
    gw_tree: Any = None
    try:
        gw_tree = load_yaml(gw_file)  # before its settings are known: always the default size limit
        settings = _validate(Settings, gw_tree, gw_file, errors)
    except ConfigError as err:
        errors.append(err)
    if settings is not None:
        errors.extend(check_mqtt_files(settings, gw_tree, gw_file, warnings))
        if check_store:
            errors.extend(check_store_path(settings.store.path, file=gw_file,
                                           line=line_of(gw_tree, ("store", "path"))))
    profiles, profile_trees, perrs = load_profiles()
    errors.extend(perrs)
    checked = settings if settings is not None else _fallback_settings(gw_tree)

    inst_dir = (directory / checked.instruments_dir).resolve()
    files = sorted(inst_dir.glob("*.yaml")) + sorted(inst_dir.glob("*.yml"))
    if not files:
        errors.append(ConfigError(f"no instrument files (*.yaml) in {inst_dir}", file=str(gw_file),
                                  line=line_of(gw_tree, ("instruments_dir",)) or 1, field="instruments_dir"))
    tz = ZoneInfo(checked.gateway.timezone)
    max_bytes = checked.limits.max_config_file_bytes
    cache = None
    if settings is not None and settings.store.config_cache:
        cache = ParseCache(Path(settings.store.path).absolute().parent / "config-cache")
    seen_ids: dict[str, str] = {}
    shared: dict[str, dict[Any, Any]] = {}  # each protocol plugin's scratch space for cross-instrument checks
    specs: list[InstrumentSpec] = []
    for path in files:
        try:
            tree = load_yaml(path, max_bytes=max_bytes, setting="limits.max_config_file_bytes in gateway.yaml",
                             cache=cache)
        except ConfigError as err:
            errors.append(err)
            continue
        if not isinstance(tree, dict):
            what = "empty" if tree is None else f"a {type(tree).__name__}"
            errors.append(ConfigError(f"the file is {what}: it must hold a mapping with an `instruments:` list",
                                      file=str(path), line=line_of(tree, ()) or 1, field="instruments"))
            continue
        items = tree.get("instruments")
        if not isinstance(items, list):
            _validate(InstrumentFile, tree, path, errors)  # reports the missing/odd `instruments` key
            continue
        for key in tree:
            if key != "instruments":  # e.g. a mistyped second `instrument:` list: never silently ignored
                errors.append(ConfigError(f"unknown key '{key}' (an instrument file holds only `instruments:`)",
                                          file=str(path), line=line_of(tree, (key,)), field=str(key)))
        for i, item in enumerate(items):
            # One instrument at a time, so a mistake in one never hides the others' problems.
            inst = _validate_at(InstrumentModel, item, tree, ("instruments", i), path, errors)
            if inst is None:
                continue
            ctx = _Ctx(path, tree, ("instruments", i), errors)
            if inst.id in seen_ids:
                ctx.error(("id",), "id", f"duplicate instrument id '{inst.id}' (first defined in {seen_ids[inst.id]})")
                continue
            seen_ids[inst.id] = f"{path.name}:{ctx.line(('id',))}"
            spec = _compile(inst, ctx, profiles, profile_trees, checked, tz, today or date.today())
            if spec is None:
                continue
            if spec.polled:
                PROTOCOLS.named(spec.protocol).check_shared(spec, shared.setdefault(spec.protocol, {}), ctx)
            specs.append(spec)
    # Derived points' units can only be checked once every instrument is known; carbon.yaml is read here.
    derived = plan_derived(directory, specs, tz, errors)
    if errors or settings is None:
        raise ConfigErrors(_located(errors or [ConfigError("cannot load settings", file=str(gw_file))]))
    if cache is not None:
        cache.prune()
    warnings.extend(_protocol_warnings(specs))
    version = config_version(directory, [gw_file, *files, *derived.files, *(t[0] for t in profile_trees.values())])
    return Config(directory=directory, settings=settings, instruments=tuple(specs), version=version,
                  warnings=tuple(w.one_line() for w in warnings), derived=derived)


def _located(errors: list[ConfigError]) -> list[ConfigError]:
    """Every line has the form file:line: field: message; an error about a whole file (unreadable, too
    large, empty, not a mapping) is placed on its line 1."""
    for e in errors:
        if e.file is not None and e.line is None:
            e.line = 1
        if not e.field:
            e.field = "file"
    return errors


def _fallback_settings(gw_tree: Any) -> Settings:
    """Settings to check the instruments against when gateway.yaml itself is broken (its errors are
    reported; these only let the instrument files be checked in the same pass)."""
    data: dict[str, Any] = {"gateway": {"id": "unchecked"}}
    if isinstance(gw_tree, dict):
        inst_dir = gw_tree.get("instruments_dir")
        if isinstance(inst_dir, str) and inst_dir:
            data["instruments_dir"] = inst_dir
        gw = gw_tree.get("gateway")
        if isinstance(gw, dict) and isinstance(gw.get("timezone"), str):
            data["gateway"]["timezone"] = gw["timezone"]
        limits = gw_tree.get("limits")
        if isinstance(limits, dict):
            data["limits"] = {k: v for k, v in limits.items() if k in Limits.model_fields}
    for drop in ("limits", "gateway"):  # a bad value there is already reported: use the defaults
        try:
            return Settings.model_validate(data)
        except ValidationError:
            data[drop] = {"id": "unchecked"} if drop == "gateway" else {}
    return Settings.model_validate({"gateway": {"id": "unchecked"}})


def _check_ledger(inst: InstrumentModel, ctx: _Ctx) -> None:
    """Issue 11 item 6: the calibration ledger against standard 10.5.4 b and e."""
    cal = inst.calibration
    if cal is None:
        return
    if cal.mandatory_verification and cal.method not in (None, CalibrationMethod.VERIFICATION):
        ctx.error(("calibration", "method"), "calibration.method",
                  f"an instrument under mandatory verification is verified by a designated agency (standard "
                  f"10.5.4 b): method must be 'verification', not '{cal.method.value}'")
    if cal.result is CalibrationResult.FAIL and inst.status is Lifecycle.IN_SERVICE:
        ctx.error(("calibration", "result"), "calibration.result",
                  "the last calibration failed and the instrument is in_service: only confirmed instruments stay "
                  "in use (standard 10.5.4 e); set status standby or retired, or record the passing calibration")


def check_mqtt_files(settings: Settings, tree: Any, file: Path, warnings: list[ConfigError]) -> list[ConfigError]:
    """What `run` would fail on when it connects: the password source, the TLS files. Also warns
    about settings that are legal but unsafe (TLS without certificate checks)."""
    errors: list[ConfigError] = []
    m = settings.mqtt

    def err(loc: tuple[str, ...], message: str, into: list[ConfigError] = errors,
            at: tuple[str, ...] | None = None) -> None:
        into.append(ConfigError(message, file=str(file), line=line_of(tree, at or loc), field=".".join(loc)))

    if m.password_file is not None:
        try:
            read_secret_file(m.password_file)
        except CredentialsUnavailable as e:  # a command run outside the service: `run` checks it when it connects
            err(("mqtt", "password_file"), f"warning: not checked: {e}", warnings)
        except ValueError as e:
            err(("mqtt", "password_file"), str(e))
    if m.password_env is not None and os.environ.get(m.password_env) is None:
        err(("mqtt", "password_env"), f"environment variable {m.password_env} is not set")
    if (m.password_file is not None or m.password_env is not None) and not m.username:
        source = "password_file" if m.password_file is not None else "password_env"
        err(("mqtt", "username"), "a password needs a username", at=("mqtt", source))
    if m.tls is not None:
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(m.tls, name)
            if path is not None:
                try:
                    check_readable_file(path)
                except CredentialsUnavailable as e:
                    err(("mqtt", "tls", name), f"warning: not checked: {e}", warnings)
                except ValueError as e:
                    err(("mqtt", "tls", name), str(e))
        if m.tls.key_file is not None and m.tls.cert_file is None:
            err(("mqtt", "tls", "key_file"), "a key_file needs its cert_file")
        if m.tls.insecure_skip_verify:
            err(("mqtt", "tls", "insecure_skip_verify"),
                "warning: the broker's certificate is not checked: anyone on the path can read and change "
                "the data (for tests only)", warnings)
    return errors


def check_store_path(path: Path, *, file: Path | None = None, line: int | None = None) -> list[ConfigError]:
    """The store can be created or opened for writing: its directory (or the nearest existing parent,
    which `run` creates it under) is a writable directory, and an existing store file is writable."""
    where = {"file": str(file) if file else "store.path", "line": line, "field": "store.path" if file else None}
    path = Path(path).absolute()
    if path.exists() and not path.is_file():
        return [ConfigError(f"{path} is not a regular file", **where)]  # type: ignore[arg-type]
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return [ConfigError(f"{path} is not writable ({_why_not_writable(path)})", **where)]  # type: ignore[arg-type]
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return [ConfigError(f"cannot create the store: {parent} is not a directory", **where)]  # type: ignore[arg-type]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [ConfigError(f"cannot write the store: directory {parent} is not writable "  # type: ignore[arg-type]
                            f"({_why_not_writable(parent)})", **where)]
    return []


def _why_not_writable(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


_RULES_MEMO: dict[tuple[Any, ...], tuple[Any, list[tuple[str, str]]]] = {}


def _point_rules(kind: Any, p: PointBase, unit: str, measuring_range: Any, poll_s: float, *, timeout_s: float,
                 change_driven: bool, tz: str = "UTC") -> tuple[Any, list[tuple[str, str]]]:
    """compile_point_rules, once per distinct point definition: a plant's meters of one model share
    their points, and PointRules is immutable (2,500 meters x 20 points compile 20 rule sets, not 50,000)."""
    key = (kind, p, unit, measuring_range, poll_s, timeout_s, change_driven, tz)
    try:
        hit = _RULES_MEMO.get(key)
    except TypeError:  # a point with an unhashable part (a simulate block): compile it on its own
        return compile_point_rules(kind, p, unit, measuring_range, poll_s, timeout_s=timeout_s,  # type: ignore[arg-type]
                                   change_driven=change_driven, tz=tz)
    if hit is None:
        if len(_RULES_MEMO) > 100_000:
            _RULES_MEMO.clear()
        hit = _RULES_MEMO[key] = compile_point_rules(kind, p, unit, measuring_range, poll_s,  # type: ignore[arg-type]
                                                     timeout_s=timeout_s, change_driven=change_driven, tz=tz)
    return hit[0], list(hit[1])


class _Ctx:
    def __init__(self, file: Path, tree: Any, base: tuple[int | str, ...], errors: list[ConfigError]) -> None:
        self.file, self.tree, self.base, self.errors = file, tree, base, errors
        node = tree
        for key in base:  # the instrument's own node: its points' lines are looked up from here
            node = node[key] if isinstance(node, LineDict | list) else None
        self._node = node if isinstance(node, LineDict) else None
        self._base_line = line_of(tree, base)

    def line(self, loc: tuple[int | str, ...]) -> int | None:
        if self._node is None:
            return line_of(self.tree, self.base + loc)
        if not loc:
            return self._base_line
        return line_of(self._node, loc) or self._base_line

    def error(self, loc: tuple[int | str, ...], field: str, message: str) -> None:
        prefix = _loc_text(self.base)
        self.errors.append(ConfigError(message, file=str(self.file), line=self.line(loc), field=f"{prefix}.{field}"))


def _compile(inst: InstrumentModel, ctx: _Ctx, profiles: dict[str, ProfileModel], profile_trees: dict[str, Any],
             settings: Settings, tz: ZoneInfo, today: date) -> InstrumentSpec | None:
    n_errors = len(ctx.errors)
    profile = None
    if inst.profile is not None:
        profile = profiles.get(inst.profile)
        if profile is None:
            known = ", ".join(sorted(profiles)) or "none"
            ctx.error(("profile",), "profile", f"unknown profile '{inst.profile}' (known: {known})")
            return None
    if inst.status is Lifecycle.RETIRED and inst.poll_interval_s is not None:
        ctx.error(("poll_interval_s",), "poll_interval_s",
                  "instrument is retired but has a poll interval: retired instruments are not polled; "
                  "remove poll_interval_s or change status")

    # Calibration record consistency.
    cal = inst.calibration
    due = None
    if cal is not None:
        computed = due_date(cal.last_date, cal.interval_months, None)
        if cal.due_date is not None and cal.last_date is not None and cal.due_date <= cal.last_date:
            ctx.error(("calibration", "due_date"), "calibration.due_date",
                      f"due date {cal.due_date} is not after last calibration {cal.last_date}")
        if cal.due_date is not None and computed is not None and cal.due_date != computed:
            ctx.error(("calibration", "due_date"), "calibration.due_date",
                      f"due date {cal.due_date} contradicts last_date + interval_months = {computed}")
        if cal.last_date is not None and cal.last_date > today:
            ctx.error(("calibration", "last_date"), "calibration.last_date",
                      f"last calibration {cal.last_date} is in the future")
        due = due_date(cal.last_date, cal.interval_months, cal.due_date)
        _check_ledger(inst, ctx)
    window = window_for(cal.last_date if cal else None, due, due_soon_days=settings.limits.due_soon_days, tz=tz)

    base_points = profile.points if profile else []
    merged = _merge_points(base_points, inst.points)
    if inst.only_points is not None:
        names = {p.name for p, _ in merged}
        for j, name in enumerate(inst.only_points):
            if name not in names:
                ctx.error(("only_points", j), f"only_points[{j}]", f"unknown point '{name}'")
        # Points the instrument itself defines are always kept; only_points selects profile points.
        keep = set(inst.only_points) | {p.name for p in inst.points}
        merged = [(p, own) for p, own in merged if p.name in keep]
    if not merged:
        ctx.error(("points",), "points", "instrument has no points (give a profile or points)")

    own_index = {p.name: j for j, p in enumerate(inst.points)}
    plugin = PROTOCOLS.of(inst.connection)
    planned: list[PlannedPoint] = []
    points: list[PointSpec] = []
    for merged_p, own in merged:
        if own:
            j = own_index[merged_p.name]
            loc: tuple[int | str, ...] = ("points", j)
            field = f"points[{j}]"
            src_file, src_line = str(ctx.file), ctx.line(loc)
            src_tree, src_loc = None, loc  # looked up through ctx (the instrument's node)
        else:
            ppath, ptree = profile_trees[profile.profile]  # type: ignore[union-attr]
            k = next(i for i, bp in enumerate(base_points) if bp.name == merged_p.name)
            loc, field = ("profile",), f"profile({inst.profile}).points[{k}]"
            src_file, src_line = str(ppath), line_of(ptree, ("points", k))
            src_tree, src_loc = ptree, ("points", k)
        p = _as_protocol_point(merged_p, plugin, loc, field, own, ctx)
        if p is None:
            continue
        if p.formula is not None or p.inputs is not None:
            spec_p = _derived_point(inst, p, loc, field, src_file, src_line, settings, ctx, src_tree, src_loc)
            if spec_p is not None:
                points.append(spec_p)
            continue
        missing = [f for f in plugin.required_point_fields if getattr(p, f) is None]
        if (p.unit or p.device_unit) is None:
            missing.append("unit")
        if missing:
            ctx.error(loc, f"{field}", f"point '{p.name}' lacks {', '.join(missing)}")
            continue
        device_unit = p.device_unit or p.unit
        unit = p.unit or p.device_unit
        try:
            conv = conversion(device_unit, unit)  # type: ignore[arg-type]
        except UnitError as err:
            sub = "unit" if own and inst.points[own_index[p.name]].unit is not None else "device_unit"
            ctx.error(loc + ((sub,) if own else ()), f"{field}.{sub}", str(err))
            continue
        # The cadence the rules expect is the one the driver really keeps for this point.
        poll_s, change_driven = plugin.cadence(p, inst, settings.limits.default_poll_interval_s)
        rules, rule_errors = _point_rules(inst.kind, p, unit, inst.measuring_range, poll_s,  # type: ignore[arg-type]
                                          timeout_s=inst.connection.timeout_s, change_driven=change_driven,
                                          tz=settings.gateway.timezone)
        for sub, message in rule_errors:
            ctx.error(loc + tuple(sub.split(".")) if own else loc, f"{field}.{sub}", message)
        if rules is None:
            continue
        try:
            wire = plugin.compile_point(p)
        except ValueError as err:
            ctx.error(loc, field, str(err))
            continue
        planned.append(PlannedPoint(point=p, wire=wire, loc=loc, field=field, source_file=src_file,
                                    source_line=src_line))
        points.append(PointSpec(name=p.name, device_unit=device_unit, unit=unit, conversion=conv,  # type: ignore[arg-type]
                                totalizer=bool(p.totalizer), description=p.description or "", expect=p.expect,
                                wire=wire, source_file=src_file, source_line=src_line,
                                simulate=dict(p.simulate) if p.simulate else None, rules=rules))

    _check_signal_points(points, planned, ctx)  # issue 10: operating / load name points of this instrument

    if inst.measuring_range is not None:
        try:
            check_unit(inst.measuring_range.unit)
        except UnitError as err:
            ctx.error(("measuring_range", "unit"), "measuring_range.unit", str(err))

    health: list[HealthRule] = []
    if profile is not None and profile.health is not None:
        names = {p.name for p in points}
        for b in profile.health.bits:
            point = b.point or profile.health.point
            if point in names:  # a status point left out by only_points simply is not evaluated
                health.append(HealthRule(point, b.bit, b.category, b.reason, b.invert))  # type: ignore[arg-type]

    if len(ctx.errors) > n_errors:
        return None
    device = plugin.build_device(inst, planned, profile, ctx)
    if device is None or len(ctx.errors) > n_errors:
        return None
    poll = inst.poll_interval_s or settings.limits.default_poll_interval_s
    return InstrumentSpec(id=inst.id, model=inst, profile=inst.profile, points=tuple(points), health=tuple(health),
                          calibration=window, poll_interval_s=poll, protocol=plugin.name, device=device,
                          source_file=str(ctx.file), point_index={p.name: p for p in points},
                          connection_line=ctx.line(("connection", "timeout_s")))


DEFAULT_DERIVED_WINDOW_S = 5.0


def _line_in(ctx: _Ctx, tree: Any, loc: tuple[int | str, ...]) -> int | None:
    """The line of `loc` in a profile's tree, or (tree None) in the instrument's file through `ctx`."""
    return ctx.line(loc) if tree is None else line_of(tree, loc)


def _derived_point(inst: InstrumentModel, p: PointBase, loc: tuple[int | str, ...], field: str, src_file: str,
                   src_line: int | None, settings: Settings, ctx: _Ctx, src_tree: Any,
                   src_loc: tuple[int | str, ...]) -> PointSpec | None:
    """A point with a formula: never read from the device (the protocol plugin does not see it). Its units
    are checked against its inputs' once every instrument is loaded (gateway.derived.config), and a mistake
    found then is reported on the line of its `formula:` or of the input concerned (`src_tree`/`src_loc`:
    where the point is written, see `_line_in`; the point's own line when the key is not there)."""
    problems = []
    if p.formula is None:
        problems.append((("formula",), "a derived point needs a formula"))
    if not p.inputs:
        problems.append((("inputs",), "a derived point needs inputs: {name: point or instrument.point}"))
    if p.unit is None:
        problems.append((("unit",), "a derived point needs the unit of its result"))
    for key in ("scale", "offset", "device_unit", "totalizer"):
        if getattr(p, key) is not None:
            problems.append(((key,), f"{key} does not apply to a derived point (its formula gives its value)"))
    for sub, message in problems:
        ctx.error(loc + sub, f"{field}.{sub[0]}", message)
    if problems:
        return None
    inputs: list[tuple[str, str, str]] = []
    input_lines: list[int | None] = []
    for name, ref in (p.inputs or {}).items():
        inst_id, _, point = ref.rpartition(".") if "." in ref else ("", "", ref)
        inputs.append((name, inst_id or inst.id, point))
        input_lines.append(_line_in(ctx, src_tree, (*src_loc, "inputs", name)) or src_line)
    formula_line = _line_in(ctx, src_tree, (*src_loc, "formula")) or src_line
    # Its cadence is its inputs' (it is computed when they arrive): the instrument's poll interval.
    poll_s = inst.poll_interval_s or settings.limits.default_poll_interval_s
    rules, rule_errors = _point_rules(inst.kind, p, p.unit, inst.measuring_range,  # type: ignore[arg-type]
                                      poll_s, timeout_s=inst.connection.timeout_s,
                                      change_driven=False)
    for sub, message in rule_errors:
        ctx.error(loc + tuple(sub.split(".")), f"{field}.{sub}", message)
    if rules is None:
        return None
    window_ms = int((p.window_s or DEFAULT_DERIVED_WINDOW_S) * 1000)
    return PointSpec(name=p.name, device_unit=p.unit, unit=p.unit, conversion=IDENTITY,  # type: ignore[arg-type]
                     totalizer=False, description=p.description or "", expect=p.expect, wire=None,
                     source_file=src_file, source_line=src_line, simulate=None, rules=rules,
                     derived=DerivedDecl(p.formula, tuple(inputs), window_ms,  # type: ignore[arg-type]
                                         formula_line=formula_line, input_lines=tuple(input_lines)))


def _as_protocol_point(p: PointBase, plugin: ProtocolPlugin, loc: tuple[int | str, ...], field: str, own: bool,
                       ctx: _Ctx) -> PointBase | None:
    """A point as written (any protocol's fields) as the instrument's protocol's point model. A field of
    another protocol is a mistake (a register address on an OPC UA instrument would silently mean nothing)."""
    try:
        hit = _AS_PROTOCOL_MEMO.get((plugin.name, p))  # identical points of identical meters: convert once
    except TypeError:
        hit = None
    if hit is not None:
        return hit
    given = p.model_dump(exclude_none=True)
    ok = True
    for name in given:
        owner = PROTOCOLS.field_owner(name)
        if owner is not None and name not in plugin.point_model.model_fields:
            ctx.error((*loc, name) if own else loc, f"{field}.{name}", f"{name} is for {owner.title} instruments only")
            ok = False
    if not ok:
        return None
    out: PointBase = plugin.point_model.model_validate(given)
    try:
        if len(_AS_PROTOCOL_MEMO) > 100_000:
            _AS_PROTOCOL_MEMO.clear()
        _AS_PROTOCOL_MEMO[(plugin.name, p)] = out
    except TypeError:
        pass
    return out


_AS_PROTOCOL_MEMO: dict[tuple[str, PointBase], PointBase] = {}


def _protocol_warnings(specs: list[InstrumentSpec]) -> list[ConfigError]:
    """Legal but risky settings across instruments, from each protocol plugin."""
    out: list[ConfigError] = []
    for plugin in PROTOCOLS.plugins:
        out.extend(plugin.warnings([s for s in specs if s.polled and s.protocol == plugin.name]))
    return out


def _check_signal_points(points: list[PointSpec], planned: list[PlannedPoint], ctx: _Ctx) -> None:
    """A point's `operating` and `load` name another point of the same instrument (issue 10 items 6, 7)."""
    names = {p.name for p in points}
    by_name = {p.name: p for p in points}
    for plan in planned:  # derived points (issue 13) have no plan and no signals
        spec = by_name.get(plan.point.name)
        rules = spec.rules if spec is not None else None
        if rules is None:
            continue
        for key, ref in (("operating", rules.operating), ("load", rules.load)):
            if ref is None or ref.point in names:
                continue
            own = isinstance(plan.loc[-1], int)
            where = (*plan.loc, key, "point") if own else plan.loc
            ctx.error(where, f"{plan.field}.{key}.point",
                      f"unknown point '{ref.point}' (points of this instrument: {', '.join(sorted(names))})")
