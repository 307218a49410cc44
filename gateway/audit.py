"""The auditor tool behind ``carbon-gateway rules evaluate FILE``.

It lives outside ``gateway.rules`` because it reads files and writes to streams; the rules it replays are
the pure functions of that package.

Reads one scenario, or a list of scenarios, in the JSON format of missing_data_vectors.json and prints one
JSON object per scenario per line (format in docs/rules.md). Expected values in the file (``expected``,
``tolerance`` ...) are ignored: the tool computes, the auditor compares. A scenario that cannot be
evaluated is answered with ``{"name", "error"}`` in its place and one line ``FILE: message`` on stderr;
every other scenario is still evaluated and printed, and the exit code is 2 (issue 10 item 4). A file
that cannot be read or parsed at all exits 2 with one line and prints nothing.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from gateway.rules.context import GapInputs
from gateway.rules.errors import PolicyConfigError, RuleInputError
from gateway.rules.exact import round_half_up, to_fraction
from gateway.rules.hour_validity import MRR_MIN_FRACTION, HourValidity, fraction_rule, quadrant_rule
from gateway.rules.hours import HourValue
from gateway.rules.policy_config import SELECTORS, Direction, is_info_key, parse_policy_config
from gateway.rules.selectors import part75_routine, part75_tier
from gateway.rules.substitution import GapSubstitution, provisional_then_final, substitute_gap

HOUR_VALIDITY = "hour_validity"
TIER_SELECT = "part75_tier_select"
POLICIES = (*SELECTORS, HOUR_VALIDITY, TIER_SELECT)

# Scenario params that describe the run, not the policy (they are traced, not hashed).
_INPUT_KEYS = frozenset({"gap_open", "load_bin_by_hour", "qa_hours_since_certification",
                         "clock_hours_since_certification", "window_end_hour", "reference_period_closed",
                         "as_of_hour"})


class ScenarioError(ValueError):
    """Bad scenario input; the message is one line."""


def main(path: str, out: TextIO, err: TextIO | None = None) -> int:
    """Evaluate FILE; write one JSON line per scenario to ``out``. Returns the exit code: 0, or 2 when the file
    or any scenario could not be evaluated (the others are printed all the same)."""
    err = sys.stderr if err is None else err
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}\n")
        return 2
    try:
        results = evaluate_text(text)
    except (ScenarioError, RuleInputError, PolicyConfigError) as exc:
        err.write(f"{path}: {_one_line(str(exc))}\n")
        return 2
    failed = 0
    for result in results:
        out.write(_json_line(result) + "\n")
        if "error" in result:
            failed += 1
            err.write(f"{path}: {result['error']}\n")
    return 2 if failed else 0


# Characters str.splitlines() (and many JSON-lines readers) take as line breaks; inside a JSON string they may be
# written escaped, so one answer is always exactly one line.
_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def _json_line(result: Mapping[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, allow_nan=False).translate(_LINE_BREAKS)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def evaluate_text(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"invalid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ScenarioError("invalid JSON: nested too deeply") from None
    scenarios = data if isinstance(data, list) else [data]
    if not scenarios:
        raise ScenarioError("no scenario in the file")
    return [_evaluate_or_error(s, i) for i, s in enumerate(scenarios)]


def _evaluate_or_error(scenario: Any, index: int) -> dict[str, Any]:
    """One scenario's answer, or ``{"name", "error"}`` for a scenario that cannot be evaluated."""
    try:
        return evaluate_scenario(scenario, index=index)
    except (ScenarioError, RuleInputError, PolicyConfigError) as exc:
        name = scenario.get("name") if isinstance(scenario, Mapping) else None
        return {"name": name if isinstance(name, str) else f"#{index + 1}", "error": _one_line(str(exc))}


def _reject_constant(name: str) -> float:
    raise ScenarioError(f"invalid JSON: {name} is not a finite number")


def evaluate_scenario(scenario: Any, *, index: int = 0) -> dict[str, Any]:
    """One scenario's answer. Raises ScenarioError (message names the scenario) on bad input."""
    if not isinstance(scenario, Mapping):
        raise ScenarioError(f"scenario #{index + 1}: expected an object, got {type(scenario).__name__}")
    name = scenario.get("name", f"#{index + 1}")
    if not isinstance(name, str):
        raise ScenarioError(f"scenario #{index + 1}: name must be a string")
    try:
        policy = scenario.get("policy")
        if policy not in POLICIES:
            raise ScenarioError(f"policy: expected one of {', '.join(POLICIES)}, got {policy!r}")
        params = scenario.get("params", {})
        if not isinstance(params, Mapping):
            raise ScenarioError("params: expected an object")
        if policy == HOUR_VALIDITY:
            return {"name": name, "policy": policy, "cases": _hour_validity(params, _cases(scenario))}
        if policy == TIER_SELECT:
            return {"name": name, "policy": policy, "cases": _tier_select(params, _cases(scenario))}
        return _substitution(name, policy, params, scenario)
    except (ScenarioError, RuleInputError, PolicyConfigError) as exc:
        raise ScenarioError(f"scenario {name!r}: {exc}") from None


def _cases(scenario: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    cases = scenario.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ScenarioError("cases: expected a non-empty list")
    for i, case in enumerate(cases):
        if not isinstance(case, Mapping):
            raise ScenarioError(f"cases[{i}]: expected an object")
    return cases


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScenarioError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _int(value: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ScenarioError(f"{where}: expected an integer{bound}, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"{where}: expected true or false, got {value!r}")
    return value


def _optional_number(value: Any, where: str) -> float | None:
    return None if value is None else _number(value, where)


# --- hour validity ---------------------------------------------------------------------------------------

def _hour_validity(params: Mapping[str, Any], cases: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    for key in params:
        if key not in ("profile", "min_fraction", "max_points_per_hour") and not is_info_key(str(key)):
            raise ScenarioError(f"params.{key}: not a parameter of hour_validity")
    profile = params.get("profile", "mrr")
    if profile not in ("mrr", "fraction", "part75"):
        raise ScenarioError(f"params.profile: expected mrr, fraction or part75, got {profile!r}")
    min_fraction = MRR_MIN_FRACTION
    if "min_fraction" in params:
        min_fraction = to_fraction(_number(params["min_fraction"], "params.min_fraction"))
        if not 0 < min_fraction <= 1:
            raise ScenarioError("params.min_fraction: expected a share within (0, 1]")
    out = []
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        if profile == "part75":
            result = _quadrant_case(case, where)
        else:
            points = case.get("points")
            if not isinstance(points, list):
                raise ScenarioError(f"{where}.points: expected a list")
            values = [_optional_number(p, f"{where}.points[{j}]") for j, p in enumerate(points)]
            max_points = _int(case.get("max_points_per_hour", params.get("max_points_per_hour")),
                              f"{where}.max_points_per_hour", minimum=1)
            if len(values) > max_points:
                raise ScenarioError(f"{where}: {len(values)} points exceed max_points_per_hour {max_points}")
            result = fraction_rule(values, max_points, min_fraction, "mrr" if profile == "mrr" else "fraction")
        out.append(_validity_json(result))
    return out


def _quadrant_case(case: Mapping[str, Any], where: str) -> HourValidity:
    samples = case.get("samples")
    if not isinstance(samples, list):
        raise ScenarioError(f"{where}.samples: expected a list of [minute, value or null]")
    parsed: list[tuple[int, float | None]] = []
    for j, item in enumerate(samples):
        if not isinstance(item, list) or len(item) != 2:
            raise ScenarioError(f"{where}.samples[{j}]: expected [minute, value or null]")
        minute = _number(item[0], f"{where}.samples[{j}][0]")
        if not 0 <= minute < 60:
            raise ScenarioError(f"{where}.samples[{j}][0]: minute must be within [0, 60)")
        parsed.append((round(minute * 60_000), _optional_number(item[1], f"{where}.samples[{j}][1]")))
    relaxed = _bool(case.get("calibration_or_maintenance", False), f"{where}.calibration_or_maintenance")
    return quadrant_rule(parsed, calibration_or_maintenance=relaxed)


def _validity_json(result: HourValidity) -> dict[str, Any]:
    out: dict[str, Any] = {"valid": result.valid, "value": result.value, "valid_points": result.valid_points,
                           "possible_points": result.possible_points,
                           "fraction": f"{result.fraction.numerator}/{result.fraction.denominator}",
                           "rule": result.rule}
    if result.quadrants is not None:
        out.update(quadrants_covered=result.quadrants_covered, quadrants=result.quadrants, relaxed=result.relaxed)
    return out


# --- Part 75 tier selection ------------------------------------------------------------------------------

def _tier_select(params: Mapping[str, Any], cases: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    for key in params:
        if key not in ("direction", "kind") and not is_info_key(str(key)):
            raise ScenarioError(f"params.{key}: not a parameter of part75_tier_select")
    out = []
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        direction = case.get("direction", params.get("direction", "high"))
        kind = case.get("kind", params.get("kind", "conc"))
        if direction not in ("high", "low"):
            raise ScenarioError(f"{where}.direction: expected high or low, got {direction!r}")
        if kind not in ("conc", "binned"):
            raise ScenarioError(f"{where}.kind: expected conc or binned, got {kind!r}")
        pma = to_fraction(_number(case.get("pma"), f"{where}.pma"))
        if not 0 <= pma <= 100:
            raise ScenarioError(f"{where}.pma: expected a percentage within 0..100")
        n = _int(case.get("n"), f"{where}.n", minimum=1)
        tier = part75_tier(pma, n)
        out.append({"routine": part75_routine(tier, Direction(direction), kind), "tier": tier.name.lower(),
                    "tier_rank": int(tier), "pma": float(round_half_up(pma, 1)),
                    "pma_exact": f"{pma.numerator}/{pma.denominator}", "n": n})
    return out


# --- substitution ----------------------------------------------------------------------------------------

def _substitution(name: str, policy: str, params: Mapping[str, Any], scenario: Mapping[str, Any]
                  ) -> dict[str, Any]:
    config = {"selector": policy, **{k: v for k, v in params.items() if k not in _INPUT_KEYS}}
    if "load_bin_by_hour" in params and "kind" not in params and policy == "part75_tiered":
        config["kind"] = "binned"  # a load-bin map means a binned (flow, NOx) point
    rule_policy = parse_policy_config(config, require_fallbacks=False)
    bins = _load_bins(params.get("load_bin_by_hour"))
    history = _history(scenario.get("history"), bins)
    gap = scenario.get("gap")
    if not isinstance(gap, list) or not gap:
        raise ScenarioError("gap: expected a non-empty list of hour indices")
    gap_hours = [_int(h, f"gap[{i}]") for i, h in enumerate(gap)]
    inputs = GapInputs(
        gap_open=_bool(params.get("gap_open", False), "params.gap_open"),
        qa_hours_since_certification=_opt_int(params, "qa_hours_since_certification"),
        clock_hours_since_certification=_opt_int(params, "clock_hours_since_certification"),
        window_end_hour=_opt_int(params, "window_end_hour", minimum=None),
        reference_period_closed=_bool(params.get("reference_period_closed", True),
                                      "params.reference_period_closed"),
        as_of_hour=_opt_int(params, "as_of_hour", minimum=None),
    )
    point = params.get("parameter", name)
    point = point if isinstance(point, str) else name
    earlier: GapSubstitution | None  # the provisional version the answer supersedes, if any
    if inputs.gap_open:
        main_run, earlier = substitute_gap(history, gap_hours, rule_policy, point=point, inputs=inputs), None
    else:
        earlier, main_run = provisional_then_final(history, gap_hours, rule_policy, point=point, inputs=inputs)
    is_final = main_run.status == "final"
    # Final: values are the answer and `provisional` what was published while the gap was open.
    # Provisional (open gap, or MRR period still open): values are null, `provisional` is the answer.
    if not is_final:
        provisional_values: Sequence[float | None] = main_run.values()
    elif earlier is not None:
        provisional_values = earlier.values()
    else:  # nothing could be published while the gap was open (no value before it, no default)
        provisional_values = [None] * len(gap_hours)
    first_trace = main_run.records[0].gap
    result: dict[str, Any] = {
        "name": name,
        "policy": policy,
        "status": main_run.status,
        "values": list(main_run.values()) if is_final else [None] * len(gap_hours),
        "provisional": list(provisional_values),
        "routine": _uniform([r.detail.routine for r in main_run.records]),
        "method_code": _uniform([r.detail.method_code for r in main_run.records]),
        "pma": None if first_trace.pma is None else first_trace.pma.rounded,
        "alpha": None if first_trace.alpha is None else first_trace.alpha.rounded,
        "alarm": main_run.alarm,
        "trace": _trace_json(main_run),
        "provisional_trace": None if earlier is None else _trace_json(earlier),
    }
    return result


def _opt_int(params: Mapping[str, Any], key: str, *, minimum: int | None = 0) -> int | None:
    return None if params.get(key) is None else _int(params[key], f"params.{key}", minimum=minimum)


def _uniform(items: Sequence[str]) -> str | list[str]:
    """One string when every hour used the same routine (the usual case), else one per hour."""
    return items[0] if len(set(items)) == 1 else list(items)


def _trace_json(run: GapSubstitution) -> dict[str, Any]:
    gap = run.records[0].gap.to_json()
    hours = []
    first = run.records[0].gap
    for record in run.records:
        detail = record.detail.to_json()
        entry = {"record_id": record.record_id, "status": record.status, "version": record.version,
                 "supersedes": record.supersedes, "value": record.value, **detail}
        if record.gap.alpha is not None and record.gap.alpha != first.alpha:
            entry["alpha"] = record.gap.alpha.to_json()  # HJ 75: a later quarter's part of the gap
        hours.append(entry)
    return {**gap, "hours": hours}


def _load_bins(raw: Any) -> dict[int, int]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ScenarioError("params.load_bin_by_hour: expected an object {\"hour\": bin}")
    bins: dict[int, int] = {}
    for key, value in raw.items():
        try:
            hour = int(key)
        except ValueError:
            raise ScenarioError(f"params.load_bin_by_hour: key {key!r} is not an hour index") from None
        bins[hour] = _int(value, f"params.load_bin_by_hour[{key}]", minimum=0)
    return bins


def _history(raw: Any, bins: Mapping[int, int]) -> list[HourValue]:
    if not isinstance(raw, list):
        raise ScenarioError("history: expected a list of [hour_index, value or null]")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, list) or len(item) != 2:
            raise ScenarioError(f"history[{i}]: expected [hour_index, value or null]")
        hour = _int(item[0], f"history[{i}][0]")
        value = _optional_number(item[1], f"history[{i}][1]")
        out.append(HourValue(hour, value, bins.get(hour)))
    return out
