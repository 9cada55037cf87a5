"""Kubernetes resource quantities (``resource.Quantity``), exact.

The grammar is Kubernetes' own::

    quantity   ::= [sign] number [suffix]
    number     ::= digits | digits "." [digits] | "." digits
    suffix     ::= binarySI | decimalSI | ("e" | "E") [sign] digits
    binarySI   ::= Ki | Mi | Gi | Ti | Pi | Ei
    decimalSI  ::= m | k | M | G | T | P | E

Values are :class:`fractions.Fraction` or ``int``, never floats, so ``1.5Gi``
is exactly 1610612736 bytes and sums compare exactly as kubelet compares them.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from nri_plugin.errors import QuantityError, quote
from nri_plugin.errors import short as short  # re-exported: the engine cuts texts with it

INT64_MAX = (1 << 63) - 1

_BINARY_SUFFIXES: tuple[tuple[str, int], ...] = (
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
)
_DECIMAL_SUFFIXES: tuple[tuple[str, int], ...] = (
    ("E", 10**18),
    ("P", 10**15),
    ("T", 10**12),
    ("G", 10**9),
    ("M", 10**6),
    ("k", 10**3),
)
_MULTIPLIERS: dict[str, Fraction] = {
    **{s: Fraction(m) for s, m in _BINARY_SUFFIXES},
    **{s: Fraction(m) for s, m in _DECIMAL_SUFFIXES},
    "m": Fraction(1, 1000),
    "": Fraction(1),
}

# [0-9] rather than \d: \d also matches non-ASCII digits, which Kubernetes refuses.
_QUANTITY_RE = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?[0-9]+))?"
)

# No real quantity comes near these; the bounds keep hostile input from costing
# unbounded time (10**huge) or tripping Python's int-from-string digit limit.
_MAX_TEXT_LENGTH = 128
_MAX_EXPONENT = 1000


def bounded_int(digits: str, maximum: int) -> int | None:
    """The value of an ASCII decimal string, or None when it is above ``maximum``.

    Converts no more digits than ``maximum`` has: Python refuses strings of
    more than 4300 digits with a ValueError, and a hostile file can hold more.
    """
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(maximum)):
        return None
    value = int(significant)
    return value if value <= maximum else None


def _text_of(value: object, what: str) -> str:
    if isinstance(value, bool):
        raise QuantityError(f"{what}: expected a quantity, got the boolean {str(value).lower()}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # YAML turns `cpu: 0.5` into a float; its shortest repr is the text the
        # user wrote, which is then parsed exactly like a string.
        if not math.isfinite(value):
            raise QuantityError(f"{what}: {value} is not a valid quantity")
        return repr(value)
    if isinstance(value, str):
        return value
    raise QuantityError(
        f"{what}: expected a quantity (string or number), got {type(value).__name__}"
    )


def parse_quantity(
    value: object, *, what: str = "quantity", allow_negative: bool = False
) -> Fraction:
    """The exact value of a Kubernetes quantity given as text or a YAML number."""
    text = _text_of(value, what)
    match = _QUANTITY_RE.fullmatch(text) if len(text) <= _MAX_TEXT_LENGTH else None
    if match is None or not (match["int"] or match["frac"]):
        raise QuantityError(f"{what}: {quote(text)} is not a valid quantity")
    digits = match["int"] + (match["frac"] or "")
    result = Fraction(int(digits), 10 ** len(match["frac"] or ""))
    if match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(
                f"{what}: {quote(text)} is not a valid quantity (exponent out of range)"
            )
        result *= Fraction(10) ** exponent
    else:
        result *= _MULTIPLIERS[match["suffix"] or ""]
    if match["sign"] == "-":
        result = -result
    if result < 0 and not allow_negative:
        raise QuantityError(f"{what}: {quote(text)} must not be negative")
    return result


def parse_bytes(value: object, *, what: str = "quantity") -> int:
    """A quantity of bytes as an exact, non-negative int64."""
    amount = parse_quantity(value, what=what)
    if amount.denominator != 1:
        text = quote(_text_of(value, what))
        raise QuantityError(f"{what}: {text} is not a whole number of bytes")
    if amount > INT64_MAX:
        text = quote(_text_of(value, what))
        raise QuantityError(f"{what}: {text} cannot be represented as int64")
    return int(amount)


def parse_cpu_millis(value: object, *, what: str = "quantity") -> int:
    """A CPU quantity in millicores, rounded up as Kubernetes' ``MilliValue`` does."""
    amount = parse_quantity(value, what=what)
    millis = math.ceil(amount * 1000)
    if millis > INT64_MAX:
        raise QuantityError(
            f"{what}: {quote(_text_of(value, what))} cannot be represented as int64 millicores"
        )
    return millis


def format_quantity(n: int) -> str:
    """Kubelet's short canonical form: ``0``, ``3Gi``, ``5220Mi``, ``1500M``, ``1536``.

    A whole multiple of 1024 takes the largest binary suffix that divides it,
    else the largest decimal suffix that divides it, else plain digits.
    """
    if n == 0:
        return "0"
    sign = "-" if n < 0 else ""
    magnitude = abs(n)
    for suffixes in (_BINARY_SUFFIXES, _DECIMAL_SUFFIXES):
        for suffix, unit in suffixes:
            if magnitude % unit == 0:
                return f"{sign}{magnitude // unit}{suffix}"
    return f"{sign}{magnitude}"


def format_bytes_human(n: int) -> str:
    """A short approximate binary size for tables: ``1.5Gi``, ``512Mi``, ``2.1Gi``, ``0``.

    Exact values print without decimals; others are rounded to two decimals.
    """
    sign = "-" if n < 0 else ""
    magnitude = abs(n)
    for suffix, unit in _BINARY_SUFFIXES:
        if magnitude >= unit:
            hundredths = round(Fraction(magnitude * 100, unit))
            whole, frac = divmod(hundredths, 100)
            if frac == 0:
                return f"{sign}{whole}{suffix}"
            return f"{sign}{whole}.{frac:02d}".rstrip("0") + suffix
    return f"{sign}{magnitude}"
