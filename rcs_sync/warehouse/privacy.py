"""Phone numbers are personal data: store them plain, as a keyed hash, or masked.

The transform is compiled to SQL and applied while DuckDB stages a response, so the
raw number never reaches a table (quarantined records included) and Python never
touches a record.

- `hash`: HMAC-SHA256 (RFC 2104) under a secret key, as 64 hex digits. Equal numbers
  give equal hashes, so joins and distinct counts still work; without the key the
  hash cannot be reversed by enumerating the (small) space of phone numbers.
- `mask`: the `+`, the country calling code and the last two digits; the rest is `*`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rcs_sync.config import NumberMode as Mode

BLOCK = 64
"""SHA-256's block size: HMAC keys are padded (or first hashed) to it."""

KEPT_DIGITS = 2

# E.164 calling codes: those starting with 1 or 7 have one digit; these two-digit
# prefixes are complete codes; every other code has three digits.
TWO_DIGIT_CODES = [
    "20",
    "27",
    "30",
    "31",
    "32",
    "33",
    "34",
    "36",
    "39",
    "40",
    "41",
    "43",
    "44",
    "45",
    "46",
    "47",
    "48",
    "49",
    "51",
    "52",
    "53",
    "54",
    "55",
    "56",
    "57",
    "58",
    "60",
    "61",
    "62",
    "63",
    "64",
    "65",
    "66",
    "81",
    "82",
    "84",
    "86",
    "90",
    "91",
    "92",
    "93",
    "94",
    "95",
    "98",
]


def _pads(key: bytes) -> tuple[str, str]:
    """HMAC's inner and outer padded keys, as hex for `unhex()`."""
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    inner = bytes(b ^ 0x36 for b in key)
    outer = bytes(b ^ 0x5C for b in key)
    return inner.hex(), outer.hex()


def _hmac_sql(value: str, key: bytes) -> str:
    inner, outer = _pads(key)
    return f"sha256(unhex('{outer}') || unhex(sha256(unhex('{inner}') || encode({value}))))"


def _mask_sql(value: str) -> str:
    digits = f"regexp_replace({value}, '[^0-9]', '', 'g')"
    two = ", ".join(f"'{code}'" for code in TWO_DIGIT_CODES)
    code_length = (
        f"CASE WHEN {digits}[1] IN ('1', '7') THEN 1 "
        f"WHEN {digits}[1:2] IN ({two}) THEN 2 ELSE 3 END"
    )
    hidden = f"greatest(length({digits}) - {code_length} - {KEPT_DIGITS}, 0)"
    return (
        f"CASE WHEN {value} IS NULL THEN NULL ELSE "
        f"'+' || {digits}[1:{code_length}] || repeat('*', {hidden}) "
        f"|| {digits}[{code_length} + {hidden} + 1:] END"
    )


@dataclass(frozen=True)
class Privacy:
    mode: Mode = "plain"
    key: bytes | None = None

    def __post_init__(self) -> None:
        if self.mode == "hash" and not self.key:
            raise ValueError("number = 'hash' needs a secret key")

    def sql(self, value: str) -> str:
        """SQL turning the expression `value` (a VARCHAR number) into what is stored."""
        if self.mode == "hash":
            assert self.key is not None
            return _hmac_sql(value, self.key)
        if self.mode == "mask":
            return _mask_sql(value)
        return value


PLAIN = Privacy()
