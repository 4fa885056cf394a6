"""A patient's Yilian ID: short, readable aloud, typed without mistakes going unnoticed.

Eight random symbols of Crockford's base32 (no I, L, O or U, so nothing reads
as another letter) and a Luhn mod 32 check symbol, shown as ``YL-4K7P-M2QD-X``.
40 random bits: a billion patients take a millionth of the space, and a
mistyped symbol or two swapped neighbours fail the check, so a doctor is told
"not a valid Yilian ID" instead of reaching another patient (nearly every swap
of two neighbours fails too). It identifies,
it does not authenticate: knowing someone's ID gives no access to anything.
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BODY_LENGTH = 8
PREFIX = "YL"
_VALUES = {symbol: i for i, symbol in enumerate(ALPHABET)}
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})
_SEPARATORS = re.compile(r"[\s\-_.·]+")


def check_symbol(body: str) -> str:
    """Luhn mod N (N = 32) over ``body``: catches every single substitution and nearly every adjacent swap."""
    n = len(ALPHABET)
    total, factor = 0, 2
    for symbol in reversed(body):
        addend = factor * _VALUES[symbol]
        total += addend // n + addend % n
        factor = 1 if factor == 2 else 2
    return ALPHABET[(n - total % n) % n]


def new_health_id() -> str:
    """A random ID in its stored form (nine symbols, no prefix, no dashes)."""
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return body + check_symbol(body)


def normalize(text: str) -> str | None:
    """The stored form of what a person typed or scanned, or None if it is not a valid ID.

    Accepts any case, spaces or dashes, the ``YL`` prefix or none, and O/I/L for 0/1.
    """
    compact = _SEPARATORS.sub("", text or "").upper()
    if compact.startswith(PREFIX) and len(compact) == len(PREFIX) + BODY_LENGTH + 1:
        compact = compact[len(PREFIX) :]
    compact = compact.translate(_LOOKALIKES)
    if len(compact) != BODY_LENGTH + 1 or any(symbol not in _VALUES for symbol in compact):
        return None
    body, check = compact[:BODY_LENGTH], compact[BODY_LENGTH]
    return compact if check_symbol(body) == check else None


def looks_like_health_id(text: str) -> bool:
    """Whether ``text`` was meant as an ID (so a failed check is a typo, not an email address)."""
    compact = _SEPARATORS.sub("", text or "").upper()
    return "@" not in compact and (compact.startswith(PREFIX) or len(compact) == BODY_LENGTH + 1)


def formatted(health_id: str) -> str:
    """``YL-4K7P-M2QD-X``: the form people read, print and type."""
    return f"{PREFIX}-{health_id[:4]}-{health_id[4:8]}-{health_id[8:]}"
