"""Invariants of the formula language, checked with hypothesis."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.derived import builtins as bi
from gateway.derived.formula import FormulaError, Operand, Sample, compile_formula, worst_quality

OPS = [Operand("a", "kg/h"), Operand("b", "kg/h"), Operand("c", "t/h"), Operand("x", "1"),
       Operand("k", "1", is_input=False, value=2.5)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abckx0123456789.+-*/()<>=!, ifmaxgood_ ", max_size=40))
def test_any_text_compiles_or_gives_a_formula_error(text: str) -> None:
    # The parser and checker are total: a FormulaError or a formula, never another exception.
    message = ""
    try:
        compile_formula(text, OPS, "kg/h")
    except FormulaError as err:
        message = str(err)
    assert "\n" not in message


# Random arithmetic trees over a, b (kg/h) and c (t/h, so every use of c folds a factor of 1000),
# compiled, must equal the same arithmetic done by hand in kg/h.
def _leaf() -> st.SearchStrategy[tuple[str, object]]:
    return st.sampled_from([("a", lambda v: v["a"]), ("b", lambda v: v["b"]), ("c", lambda v: v["c"] * 1000.0)])


def _combine(children: st.SearchStrategy) -> st.SearchStrategy:
    def build(op: str, left: tuple, right: tuple) -> tuple:
        lt, lf = left
        rt, rf = right
        if op == "+":
            return f"({lt} + {rt})", lambda v: lf(v) + rf(v)
        if op == "-":
            return f"({lt} - {rt})", lambda v: lf(v) - rf(v)
        if op == "max":
            return f"max({lt}, {rt})", lambda v: max(lf(v), rf(v))
        return f"min({lt}, {rt})", lambda v: min(lf(v), rf(v))
    return st.builds(build, st.sampled_from(["+", "-", "max", "min"]), children, children)


trees = st.recursive(_leaf(), _combine, max_leaves=8)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(trees, finite, finite, finite)
def test_compiled_arithmetic_matches_hand_arithmetic(tree: tuple, a: float, b: float, c: float) -> None:
    text, expected = tree
    got = compile_formula(text, OPS, "kg/h").evaluate({"a": Sample(a), "b": Sample(b), "c": Sample(c)})
    want = expected({"a": a, "b": b, "c": c})
    assert got is not None
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=1e5), st.floats(min_value=0, max_value=60))
def test_dry_and_wet_are_inverse(c: float, h2o: float) -> None:
    assert math.isclose(bi.wet(bi.dry(c, h2o), h2o), c, rel_tol=1e-12, abs_tol=1e-12)


@given(st.floats(min_value=1e-3, max_value=1e7), st.floats(min_value=200, max_value=1500),
       st.floats(min_value=50, max_value=200))
def test_to_standard_is_monotone_and_identity_at_reference(q: float, t: float, p: float) -> None:
    assert math.isclose(bi.to_standard(q, bi.T_NORMAL_K, bi.P_NORMAL_KPA), q, rel_tol=1e-12)
    # hotter gas is less gas at normal conditions; higher pressure is more
    assert bi.to_standard(q, t + 10, p) < bi.to_standard(q, t, p)
    assert bi.to_standard(q, t, p + 1) > bi.to_standard(q, t, p)


def test_a_missing_input_gives_no_value_never_a_guess() -> None:
    f = compile_formula("a + b", OPS, "kg/h")
    assert f.evaluate({"a": Sample(1.0)}) is None
    assert f.evaluate({"a": Sample(1.0), "b": Sample(None, "bad")}) is None
    assert f.evaluate({"a": Sample(1.0), "b": Sample(2.0)}) == 3.0


def test_quality_conditions_choose_a_branch() -> None:
    f = compile_formula("if(good(a), a, b)", OPS, "kg/h")
    assert f.evaluate({"a": Sample(1.0), "b": Sample(7.0)}) == 1.0
    assert f.evaluate({"a": Sample(1.0, "substituted"), "b": Sample(7.0)}) == 7.0
    assert f.evaluate({"b": Sample(7.0)}) == 7.0  # a missing input is not good
    assert f.inputs == ("a", "b")


def test_division_by_zero_gives_no_value() -> None:
    f = compile_formula("a * x / (x - x)", OPS, "kg/h")
    assert f.evaluate({"a": Sample(1.0), "x": Sample(2.0)}) is None


@given(st.lists(st.sampled_from(["good", "uncertain", "substituted", "bad"]), min_size=1))
def test_worst_quality_is_the_worst_input(qs: list[str]) -> None:
    order = ["good", "uncertain", "substituted", "bad"]
    assert worst_quality(qs) == max(qs, key=order.index)
    assert order.index(worst_quality(qs)) >= max(order.index(q) for q in qs)


def test_constants_are_recorded_and_folded() -> None:
    f = compile_formula("a * k", OPS, "t/h")
    assert f.constants == ("k",)
    assert f.evaluate({"a": Sample(1000.0)}) == 2.5  # 1000 kg/h * 2.5 = 2.5 t/h
