"""The auditor tool: output format, extra scenario kinds, per-scenario errors and exit code 2."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import audit as evaluate


def run_main(tmp_path: Path, content: str | Any) -> tuple[int, list[dict[str, Any]], str]:
    path = tmp_path / "scenarios.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = evaluate.main(str(path), out, err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()


BASE: dict[str, Any] = {
    "name": "s1",
    "policy": "part75_tiered",
    "params": {"direction": "high", "pma": 97.5},
    "history": [[0, 10.0], [1, 12.0], [2, None], [3, None], [4, 14.0]],
    "gap": [2, 3],
}


def test_output_fields_for_a_closed_gap(tmp_path: Path) -> None:
    code, (answer,), err = run_main(tmp_path, BASE)
    assert (code, err) == (0, "")
    assert answer["values"] == [13.0, 13.0]
    assert answer["provisional"] == [12.0, 12.0]
    assert (answer["routine"], answer["method_code"], answer["pma"], answer["alarm"]) == (
        "hour_before_after", "06", 97.5, False)
    trace = answer["trace"]
    assert trace["pma"]["exact"] == "195/2"
    assert trace["config_hash"].startswith("sha256:")
    assert [h["supersedes"] for h in trace["hours"]] == [h["record_id"] for h in answer["provisional_trace"]["hours"]]
    assert {h["version"] for h in trace["hours"]} == {2}


def test_open_gap_gives_null_values_and_provisional_ones(tmp_path: Path) -> None:
    scenario = {**BASE, "params": {**BASE["params"], "gap_open": True, "provisional_policy": "selector"},
                "history": BASE["history"][:4]}
    code, (answer,), _ = run_main(tmp_path, scenario)
    assert code == 0
    assert answer["status"] == "provisional"
    assert answer["values"] == [None, None]
    assert answer["provisional"] == [12.0, 12.0]
    assert answer["provisional_trace"] is None


def test_mrr_before_the_reference_period_closes_answers_provisional(tmp_path: Path) -> None:
    scenario = {"name": "m", "policy": "mean_plus_2sigma",
                "params": {"direction": "high", "reference_period_closed": False},
                "history": [[0, 1.0], [1, 3.0], [2, None], [3, 5.0]], "gap": [2]}
    _, (answer,), _ = run_main(tmp_path, scenario)
    assert answer["status"] == "provisional"
    assert answer["values"] == [None]
    assert answer["provisional"] == [pytest.approx(7.0)]  # mean 3 + 2 x s 2
    assert answer["routine"] == "mean_plus_2sigma"
    # Issue 10 item 3: while open (history 1.0, 3.0), the tier value mean 2 + 2 x s sqrt(2) = 4.83 was computable
    # and above the last good 3.0, so it was published (this line asserted "last_good", the defect).
    assert answer["provisional_trace"]["hours"][0]["routine"] == "mean_plus_2sigma"
    assert answer["provisional_trace"]["hours"][0]["value"] == pytest.approx(2 + 2 * 2 ** 0.5)


def test_non_operating_gap_hours_answer_null(tmp_path: Path) -> None:
    scenario = {**BASE, "history": [[0, 10.0], [1, 12.0], [2, None], [4, None], [5, 14.0]], "gap": [2, 3, 4]}
    _, (answer,), _ = run_main(tmp_path, scenario)
    assert answer["values"] == [13.0, None, 13.0]
    assert answer["trace"]["non_operating_hours"] == [3]
    assert answer["trace"]["n"] == 2


def test_part75_tier_select_cases(tmp_path: Path) -> None:
    scenario = {"name": "tiers", "policy": "part75_tier_select", "params": {"direction": "low"},
                "cases": [{"pma": 95.0, "n": 25}, {"pma": 94.99, "n": 8}, {"pma": 85, "n": 1, "direction": "high"},
                          {"pma": 79.95, "n": 1, "kind": "binned", "direction": "high"}]}
    _, (answer,), _ = run_main(tmp_path, scenario)
    assert [c["routine"] for c in answer["cases"]] == [
        "min(percentile_lookback(10), hour_before_after)", "hour_before_after", "max_lookback",
        "fixed_conservative_default(max_potential)"]
    assert answer["cases"][3]["pma"] == 80.0  # rounded for the record, still the < 80 tier


def test_hour_validity_part75_profile(tmp_path: Path) -> None:
    scenario = {"name": "q", "policy": "hour_validity", "params": {"profile": "part75"},
                "cases": [{"samples": [[0, 1.0], [15, 2.0], [30, 3.0], [45, 4.0]]},
                          {"samples": [[0, 1.0], [15, 2.0], [30, None], [45, 4.0]]},
                          {"samples": [[0, 1.0], [20, 3.0]], "calibration_or_maintenance": True}]}
    _, (answer,), _ = run_main(tmp_path, scenario)
    assert [(c["valid"], c["value"]) for c in answer["cases"]] == [(True, 2.5), (False, None), (True, 2.0)]


def test_pma_compute_and_per_hour_ordinal(tmp_path: Path) -> None:
    history = [[h, 10.0 + h % 3] for h in range(30)] + [[h, None] for h in range(30, 56)] + [[56, 11.0]]
    scenario = {"name": "ord", "policy": "part75_tiered", "history": history, "gap": list(range(30, 56)),
                "params": {"direction": "high", "pma": "compute", "lookback_hours": 30,
                           "length_rule": "per_hour_ordinal"}}
    _, (answer,), _ = run_main(tmp_path, scenario)
    assert answer["pma"] == 100.0
    assert isinstance(answer["routine"], list)
    assert answer["routine"][0] == "hour_before_after"
    assert answer["routine"][-1] == "max(percentile_lookback(90), hour_before_after)"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "invalid JSON: line 1 column 2"),
        ("[]", "no scenario"),
        ('{"name": "x", "policy": "hour_before_after", "params": {"direction": "high"}, "history": [[0, NaN]],'
         ' "gap": [0]}', "NaN is not a finite number"),
    ],
)
def test_an_unreadable_file_exits_2_with_one_line_and_prints_nothing(tmp_path: Path, content: str,
                                                                      fragment: str) -> None:
    code, answers, err = run_main(tmp_path, content)
    assert code == 2
    assert answers == []
    assert err.count("\n") == 1
    assert err.startswith(str(tmp_path / "scenarios.json") + ": ")
    assert fragment in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[1]", "scenario #1: expected an object"),
        ('{"name": "x", "policy": "magic"}', "scenario 'x': policy: expected one of"),
        (json.dumps({**BASE, "gap": [9]}), "scenario 's1': gap: none of its hours"),
        (json.dumps({**BASE, "history": [[0, "a"]]}), "history[0][1]: expected a finite number"),
        (json.dumps({**BASE, "params": {"pma": 97.5}}), "direction: required"),
        (json.dumps({**BASE, "params": {"direction": "high", "pma": 50}}), "max_potential is needed"),
        (json.dumps({**BASE, "params": {"direction": "high", "pma": 97.5, "bogus": 1}}), "bogus: not a parameter"),
        (json.dumps({**BASE, "params": {**BASE["params"], "gap_open": True}}), "gap_open"),
        (json.dumps({"name": "v", "policy": "hour_validity", "cases": [{"points": [1.0, 2.0]}]}),
         "max_points_per_hour: expected an integer"),
        (json.dumps({"name": "t", "policy": "part75_tier_select", "cases": [{"pma": 101, "n": 1}]}),
         "cases[0].pma"),
    ],
)
def test_a_bad_scenario_is_answered_with_its_error_and_exits_2(tmp_path: Path, content: str, fragment: str) -> None:
    """Issue 10 item 4: one unevaluable scenario no longer silences the file. Before, the tool printed nothing
    (this test then asserted ``answers == []``, which encoded the defect); now the scenario's own line is an
    error and the others are answered (next test)."""
    code, answers, err = run_main(tmp_path, content)
    assert code == 2
    assert len(answers) == 1
    assert set(answers[0]) == {"name", "error"}
    assert fragment in answers[0]["error"]
    assert err.count("\n") == 1
    assert err.startswith(str(tmp_path / "scenarios.json") + ": ")
    assert fragment in err
    assert "Traceback" not in err


def test_one_bad_scenario_does_not_hide_the_others(tmp_path: Path) -> None:
    bad = {**BASE, "name": "bad", "params": {"pma": 97.5}}  # no direction
    code, answers, err = run_main(tmp_path, [BASE, bad, {**BASE, "name": "s3"}])
    assert code == 2
    assert [a["name"] for a in answers] == ["s1", "bad", "s3"]
    assert answers[0]["values"] == answers[2]["values"] == [13.0, 13.0]
    assert "direction: required" in answers[1]["error"]
    assert err.count("\n") == 1
    assert "scenario 'bad'" in err


def test_a_closed_gap_with_no_value_before_it_takes_the_first_value_after_without_a_default(tmp_path: Path) -> None:
    """40 CFR 98.35(b)(1): "If no QA value exists before the incident, use the first QA value obtained after it."
    Gap at months 0..1, first value after: 0.7302 -> final values [0.7302, 0.7302], version 1.
    Before, the closed gap was first replayed as an open one, whose last_good provisional value needs a value
    before the gap or a default_value, so the whole file was refused (exit 2, nothing printed)."""
    scenario = {"name": "p98", "policy": "hour_before_after", "params": {"direction": "high"},
                "history": [[0, None], [1, None], [2, 0.7302], [3, 0.7310]], "gap": [0, 1]}
    code, (answer,), err = run_main(tmp_path, scenario)
    assert (code, err) == (0, "")
    assert answer["values"] == [0.7302, 0.7302]
    assert answer["method_code"] == "G3"
    assert answer["provisional"] == [None, None]  # nothing could be published while it was open
    assert answer["provisional_trace"] is None
    assert {h["version"] for h in answer["trace"]["hours"]} == {1}
    assert "40 CFR 98.35(b)(1)" in answer["trace"]["hours"][0]["citation"]


def test_the_documented_example_gives_the_documented_answer(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[3] / "docs" / "rules.md").read_text(encoding="utf-8")
    section = doc.split("### 1.5 Example", 1)[1]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    code, (answer,), _ = run_main(tmp_path, example)
    assert code == 0
    assert answer["values"] == [10.8, 10.8, None, 10.8]
    assert answer["provisional"] == [10.6, 10.6, None, 10.6]
    assert (answer["routine"], answer["method_code"], answer["pma"]) == ("hour_before_after", "06", 97.5)
    assert answer["trace"]["non_operating_hours"] == [6]
    assert answer["trace"]["config_hash"][:15] in section
    assert answer["trace"]["hours"][0]["record_id"][:12] in section


def test_missing_file_exits_2(tmp_path: Path) -> None:
    err = io.StringIO()
    assert evaluate.main(str(tmp_path / "absent.json"), io.StringIO(), err) == 2
    assert err.getvalue().startswith(f"{tmp_path / 'absent.json'}: cannot read")


json_leaf = (st.none() | st.booleans() | st.integers(-5, 50) | st.floats(-1e3, 1e3, allow_nan=False)
             | st.text(max_size=5))
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
scenario_like = st.fixed_dictionaries(
    {"name": st.text(max_size=5), "policy": st.sampled_from(evaluate.POLICIES)},
    optional={"params": st.dictionaries(st.sampled_from(["direction", "pma", "gap_open", "lookback_hours",
                                                         "default_value", "max_potential", "min_fraction",
                                                         "load_bin_by_hour", "percentile", "alpha_pct"]), json_any),
              "history": st.lists(st.lists(json_leaf, max_size=3), max_size=6) | json_any,
              "gap": st.lists(st.integers(-2, 8), max_size=4) | json_any,
              "cases": st.lists(json_any, max_size=3) | json_any},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(scenario_like, st.lists(scenario_like, max_size=3), json_any))
def test_any_input_answers_or_exits_2_never_a_traceback(tmp_path: Path, data: Any) -> None:
    code, answers, err = run_main(tmp_path, data)
    assert code in (0, 2)
    errors = [a for a in answers if "error" in a]
    if code == 0:
        assert err == ""
        assert not errors
        assert len(answers) == (len(data) if isinstance(data, list) else 1)
    elif answers:  # some scenarios failed: each has its line on stdout and on stderr, the rest are answered
        assert len(answers) == (len(data) if isinstance(data, list) else 1)
        assert errors
        assert err.count("\n") == len(errors)
    else:  # the file itself was unusable
        assert err.count("\n") == 1


def test_cli_rules_evaluate_runs_the_auditor_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`carbon-gateway rules evaluate FILE` dispatches to gateway.audit (outside the pure rules package)."""
    from gateway.cli import main as cli_main

    path = tmp_path / "s.json"
    path.write_text(json.dumps(BASE), encoding="utf-8")
    assert cli_main(["rules", "evaluate", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["name"] == "s1"
