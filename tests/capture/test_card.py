"""Card rules: Luhn, every brand's IIN ranges and lengths, CVV lengths, expiry edges, the buffers."""

from __future__ import annotations

import copy
import datetime
import pickle

import pytest

from gateway.capture.card import (
    BRAND_RULES,
    Brand,
    SensitiveCard,
    brand_rule,
    cvv_problem,
    expiry_problem,
    luhn_valid,
    pan_problem,
    postcode_problem,
)
from gateway.capture.sensitive import SensitiveDigits, SensitiveDigitsError
from tests.capture.cards import TEST_PANS, digits, flip_last, make_pan

TODAY = datetime.date(2025, 6, 15)


@pytest.mark.parametrize("pan", TEST_PANS + ["4222222222222", "79927398713"])
def test_luhn_accepts_known_numbers(pan):
    assert luhn_valid(digits(pan))


@pytest.mark.parametrize("pan", TEST_PANS)
def test_luhn_rejects_one_wrong_digit(pan):
    assert not luhn_valid(digits(flip_last(pan)))


def test_luhn_rejects_adjacent_swap():
    assert not luhn_valid(digits("79927398731"))


def test_luhn_needs_two_digits():
    assert not luhn_valid(digits("0"))


@pytest.mark.parametrize(
    "pan, brand",
    [
        ("4111111111111111", Brand.VISA),
        ("5555555555554444", Brand.MASTERCARD),
        ("2223003122003222", Brand.MASTERCARD),
        ("378282246310005", Brand.AMEX),
        ("6011111111111117", Brand.DISCOVER),
        ("3566002020360505", Brand.JCB),
        ("36227206271667", Brand.DINERS),
        ("6200000000000005", Brand.UNIONPAY),
        ("6759649826438453", Brand.MAESTRO),
    ],
)
def test_published_test_numbers(pan, brand):
    assert brand_rule(digits(pan)).brand is brand
    assert pan_problem(digits(pan)) is None


def _range_edges():
    for rule in BRAND_RULES:
        for prefix in {rule.low, rule.high}:
            for length in rule.pan_lengths:
                yield rule, str(prefix), length


@pytest.mark.parametrize("rule, prefix, length", list(_range_edges()))
def test_every_range_edge_and_length(rule, prefix, length):
    pan = make_pan(prefix, length)
    found = brand_rule(digits(pan))
    assert found is not None and found.brand is rule.brand
    assert pan_problem(digits(pan)) is None


@pytest.mark.parametrize(
    "prefix",
    ["2220", "2721", "56", "50", "33", "3527", "3590", "306", "622125", "622926", "643", "1", "9", "7"],
)
def test_just_outside_ranges(prefix):
    rule = brand_rule(digits(make_pan(prefix, 16)))
    name = rule.brand if rule else None
    # each of these is outside the scheme whose edge it neighbours
    expected = {"622125": Brand.UNIONPAY, "622926": Brand.UNIONPAY}.get(prefix)
    assert name is expected


@pytest.mark.parametrize(
    "pan, reason",
    [
        (make_pan("4", 15), "bad_length"),
        (make_pan("51", 15), "bad_length"),
        (make_pan("34", 16), "bad_length"),
        (make_pan("36", 13), "bad_length"),
        (make_pan("9", 16), "unknown_brand"),
        (flip_last("4111111111111111"), "luhn"),
    ],
)
def test_pan_problems(pan, reason):
    assert pan_problem(digits(pan)) == reason


def test_unionpay_without_luhn_digit_is_accepted():
    assert pan_problem(digits(flip_last("6200000000000005"))) is None


@pytest.mark.parametrize(
    "partial, brand",
    [("4", Brand.VISA), ("5", None), ("51", Brand.MASTERCARD), ("62", None), ("62212", None),
     ("622126", Brand.DISCOVER), ("622100", Brand.UNIONPAY), ("6759", Brand.MAESTRO), ("35", None),
     ("3528", Brand.JCB), ("30", None), ("300", Brand.DINERS), ("37", Brand.AMEX)],
)
def test_brand_decided_only_when_certain(partial, brand):
    rule = brand_rule(digits(partial))
    assert (rule.brand if rule else None) is brand


@pytest.mark.parametrize(
    "pan, cvv, ok",
    [("378282246310005", "1234", True), ("378282246310005", "123", False),
     ("4111111111111111", "123", True), ("4111111111111111", "1234", False)],
)
def test_cvv_length_follows_brand(pan, cvv, ok):
    assert (cvv_problem(digits(cvv), brand_rule(digits(pan))) is None) is ok


@pytest.mark.parametrize(
    "mmyy, reason",
    [("0625", None), ("0525", "expired"), ("1224", "expired"), ("0126", None), ("1299", "too_far"),
     ("1345", "bad_month"), ("0025", "bad_month"), ("062", "bad_length"), ("12345", "bad_length"),
     ("1245", None), ("0146", "too_far")],
)
def test_expiry_edges(mmyy, reason):
    buf = SensitiveDigits()
    for ch in mmyy:
        buf.append(ch)
    assert expiry_problem(buf, TODAY) == reason


def test_expiry_valid_through_end_of_month():
    assert expiry_problem(digits("0225"), datetime.date(2025, 2, 28)) is None
    assert expiry_problem(digits("0225"), datetime.date(2025, 3, 1)) == "expired"


@pytest.mark.parametrize("code, ok", [("12", False), ("123", True), ("1234567890", True), ("12345678901", False)])
def test_postcode_lengths(code, ok):
    assert (postcode_problem(digits(code)) is None) is ok


def test_digits_never_shown():
    buf = digits("4111111111111111")
    for text in (repr(buf), str(buf), f"{buf}", f"{buf!r}", "%s" % buf):
        assert "1111" not in text and "4111" not in text
    assert len(buf) == 16 and buf.last4() == "1111"


def test_digits_wipe_zeroes_memory():
    buf = digits("4111111111111111")
    raw = buf._buf
    buf.wipe()
    assert len(buf) == 0 and not any(raw)


def test_digits_not_picklable_or_copyable():
    buf = digits("4111")
    with pytest.raises(TypeError):
        pickle.dumps(buf)
    with pytest.raises(TypeError):
        copy.copy(buf)
    with pytest.raises(TypeError):
        copy.deepcopy(buf)
    with pytest.raises(TypeError):
        hash(buf)


def test_digits_compare_by_content():
    assert digits("1234") == digits("1234")
    assert digits("1234") != digits("1235")
    assert digits("1234") != digits("12345")


def test_digit_buffer_errors_hold_no_digit():
    buf = SensitiveDigits(capacity=2)
    buf.append("4")
    buf.append("1")
    with pytest.raises(SensitiveDigitsError) as full:
        buf.append("7")
    with pytest.raises(SensitiveDigitsError) as bad:
        buf.append("x")
    assert not any(ch.isdigit() for ch in str(full.value) + str(bad.value))


def test_write_ascii():
    out = bytearray(b"n=")
    digits("4111").write_ascii(out)
    assert out == b"n=4111"


def test_card_repr_and_wipe():
    card = SensitiveCard(digits("4111111111111111"), Brand.VISA, digits("1230"), digits("123"))
    assert repr(card) == "SensitiveCard(brand=visa, last4=1111)"
    assert card.expiry() == (12, 2030)
    with pytest.raises(TypeError):
        pickle.dumps(card)
    card.wipe()
    assert card.wiped and len(card.cvv_digits) == 0 and len(card.expiry_digits) == 0
