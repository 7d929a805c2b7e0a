"""The calculator tool: exact arithmetic on integers of any size, decimals and fractions.

    evaluate("12345 * 6789")        -> "83810205"
    evaluate("1/3 + 1/6")           -> "1/2 (0.5)"  ... exact fractions, with a decimal beside them
    evaluate("0.1 + 0.2")           -> "0.3"        ... decimals are exact, not binary floats
    evaluate("2^100")               -> "1267650600228229401496703205376"

The expression is parsed by Python's own parser (`ast`, never `eval`) and only these nodes are
walked: numbers, + - * / // % and ** (also written ^), unary signs and parentheses. Every value is a
Fraction, so nothing is rounded. A power must have an integer exponent and a result of at most
MAX_DIGITS digits; every intermediate value is held to that size too, so no input can exhaust memory
or time. Anything else (names, calls, strings, comparisons) is refused with the reason.
"""
from __future__ import annotations

import ast
import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from llmos.tools.registry import Tool, ToolConfig, ToolError, register

MAX_DIGITS = 4_000  # of any value, numerator or denominator (Python prints ints up to 4,300 digits)
MAX_INPUT = 2_000  # characters of an expression
REPLACE = {"^": "**", "×": "*", "÷": "/", "−": "-", "–": "-"}

BINARY = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
          ast.Div: None, ast.FloorDiv: None, ast.Mod: None, ast.Pow: None}


def _digits(n: int) -> int:
    return int(abs(n).bit_length() * math.log10(2)) + 1


def _check_size(x: Fraction) -> Fraction:
    if max(_digits(x.numerator), _digits(x.denominator)) > MAX_DIGITS:
        raise ToolError(f"a value in this expression has more than {MAX_DIGITS:,} digits: the calculator stops there")
    return x


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError(f"the exponent {exponent} is not an integer: only whole powers are exact")
    e = exponent.numerator
    if base == 0 and e < 0:
        raise ToolError("0 to a negative power is a division by zero")
    if abs(base) not in (0, 1):  # the result's digits are about |e| times the base's (per part)
        magnitude = max(math.log10(abs(base.numerator)), math.log10(base.denominator))
        if abs(e) * magnitude > MAX_DIGITS:
            raise ToolError(f"the power {base}**{e} would have more than {MAX_DIGITS:,} digits")
    return base ** e


def _walk(node: ast.AST, source: str) -> Fraction:
    if isinstance(node, ast.Expression):
        return _walk(node.body, source)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ToolError(f"{value!r} is not a number: the calculator takes numbers and + - * / // % ** ( )")
        if isinstance(value, int):
            return _check_size(Fraction(value))
        text = ast.get_source_segment(source, node) or repr(value)  # the decimal as written, not a float
        try:
            return _check_size(Fraction(Decimal(text.replace("_", ""))))
        except (InvalidOperation, ValueError):
            raise ToolError(f"{text!r} is not a number the calculator reads") from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _walk(node.operand, source)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        a, b = _walk(node.left, source), _walk(node.right, source)
        op = type(node.op)
        if op is ast.Pow:
            return _check_size(_power(a, b))
        if op in (ast.Div, ast.FloorDiv, ast.Mod) and b == 0:
            raise ToolError("division by zero")
        if op is ast.Div:
            return _check_size(a / b)
        if op is ast.FloorDiv:
            return Fraction(a // b)
        if op is ast.Mod:
            return _check_size(a % b)
        return _check_size(BINARY[op](a, b))
    what = {ast.Name: "a name", ast.Call: "a function call", ast.Attribute: "an attribute",
            ast.Compare: "a comparison", ast.Subscript: "an index"}.get(type(node), type(node).__name__)
    shown = ast.get_source_segment(source, node) or ""
    raise ToolError(f"{what} ({shown!r}) is not arithmetic: the calculator takes numbers and + - * / // % ** ( )")


def _decimal(x: Fraction) -> str | None:
    """The exact decimal form of x when its denominator has only the factors 2 and 5."""
    d, twos, fives = x.denominator, 0, 0
    while d % 2 == 0:
        d, twos = d // 2, twos + 1
    while d % 5 == 0:
        d, fives = d // 5, fives + 1
    if d != 1:
        return None
    places = max(twos, fives)
    scaled = abs(x.numerator) * 10 ** places // x.denominator
    digits = str(scaled).rjust(places + 1, "0")
    text = (digits[:-places] + "." + digits[-places:]).rstrip("0").rstrip(".") if places else digits
    return ("-" if x < 0 else "") + text


def format_value(x: Fraction) -> str:
    if x.denominator == 1:
        return str(x.numerator)
    exact = _decimal(x)
    if exact is not None:
        return exact
    approx = format(Decimal(x.numerator) / Decimal(x.denominator), ".12g")
    return f"{x.numerator}/{x.denominator} (about {approx})"


def evaluate(expression: str) -> str:
    """The exact value of an arithmetic expression, as text; ToolError says what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("the expression is empty: give one such as 12 * (3 + 4)")
    if len(expression) > MAX_INPUT:
        raise ToolError(f"the expression has {len(expression):,} characters; "
                        f"the calculator takes at most {MAX_INPUT:,}")
    text = expression.strip().rstrip("=").strip()
    for old, new in REPLACE.items():
        text = text.replace(old, new)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ToolError(f"could not parse {expression!r}: write arithmetic such as 12 * (3 + 4) / 5") from None
    try:
        return format_value(_walk(tree, text))
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


@register("calculator")
def tools(config: ToolConfig) -> list[Tool]:
    return [Tool("calculator", "Exact arithmetic: integers of any size, decimals and fractions with "
                 "+ - * / // % ** and parentheses. Use it for any multiplication or sum you cannot do at a glance.",
                 {"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. 4821 * 377"}},
                  "required": ["expression"], "additionalProperties": False},
                 lambda args: evaluate(args["expression"]))]
