"""Kubernetes quantities: exact parsing, kubelet's canonical form, error messages."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_plugin.errors import InputError, QuantityError
from nri_plugin.quantity import (
    INT64_MAX,
    format_bytes_human,
    format_quantity,
    parse_bytes,
    parse_cpu_millis,
    parse_quantity,
)

GI = 1 << 30
MI = 1 << 20


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", Fraction(0)),
        ("1", Fraction(1)),
        ("1Ki", Fraction(1024)),
        ("1Mi", Fraction(MI)),
        ("1Gi", Fraction(GI)),
        ("1Ti", Fraction(1 << 40)),
        ("1Pi", Fraction(1 << 50)),
        ("1Ei", Fraction(1 << 60)),
        ("1k", Fraction(1000)),
        ("1M", Fraction(10**6)),
        ("1G", Fraction(10**9)),
        ("1T", Fraction(10**12)),
        ("1P", Fraction(10**15)),
        ("1E", Fraction(10**18)),
        ("100m", Fraction(1, 10)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("1e-3", Fraction(1, 1000)),
        ("1e+3", Fraction(1000)),
        ("1.5Gi", Fraction(3 * GI, 2)),
        ("1.5e3", Fraction(1500)),
        ("2148Mi", Fraction(2148 * MI)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("+2Gi", Fraction(2 * GI)),
        ("0.1", Fraction(1, 10)),
        (1024, Fraction(1024)),
        (0.5, Fraction(1, 2)),
    ],
)
def test_parse_quantity_is_exact(text: str | int | float, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_decimal_fractions_are_exact_not_floats() -> None:
    # 0.1 + 0.2 == 0.3 only holds for exact arithmetic.
    assert parse_quantity("0.1") + parse_quantity("0.2") == parse_quantity("0.3")
    assert parse_bytes("1.5Gi") == 1610612736


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12XB",
        "1 Gi",
        " 1Gi",
        "1.2.3",
        "e3",
        "1e",
        "Ki",
        "1ki",
        "1K",
        "1Gi1",
        ".",
        "+",
        "1e3Ki",
        "٣",  # a non-ASCII digit
        "1e99999",
        "9" * 200,
    ],
)
def test_malformed_quantity_names_text_and_what(text: str) -> None:
    with pytest.raises(QuantityError) as err:
        parse_quantity(text, what="topology.nodes[1].memory")
    message = str(err.value)
    assert message.startswith("topology.nodes[1].memory: ")
    assert "not a valid quantity" in message
    assert "\n" not in message
    if len(text) < 50:
        assert f'"{text}"' in message


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}, float("nan"), float("inf")])
def test_wrong_types_are_refused(value: object) -> None:
    with pytest.raises(QuantityError, match=r"^limits\.memory: "):
        parse_quantity(value, what="limits.memory")


def test_quantity_errors_are_input_errors() -> None:
    with pytest.raises(InputError):
        parse_quantity("x")


def test_negative_needs_allow_negative() -> None:
    with pytest.raises(QuantityError, match=r'^q: "-1Gi" must not be negative$'):
        parse_quantity("-1Gi", what="q")
    assert parse_quantity("-1Gi", allow_negative=True) == -GI
    assert parse_quantity("-0") == 0


def test_parse_bytes() -> None:
    assert parse_bytes("3Gi", what="m") == 3 * GI
    assert parse_bytes(1073741824, what="m") == GI
    assert parse_bytes("1e3", what="m") == 1000
    assert parse_bytes("7Ei", what="m") == 7 << 60
    assert parse_bytes(str(INT64_MAX), what="m") == INT64_MAX


@pytest.mark.parametrize("text", ["0.5", "1m", "1.1", "1e-3"])
def test_parse_bytes_refuses_fractions_of_a_byte(text: str) -> None:
    with pytest.raises(QuantityError) as err:
        parse_bytes(text, what="memory")
    assert str(err.value) == f'memory: "{text}" is not a whole number of bytes'


def test_parse_bytes_refuses_negative() -> None:
    with pytest.raises(QuantityError, match=r'^memory: "-1" must not be negative$'):
        parse_bytes("-1", what="memory")


@pytest.mark.parametrize("text", ["8Ei", str(INT64_MAX + 1), "1e19"])
def test_parse_bytes_refuses_more_than_int64(text: str) -> None:
    with pytest.raises(QuantityError) as err:
        parse_bytes(text, what="memory")
    assert str(err.value) == f'memory: "{text}" cannot be represented as int64'


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("100m", 100),
        ("1", 1000),
        ("2", 2000),
        ("0.5", 500),
        (0.5, 500),
        ("1.5", 1500),
        ("1e-4", 1),  # rounded up, as MilliValue
        ("0.0001", 1),
        ("1.0001", 1001),
        (3, 3000),
        ("0", 0),
    ],
)
def test_parse_cpu_millis(text: str | int | float, millis: int) -> None:
    assert parse_cpu_millis(text, what="cpu") == millis


def test_parse_cpu_millis_names_bad_text() -> None:
    with pytest.raises(QuantityError, match=r'^resources\.cpu: "two" is not a valid quantity$'):
        parse_cpu_millis("two", what="resources.cpu")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (3 * GI, "3Gi"),
        (5220 * MI, "5220Mi"),
        (100 * MI, "100Mi"),
        (1500 * 10**6, "1500M"),
        (1024, "1Ki"),
        (1000, "1k"),
        (1536, "1536"),
        (1, "1"),
        (2 * GI + 4 * MI, "2052Mi"),
        (1 << 60, "1Ei"),
        (1 << 62, "4Ei"),
        (10**9, "1G"),
        (5 * 10**9, "5G"),
        # a multiple of 1024 always takes a binary suffix, even when round in decimal
        (10**12, "976562500Ki"),
        (-3 * GI, "-3Gi"),
        (2048 * 1024, "2Mi"),
    ],
)
def test_format_quantity(n: int, text: str) -> None:
    assert format_quantity(n) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (512, "512"),
        (512 * MI, "512Mi"),
        (3 * GI // 2, "1.5Gi"),
        (2148 * MI, "2.1Gi"),
        (GI + 256 * MI, "1.25Gi"),
        (16 * GI, "16Gi"),
        (-GI, "-1Gi"),
    ],
)
def test_format_bytes_human(n: int, text: str) -> None:
    assert format_bytes_human(n) == text


@given(st.integers(min_value=0, max_value=INT64_MAX))
def test_format_quantity_round_trips(n: int) -> None:
    assert parse_bytes(format_quantity(n)) == n


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from([1, 1024, MI, GI, 1000]))
def test_format_quantity_round_trips_round_numbers(count: int, unit: int) -> None:
    n = count * unit
    assert parse_bytes(format_quantity(n)) == n
    assert parse_quantity(format_quantity(-n), allow_negative=True) == -n
