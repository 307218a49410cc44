"""Acceptance: every vector of missing_data_vectors.json reproduces, through the API and the CLI entry."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest

from gateway import audit as evaluate
from tests.unit.rules.rules_vectors import (
    CASE_VECTORS,
    DISCRIMINATING,
    SUBSTITUTION_VECTORS,
    VECTORS,
    VECTORS_COPY,
    VECTORS_SHARED,
    close,
)


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def test_copy_has_all_eleven_vectors_and_matches_the_reference_when_present() -> None:
    assert len(VECTORS) == 11
    assert len({v["name"] for v in VECTORS}) == 11
    if VECTORS_SHARED.exists():  # in the shared workspace the copy must not drift from the original
        assert json.loads(VECTORS_SHARED.read_text(encoding="utf-8")) == VECTORS
    else:
        assert VECTORS_COPY.stat().st_size > 0


def _check_substitution(vector: dict[str, Any], answer: dict[str, Any]) -> None:
    tol = vector["tolerance"]
    assert answer["name"] == vector["name"]
    assert answer["status"] == "final"
    assert len(answer["values"]) == len(vector["expected"])
    for got, want in zip(answer["values"], vector["expected"], strict=True):
        assert close(got, want, tol), (got, want)
    if "expected_routine" in vector:
        assert answer["routine"] == vector["expected_routine"]
    if "method_code" in vector:
        assert answer["method_code"] == vector["method_code"]
    if "expected_alarm" in vector:
        assert answer["alarm"] is vector["expected_alarm"]
    if "pma" in vector["params"]:
        assert answer["pma"] == pytest.approx(vector["params"]["pma"])


def _check_cases(vector: dict[str, Any], answer: dict[str, Any]) -> None:
    assert answer["name"] == vector["name"]
    assert len(answer["cases"]) == len(vector["cases"])
    for got, case in zip(answer["cases"], vector["cases"], strict=True):
        assert got["valid"] is case["expected_valid"]
        assert close(got["value"], case["expected_hour_value"], vector["tolerance"])
        assert got["valid_points"] == case["valid_points"]


@pytest.mark.parametrize("vector", SUBSTITUTION_VECTORS, ids=_ids(SUBSTITUTION_VECTORS))
def test_substitution_vector_through_python_api(vector: dict[str, Any]) -> None:
    _check_substitution(vector, evaluate.evaluate_scenario(vector))


@pytest.mark.parametrize("vector", CASE_VECTORS, ids=_ids(CASE_VECTORS))
def test_case_vector_through_python_api(vector: dict[str, Any]) -> None:
    _check_cases(vector, evaluate.evaluate_scenario(vector))


def test_whole_file_through_main_one_json_line_per_scenario_in_order() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert evaluate.main(str(VECTORS_COPY), out, err) == 0
    assert err.getvalue() == ""
    lines = out.getvalue().splitlines()
    assert len(lines) == len(VECTORS)
    for line, vector in zip(lines, VECTORS, strict=True):
        answer = json.loads(line)
        if "cases" in vector:
            _check_cases(vector, answer)
        else:
            _check_substitution(vector, answer)


@pytest.mark.parametrize("vector", VECTORS, ids=_ids(VECTORS))
def test_single_scenario_file_through_main(vector: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps(vector), encoding="utf-8")
    out = io.StringIO()
    assert evaluate.main(str(path), out, io.StringIO()) == 0
    (line,) = out.getvalue().splitlines()
    answer = json.loads(line)
    (_check_cases if "cases" in vector else _check_substitution)(vector, answer)


@pytest.mark.parametrize(("vector", "label", "wrong"), DISCRIMINATING, ids=[d[1] for d in DISCRIMINATING])
def test_discriminated_value_is_rejected(vector: dict[str, Any], label: str, wrong: float) -> None:
    answer = evaluate.evaluate_scenario(vector)
    tol = vector["tolerance"]
    for got in answer["values"]:
        assert not close(got, wrong, tol), f"{label}: {got} equals the wrong answer {wrong}"
        assert abs(got - wrong) > tol * abs(wrong)


def test_intermediate_values_are_in_the_trace() -> None:
    by_name = {v["name"]: v for v in VECTORS}
    p90 = evaluate.evaluate_scenario(by_name["p75_co2_p90_long_gap_percentile_wins"])["trace"]
    assert p90["hours"][0]["statistics"]["p90"] == 11.3
    assert p90["hbha"] == pytest.approx(10.3)
    assert p90["hb"] == {"hour": 9, "value": 10.9}
    assert p90["ha"] == {"hour": 36, "value": 9.7}
    lookback = p90["hours"][0]["lookback"]
    assert (lookback["first_hour"], lookback["last_hour"], lookback["n"], lookback["w"]) == (0, 9, 10, 10)
    mrr = evaluate.evaluate_scenario(by_name["mrr_co2_conc_mean_plus_2sigma"])["trace"]["hours"][0]["statistics"]
    intermediate = by_name["mrr_co2_conc_mean_plus_2sigma"]["intermediate"]
    assert mrr["n"] == intermediate["n"]
    assert mrr["mean"] == pytest.approx(intermediate["mean"], rel=1e-12)
    assert mrr["s"] == pytest.approx(intermediate["s_sample"], rel=1e-12)
    hj = evaluate.evaluate_scenario(by_name["hj75_alpha90_short_gap_max180"])["trace"]["hours"][0]["lookback"]
    assert (hj["first_hour"], hj["last_hour"], hj["n"]) == (20, 199, 180)


def test_vectors_are_not_modified_by_evaluation() -> None:
    before = copy.deepcopy(VECTORS)
    text = json.dumps(VECTORS, sort_keys=True)
    for vector in VECTORS:
        evaluate.evaluate_scenario(vector)
    assert before == VECTORS
    assert json.dumps(VECTORS, sort_keys=True) == text
