"""A small, safe formula language for derived points, checked with pint once and run as plain floats.

What a formula may contain (docs/derived.md has the full grammar):
    numbers          12.5   1e-3               (dimensionless)
    names            an input or a constant declared beside the formula
    arithmetic       + - * /  and  ** with a plain number as exponent
    comparisons      < <= > >= == !=           (inside conditions only)
    logic            and  or  not
    functions        min(a, b, ...), max(...), abs(x), if(cond, a, b),
                     good(x), bad(x), uncertain(x), substituted(x)   (quality of an input)
                     and the built-ins of gateway.derived.builtins (to_standard, dry, co2_mass_rate, ...)

Never Python `eval` of what a technician wrote: the text is tokenised and parsed here into a tree; the
tree is checked for units with pint (adding kg/h to m3/h is an error naming the operator and both
units); then the tree is compiled into a closure over floats, with every unit conversion folded into a
constant factor, so a run-time evaluation costs a few Python calls and no pint at all.

Everything here is pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pint

from gateway.derived import builtins as bi
from gateway.units import UnitError, registry, unit_of

# ---------------------------------------------------------------------------------------------------
# Errors


class FormulaError(ValueError):
    """A formula that cannot be parsed, names an unknown input, or mixes units. `column` is 1-based."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.column = column

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base} (at column {self.column})" if self.column else base


# ---------------------------------------------------------------------------------------------------
# Tokens and syntax tree

_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z_0-9.]*)"
    r"|(?P<op>\*\*|<=|>=|==|!=|[-+*/(),<>]))"
)
_KEYWORDS = {"and", "or", "not"}
MAX_FORMULA_CHARS = 2000
MAX_DEPTH = 40


@dataclass(frozen=True, slots=True)
class Num:
    value: float
    col: int


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    col: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    arg: Node
    col: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node
    col: int


@dataclass(frozen=True, slots=True)
class Call:
    func: str
    args: tuple[Node, ...]
    col: int


Node = Num | Name | Unary | Binary | Call


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"formula longer than {MAX_FORMULA_CHARS} characters")
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            col = pos + (len(text[pos:]) - len(text[pos:].lstrip())) + 1
            raise FormulaError(f"unexpected character {text[col - 1]!r}", col)
        kind = m.lastgroup or ""
        col = m.start(kind) + 1
        tokens.append((kind, m.group(kind), col))
        pos = m.end()
    tokens.append(("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent, lowest precedence first: or, and, not, comparison, +-, */, unary, **, atom."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, text, col = self.take()
        if text != value or kind == "num":
            found = "the end" if kind == "end" else repr(text)
            raise FormulaError(f"expected {value!r}, found {found}", col)

    def parse(self) -> Node:
        node = self.or_()
        kind, text, col = self.peek()
        if kind != "end":
            raise FormulaError(f"unexpected {text!r}", col)
        return node

    def _nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"formula nested deeper than {MAX_DEPTH}", self.peek()[2])

    def or_(self) -> Node:
        node = self.and_()
        while self.peek()[:2] == ("name", "or"):
            col = self.take()[2]
            node = Binary("or", node, self.and_(), col)
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek()[:2] == ("name", "and"):
            col = self.take()[2]
            node = Binary("and", node, self.not_(), col)
        return node

    def not_(self) -> Node:
        if self.peek()[:2] == ("name", "not"):
            col = self.take()[2]
            self._nest()
            node = Unary("not", self.not_(), col)
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Node:
        node = self.sum()
        kind, text, col = self.peek()
        if kind == "op" and text in ("<", "<=", ">", ">=", "==", "!="):
            self.take()
            node = Binary(text, node, self.sum(), col)
            if self.peek()[1] in ("<", "<=", ">", ">=", "==", "!="):
                raise FormulaError("chained comparisons are not allowed; use 'and'", self.peek()[2])
        return node

    def sum(self) -> Node:
        node = self.product()
        while self.peek()[0] == "op" and self.peek()[1] in "+-" and self.peek()[1]:
            _, op, col = self.take()
            node = Binary(op, node, self.product(), col)
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.peek()[0] == "op" and self.peek()[1] in ("*", "/"):
            _, op, col = self.take()
            node = Binary(op, node, self.unary(), col)
        return node

    def unary(self) -> Node:
        kind, text, col = self.peek()
        if kind == "op" and text in ("-", "+"):
            self.take()
            self._nest()
            node = Unary(text, self.unary(), col)
            self.depth -= 1
            return node
        return self.power()

    def power(self) -> Node:
        node = self.atom()
        kind, text, col = self.peek()
        if kind == "op" and text == "**":
            self.take()
            node = Binary("**", node, self.unary(), col)
        return node

    def atom(self) -> Node:
        kind, text, col = self.take()
        if kind == "num":
            return Num(float(text), col)
        if kind == "name":
            if text in _KEYWORDS:
                raise FormulaError(f"unexpected {text!r}", col)
            if self.peek()[1] == "(" and self.peek()[0] == "op":
                self.take()
                self._nest()
                args: list[Node] = []
                if self.peek()[1] != ")":
                    args.append(self.or_())
                    while self.peek()[1] == ",":
                        self.take()
                        args.append(self.or_())
                self.expect(")")
                self.depth -= 1
                return Call(text, tuple(args), col)
            return Name(text, col)
        if kind == "op" and text == "(":
            self._nest()
            node = self.or_()
            self.expect(")")
            self.depth -= 1
            return node
        found = "the end of the formula" if kind == "end" else repr(text)
        raise FormulaError(f"expected a number, a name or '(', found {found}", col)


def parse(text: str) -> Node:
    """Parse a formula into its syntax tree (raises FormulaError with a column)."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("empty formula")
    return _Parser(text).parse()


# ---------------------------------------------------------------------------------------------------
# Inputs and constants as the checker sees them


@dataclass(frozen=True, slots=True)
class Operand:
    """A name a formula may use: an input (a point, value and quality at run time) or a constant."""

    name: str
    unit: str
    is_input: bool = True
    value: float | None = None  # constants only


@dataclass(frozen=True, slots=True)
class Sample:
    """One input value at run time, in its declared unit, with its quality code."""

    value: float | None
    quality: str = "good"  # good | uncertain | bad | substituted


@dataclass(slots=True)
class Compiled:
    """A checked formula: evaluate(samples) -> value in `unit`, or None when an input it needs is missing."""

    text: str
    unit: str
    inputs: tuple[str, ...]
    constants: tuple[str, ...]
    functions: tuple[str, ...]
    _fn: Callable[[Mapping[str, Sample]], float] = field(repr=False)

    def evaluate(self, samples: Mapping[str, Sample]) -> float | None:
        try:
            result = self._fn(samples)
        except _Missing:
            return None
        except ZeroDivisionError:
            return None
        if isinstance(result, bool) or not math.isfinite(result):
            return None
        return float(result)


class _Missing(Exception):
    """An input had no value; the formula's result is missing (never a made-up number)."""


# ---------------------------------------------------------------------------------------------------
# Checking and compiling

_BOOL = "bool"
_Val = tuple[Any, Callable[[Mapping[str, Sample]], Any]]  # (pint unit or _BOOL, closure)


def _describe(u: Any) -> str:
    if u == _BOOL:
        return "a condition"
    text = f"{u:~}" if str(u) != "dimensionless" else "dimensionless"
    return f"'{text}'" if text else "dimensionless"


def _factor(src: pint.Unit, dst: pint.Unit) -> float:
    ureg = registry()
    return float(ureg.Quantity(1.0, src).to(dst).magnitude)


def _literal(node: Node) -> float | None:
    """The value of a bare number (or a negated one), else None."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Unary) and node.op == "-" and isinstance(node.arg, Num):
        return -node.arg.value
    return None


def _same_dimension(a: Any, b: Any, op: str, col: int, nodes: tuple[Node, Node] | None = None) -> float:
    """Factor that converts b's magnitude into a's unit; an error when they differ in dimension.

    A bare number beside a quantity is read in that quantity's unit when the quantity is dimensionless
    (`o2 < 21` with o2 in %, means 21 %) and only 0 is accepted beside a dimensional one (`fuel > 0`);
    any other number next to kg/h must be declared as a constant with its unit, so that no unit is ever
    guessed.
    """
    if nodes is not None and a != _BOOL and b != _BOOL:
        la, lb = _literal(nodes[0]), _literal(nodes[1])
        for lit, other in ((lb, a), (la, b)):
            if lit is None or (la is not None and lb is not None):
                continue
            if other.dimensionless or lit == 0:
                return 1.0
            raise FormulaError(
                f"the number {lit:g} in '{op}' has no unit, beside {_describe(other)}: declare it as a "
                "constant with its unit", col)
    if a == _BOOL or b == _BOOL:
        raise FormulaError(f"'{op}' needs two quantities, got {_describe(a)} and {_describe(b)}", col)
    if a.dimensionality != b.dimensionality:
        raise FormulaError(
            f"unit mismatch in '{op}': {_describe(a)} and {_describe(b)} are of different dimensions "
            f"({a.dimensionality} vs {b.dimensionality})", col)
    return 1.0 if a == b else _factor(b, a)


class _Checker:
    def __init__(self, operands: Mapping[str, Operand]) -> None:
        self.operands = operands
        self.ureg = registry()
        self.used_inputs: list[str] = []
        self.used_constants: list[str] = []
        self.used_functions: list[str] = []

    def unit(self, text: str, what: str) -> pint.Unit:
        try:
            return unit_of(text)
        except UnitError as err:
            raise FormulaError(f"{what}: {err}") from err

    def check(self, node: Node) -> _Val:
        method = getattr(self, "_" + type(node).__name__.lower())
        return method(node)

    def _num(self, node: Num) -> _Val:
        v = node.value
        return self.ureg.dimensionless, lambda s: v

    def _name(self, node: Name) -> _Val:
        op = self.operands.get(node.name)
        if op is None:
            known = ", ".join(sorted(self.operands)) or "none"
            raise FormulaError(f"unknown name '{node.name}' (inputs and constants: {known})", node.col)
        u = self.unit(op.unit, f"'{node.name}'")
        if not op.is_input:
            if node.name not in self.used_constants:
                self.used_constants.append(node.name)
            value = float(op.value if op.value is not None else math.nan)
            if _is_offset(u):
                value, u = _absolute(value, u)
            return u, lambda s: value
        if node.name not in self.used_inputs:
            self.used_inputs.append(node.name)
        name = node.name
        if _is_offset(u):
            # degC and the like enter as kelvin: arithmetic on offset units is ambiguous (pint refuses it).
            conv = _absolute_conversion(u)
            base = self.ureg.Quantity(0.0, u).to_base_units().units
            factor, offset = conv

            def read_abs(s: Mapping[str, Sample]) -> float:
                v = s[name].value if name in s else None
                if v is None:
                    raise _Missing(name)
                return v * factor + offset
            return base, read_abs

        def read(s: Mapping[str, Sample]) -> float:
            v = s[name].value if name in s else None
            if v is None:
                raise _Missing(name)
            return v
        return u, read

    def _unary(self, node: Unary) -> _Val:
        u, f = self.check(node.arg)
        if node.op == "not":
            if u != _BOOL:
                raise FormulaError(f"'not' needs a condition, got {_describe(u)}", node.col)
            return _BOOL, lambda s: not f(s)
        if u == _BOOL:
            raise FormulaError(f"'{node.op}' needs a quantity, got a condition", node.col)
        if node.op == "-":
            return u, lambda s: -f(s)
        return u, f

    def _binary(self, node: Binary) -> _Val:
        op = node.op
        lu, lf = self.check(node.left)
        ru, rf = self.check(node.right)
        if op in ("and", "or"):
            if lu != _BOOL or ru != _BOOL:
                raise FormulaError(f"'{op}' needs two conditions", node.col)
            if op == "and":
                return _BOOL, lambda s: lf(s) and rf(s)
            return _BOOL, lambda s: lf(s) or rf(s)
        if op in ("+", "-"):
            k = _same_dimension(lu, ru, op, node.col, (node.left, node.right))
            if _literal(node.left) is not None and _literal(node.right) is None:
                lu = ru  # the bare number took the other side's unit
            if op == "+":
                return lu, (lambda s: lf(s) + rf(s)) if k == 1.0 else (lambda s: lf(s) + rf(s) * k)
            return lu, (lambda s: lf(s) - rf(s)) if k == 1.0 else (lambda s: lf(s) - rf(s) * k)
        if op in ("<", "<=", ">", ">=", "==", "!="):
            k = _same_dimension(lu, ru, op, node.col, (node.left, node.right))
            cmp = _COMPARE[op]
            return _BOOL, lambda s: cmp(lf(s), rf(s) * k)
        if lu == _BOOL or ru == _BOOL:
            raise FormulaError(f"'{op}' needs two quantities", node.col)
        if op == "*":
            return lu * ru, lambda s: lf(s) * rf(s)
        if op == "/":
            return lu / ru, lambda s: lf(s) / rf(s)
        # '**': the exponent must be a plain number known now, so the unit of the result is known.
        plain = isinstance(node.right, Num) or (isinstance(node.right, Unary) and node.right.op == "-"
                                                 and isinstance(node.right.arg, Num))
        if not plain:
            raise FormulaError("the exponent of '**' must be a plain number", node.col)
        exponent = rf({})
        return lu ** exponent, lambda s: lf(s) ** exponent

    def _call(self, node: Call) -> _Val:
        name = node.func
        if name in ("good", "bad", "uncertain", "substituted"):
            if len(node.args) != 1 or not isinstance(node.args[0], Name) or \
                    node.args[0].name not in self.operands or not self.operands[node.args[0].name].is_input:
                raise FormulaError(f"{name}() takes one input name", node.col)
            arg = node.args[0].name
            if arg not in self.used_inputs:
                self.used_inputs.append(arg)
            want = name

            def quality(s: Mapping[str, Sample]) -> bool:
                sample = s.get(arg)
                q = sample.quality if sample is not None and sample.value is not None else "bad"
                return q == want
            return _BOOL, quality
        args = [self.check(a) for a in node.args]
        if name == "if":
            if len(args) != 3:
                raise FormulaError("if() takes three arguments: if(condition, then, else)", node.col)
            (cu, cf), (au, af), (bu, bf) = args
            if cu != _BOOL:
                raise FormulaError(f"the first argument of if() must be a condition, got {_describe(cu)}",
                                   node.col)
            k = _same_dimension(au, bu, "if", node.col, (node.args[1], node.args[2]))
            if _literal(node.args[1]) is not None and _literal(node.args[2]) is None:
                au = bu
            return au, lambda s: af(s) if cf(s) else bf(s) * k
        if name in ("min", "max"):
            if not args:
                raise FormulaError(f"{name}() needs at least one argument", node.col)
            first = next((i for i, a in enumerate(node.args) if _literal(a) is None), 0)
            u0 = args[first][0]
            parts = [(f, _same_dimension(u0, u, name, node.col, (node.args[first], a)))
                     for (u, f), a in zip(args, node.args, strict=True)]
            pick = min if name == "min" else max
            return u0, lambda s: pick(f(s) * k for f, k in parts)
        if name == "abs":
            if len(args) != 1 or args[0][0] == _BOOL:
                raise FormulaError("abs() takes one quantity", node.col)
            u, f = args[0]
            return u, lambda s: abs(f(s))
        spec = bi.BUILTINS.get(name)
        if spec is None:
            known = ", ".join(sorted({"min", "max", "abs", "if", "good", "bad", "uncertain", "substituted",
                                      *bi.BUILTINS}))
            raise FormulaError(f"unknown function '{name}' (known: {known})", node.col)
        if name not in self.used_functions:
            self.used_functions.append(name)
        return self._builtin(spec, args, node)

    def _builtin(self, spec: bi.Builtin, args: list[_Val], node: Call) -> _Val:
        params = spec.params
        required = sum(1 for p in params if p.default is None)
        if not required <= len(args) <= len(params):
            raise FormulaError(f"{spec.name}() takes {_arity(required, len(params))}: "
                               f"{spec.name}({', '.join(p.name for p in params)})", node.col)
        closures: list[Callable[[Mapping[str, Sample]], float]] = []
        arg_units: list[pint.Unit] = []
        for i, p in enumerate(params):
            if i >= len(args):
                default = float(p.default)  # type: ignore[arg-type]
                closures.append(lambda s, d=default: d)
                continue
            u, f = args[i]
            if u == _BOOL:
                raise FormulaError(f"{spec.name}() argument {p.name} must be a quantity, got a condition",
                                   node.col)
            if p.unit is None:  # any unit: passed as it is; the result unit follows from it
                arg_units.append(u)
                closures.append(f)
                continue
            want = self.unit(p.unit, f"{spec.name}() parameter {p.name}")
            if u.dimensionality != want.dimensionality:
                raise FormulaError(
                    f"{spec.name}() argument {p.name} must be in a unit like '{p.unit}' "
                    f"({want.dimensionality}), got {_describe(u)}", node.col)
            arg_units.append(want)
            # A bare number for a dimensionless parameter is in the parameter's unit (20.9 for o2_air is %).
            bare = _literal(node.args[i]) is not None and want.dimensionless
            k = 1.0 if u == want or bare else _factor(u, want)
            closures.append(f if k == 1.0 else (lambda s, f=f, k=k: f(s) * k))
        if spec.check is not None:
            message = spec.check(arg_units)
            if message:
                raise FormulaError(f"{spec.name}(): {message}", node.col)
        if isinstance(spec.result, str):
            result_unit = self.unit(spec.result, f"{spec.name}() result")
        else:
            result_unit = spec.result(arg_units)
        fn = spec.fn
        if len(closures) == 2:
            a, b = closures
            return result_unit, lambda s: fn(a(s), b(s))
        return result_unit, lambda s: fn(*[c(s) for c in closures])


def _arity(required: int, total: int) -> str:
    if required == total:
        return f"{total} argument{'s' if total != 1 else ''}"
    return f"{required} to {total} arguments"


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def _is_offset(u: pint.Unit) -> bool:
    return not registry().Quantity(1.0, u)._is_multiplicative


def _absolute_conversion(u: pint.Unit) -> tuple[float, float]:
    ureg = registry()
    zero = ureg.Quantity(0.0, u).to_base_units().magnitude
    one = ureg.Quantity(1.0, u).to_base_units().magnitude
    return float(one - zero), float(zero)


def _absolute(value: float, u: pint.Unit) -> tuple[float, pint.Unit]:
    q = registry().Quantity(value, u).to_base_units()
    return float(q.magnitude), q.units


def compile_formula(text: str, operands: Sequence[Operand], result_unit: str) -> Compiled:
    """Parse, check units against the declared result unit, and compile. Raises FormulaError."""
    table = {op.name: op for op in operands}
    tree = parse(text)
    checker = _Checker(table)
    u, fn = checker.check(tree)
    want = checker.unit(result_unit, "result unit")
    if u == _BOOL:
        raise FormulaError("the formula is a condition, not a quantity")
    if u.dimensionality != want.dimensionality:
        raise FormulaError(
            f"the formula gives {_describe(u)} ({u.dimensionality}), "
            f"but the point is declared in '{result_unit}' ({want.dimensionality})")
    k = 1.0 if u == want else _factor(u, want)
    final = fn if k == 1.0 else (lambda s: fn(s) * k)
    return Compiled(text=text, unit=result_unit, inputs=tuple(checker.used_inputs),
                    constants=tuple(checker.used_constants), functions=tuple(checker.used_functions),
                    _fn=final)


# ---------------------------------------------------------------------------------------------------
# Quality propagation (pure)

_RANK = {"good": 0, "uncertain": 1, "substituted": 2, "bad": 3}


def worst_quality(qualities: Sequence[str]) -> str:
    """A derived value is as good as its worst input: good < uncertain < substituted < bad."""
    worst = "good"
    for q in qualities:
        if _RANK.get(q, 3) > _RANK[worst]:
            worst = q if q in _RANK else "bad"
    return worst
