"""Card rules: Luhn, brand from BIN ranges with its PAN and CVV lengths, expiry, and the card object.

Every check works on `SensitiveDigits` without turning the number into a string; results
and error reasons are fixed words, never digits.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum
from typing import NoReturn

from gateway.capture.sensitive import SensitiveDigits

MAX_EXPIRY_YEARS_AHEAD = 20
POSTCODE_LENGTHS = range(3, 11)


class Brand(Enum):
    """Card schemes the gateway recognises."""

    VISA = "visa"
    MASTERCARD = "mastercard"
    AMEX = "amex"
    DISCOVER = "discover"
    DINERS = "diners"
    JCB = "jcb"
    UNIONPAY = "unionpay"
    MAESTRO = "maestro"


@dataclass(frozen=True)
class BrandRule:
    """One IIN range: PANs whose first `prefix_len` digits lie in [low, high] belong to `brand`."""

    brand: Brand
    low: int
    high: int
    prefix_len: int
    pan_lengths: tuple[int, ...]
    cvv_length: int
    luhn: bool = True


def _r(brand: Brand, low: int, high: int, lengths: tuple[int, ...], cvv: int = 3, luhn: bool = True) -> BrandRule:
    return BrandRule(brand, low, high, len(str(low)), lengths, cvv, luhn)


_V, _MC, _AX, _DI, _DC, _JCB, _UP, _MA = (
    Brand.VISA, Brand.MASTERCARD, Brand.AMEX, Brand.DISCOVER,
    Brand.DINERS, Brand.JCB, Brand.UNIONPAY, Brand.MAESTRO,
)
_L16_19 = (16, 17, 18, 19)

# ISO/IEC 7812 IIN ranges as the schemes publish them; the longest matching prefix wins,
# so Discover's 622126-622925 beats UnionPay's 62 and Maestro's 6759 stands alone.
BRAND_RULES: tuple[BrandRule, ...] = (
    _r(_V, 4, 4, (13, 16, 19)),
    _r(_MC, 51, 55, (16,)),
    _r(_MC, 2221, 2720, (16,)),
    _r(_AX, 34, 34, (15,), cvv=4),
    _r(_AX, 37, 37, (15,), cvv=4),
    _r(_DI, 6011, 6011, _L16_19),
    _r(_DI, 644, 649, _L16_19),
    _r(_DI, 65, 65, _L16_19),
    _r(_DI, 622126, 622925, _L16_19),
    _r(_DC, 300, 305, (14, 15, 16, 17, 18, 19)),
    _r(_DC, 3095, 3095, (14, 15, 16, 17, 18, 19)),
    _r(_DC, 36, 36, (14, 15, 16, 17, 18, 19)),
    _r(_DC, 38, 39, (16, 17, 18, 19)),
    _r(_JCB, 3528, 3589, _L16_19),
    # UnionPay does not require a Luhn check digit on every 62 card; the processor decides.
    _r(_UP, 62, 62, _L16_19, luhn=False),
    _r(_UP, 81, 81, _L16_19, luhn=False),
    _r(_MA, 5018, 5018, tuple(range(12, 20))),
    _r(_MA, 5020, 5020, tuple(range(12, 20))),
    _r(_MA, 5038, 5038, tuple(range(12, 20))),
    _r(_MA, 5893, 5893, tuple(range(12, 20))),
    _r(_MA, 6304, 6304, tuple(range(12, 20))),
    _r(_MA, 6759, 6759, tuple(range(12, 20))),
    _r(_MA, 6761, 6763, tuple(range(12, 20))),
)

MAX_PAN_LENGTH = 19
MIN_PAN_LENGTH = 12


def luhn_valid(digits: SensitiveDigits) -> bool:
    """ISO/IEC 7812-1 Annex B check digit: doubling every second digit from the right sums to 0 mod 10."""
    total = 0
    n = len(digits)
    if n < 2:
        return False
    for i in range(n):
        d = digits.value_at(n - 1 - i)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _could_match(rule: BrandRule, prefix: int, known: int) -> bool:
    """Whether a PAN starting with `prefix` (its first `known` digits) can still fall in `rule`."""
    if known >= rule.prefix_len:
        head = prefix // 10 ** (known - rule.prefix_len)
        return rule.low <= head <= rule.high
    scale = 10 ** (rule.prefix_len - known)
    return prefix * scale <= rule.high and (prefix + 1) * scale - 1 >= rule.low


def brand_rule(digits: SensitiveDigits) -> BrandRule | None:
    """The rule for these leading digits once it is certain, else None (too few digits or unknown)."""
    known = min(6, len(digits))
    if known == 0:
        return None
    prefix = digits.prefix_value(known)
    candidates = [rule for rule in BRAND_RULES if _could_match(rule, prefix, known)]
    matched = [rule for rule in candidates if rule.prefix_len <= known]
    if not matched:
        return None
    best = max(matched, key=lambda rule: rule.prefix_len)
    if any(rule.prefix_len > best.prefix_len and rule.brand is not best.brand for rule in candidates):
        return None
    return best


def pan_problem(digits: SensitiveDigits) -> str | None:
    """Why a complete PAN is not acceptable ("unknown_brand", "bad_length", "luhn"), or None."""
    rule = brand_rule(digits)
    if rule is None:
        return "unknown_brand"
    if len(digits) not in rule.pan_lengths:
        return "bad_length"
    if rule.luhn and not luhn_valid(digits):
        return "luhn"
    return None


def expiry_month_year(digits: SensitiveDigits) -> tuple[int, int]:
    """(month, four-digit year) from MMYY digits; no range check."""
    if len(digits) != 4:
        raise ValueError("expiry is not MMYY")
    month = digits.value_at(0) * 10 + digits.value_at(1)
    year = 2000 + digits.value_at(2) * 10 + digits.value_at(3)
    return month, year


def expiry_problem(digits: SensitiveDigits, today: datetime.date) -> str | None:
    """Why MMYY is not acceptable ("bad_length", "bad_month", "expired", "too_far"), or None.

    A card is valid through the last day of its expiry month.
    """
    if len(digits) != 4:
        return "bad_length"
    month, year = expiry_month_year(digits)
    if not 1 <= month <= 12:
        return "bad_month"
    if (year, month) < (today.year, today.month):
        return "expired"
    if year > today.year + MAX_EXPIRY_YEARS_AHEAD:
        return "too_far"
    return None


def cvv_problem(digits: SensitiveDigits, rule: BrandRule | None) -> str | None:
    """Why a CVV is not acceptable for the brand ("bad_length"), or None; 3 or 4 when the brand is unknown."""
    expected = (rule.cvv_length,) if rule is not None else (3, 4)
    return None if len(digits) in expected else "bad_length"


def postcode_problem(digits: SensitiveDigits) -> str | None:
    """Why postcode digits are not acceptable ("bad_length"), or None."""
    return None if len(digits) in POSTCODE_LENGTHS else "bad_length"


class SensitiveCard:
    """A validated card held only in wipeable buffers; repr shows the brand and last four only."""

    __slots__ = ("pan_digits", "expiry_digits", "cvv_digits", "postcode_digits", "brand", "last4")

    def __init__(
        self,
        pan_digits: SensitiveDigits,
        brand: Brand,
        expiry_digits: SensitiveDigits | None = None,
        cvv_digits: SensitiveDigits | None = None,
        postcode_digits: SensitiveDigits | None = None,
    ) -> None:
        self.pan_digits = pan_digits
        self.expiry_digits = expiry_digits
        self.cvv_digits = cvv_digits
        self.postcode_digits = postcode_digits
        self.brand = brand
        self.last4 = pan_digits.last4()

    def expiry(self) -> tuple[int, int] | None:
        """(month, year) or None when the expiry was not captured."""
        if self.expiry_digits is None or len(self.expiry_digits) != 4:
            return None
        return expiry_month_year(self.expiry_digits)

    def wipe(self) -> None:
        """Zero every buffer of the card."""
        for buf in (self.pan_digits, self.expiry_digits, self.cvv_digits, self.postcode_digits):
            if buf is not None:
                buf.wipe()

    @property
    def wiped(self) -> bool:
        """True once the PAN buffer holds nothing."""
        return len(self.pan_digits) == 0

    def __repr__(self) -> str:
        return f"SensitiveCard(brand={self.brand.value}, last4={self.last4})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SensitiveCard cannot be pickled")
