"""DAG-CBOR: the one deterministic byte encoding of chain data.

Content addressing only works if a value has exactly one encoding: otherwise
one transaction could carry two CIDs, and a signature over one byte string
would not cover the other. So this module accepts the IPLD data model subset
the chain needs and nothing else:

* null, booleans, integers in [-2**64, 2**64 - 1] (shortest form), UTF-8
  text, byte strings, arrays (lists; tuples encode as arrays), maps with text
  keys, and CIDs as tag 42 over a byte string with a leading ``0x00``;
* **no floats** (their encodings and rounding differ between languages and
  nothing on chain needs them), no ``undefined``, no other tags, no
  indefinite lengths;
* map keys sorted length-first, then bytewise, over their UTF-8 bytes, as
  DAG-CBOR requires. cbor2's canonical mode sorts by the encoded key, which
  for text keys is the same order (the header grows with the length, and keys
  of equal length share a header).

Decoding is strict: the bytes are decoded, checked against the subset, then
encoded again, and anything that does not reproduce the input byte for byte
(non-minimal integers or lengths, unsorted or duplicate keys, trailing bytes,
bignums, floats, other tags) is a :class:`CodecError`. Re-encoding costs
microseconds and replaces a long list of special cases with one comparison
that cannot miss one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cbor2

from .cid import CID
from .errors import CodecError

CID_TAG = 42
MAX_DEPTH = 64
_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1

_SCALARS = (str, bytes, bool, type(None))
_DECODED_LEAVES = (*_SCALARS, CID)


def encode(value: Any) -> bytes:
    """Encode ``value`` as DAG-CBOR; :class:`CodecError` if it is outside the subset."""
    try:
        return cbor2.dumps(_to_cbor(value, 0), canonical=True)
    except cbor2.CBOREncodeError as exc:  # pragma: no cover - _to_cbor filters first
        raise CodecError(f"cannot encode as DAG-CBOR: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> Any:
    """Decode DAG-CBOR bytes, rejecting every encoding but the canonical one.

    The canonical check re-encodes what cbor2 decoded (tags still as
    :class:`cbor2.CBORTag`) before anything is converted, so it costs one C
    call rather than a walk of the value; the walk that follows checks the
    subset and turns tag 42 into :class:`CID`.
    """
    raw = bytes(data)
    if not raw:
        raise CodecError("empty DAG-CBOR input")
    try:
        loaded = cbor2.loads(raw, allow_indefinite=False, allow_duplicate_keys=False, max_depth=MAX_DEPTH + 1)
    except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
        raise CodecError(f"invalid CBOR: {exc}") from None
    try:
        canonical = cbor2.dumps(loaded, canonical=True) == raw
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError):
        canonical = False  # decoded to something this subset has no encoding for
    if not canonical:
        raise CodecError("not canonical DAG-CBOR (re-encoding differs)")
    return _from_cbor(loaded, 0)


def _decode_cid_tag(value: Any) -> CID:
    if not isinstance(value, bytes) or not value or value[0] != 0:
        raise CodecError("tag 42 must wrap a byte string starting with 0x00")
    try:
        cid = CID.from_bytes(value[1:])
    except CodecError as exc:
        raise CodecError(f"invalid CID link: {exc}") from None
    if cid.to_bytes() != value[1:]:
        raise CodecError("invalid CID link: not its canonical encoding")
    return cid


def _to_cbor(value: Any, depth: int) -> Any:
    """Check ``value`` against the subset and turn CIDs into tag 42."""
    if isinstance(value, _SCALARS):
        return value
    if type(value) is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise CodecError(f"integer {value} is outside the DAG-CBOR range")
        return value
    if depth >= MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")
    if isinstance(value, CID):
        return cbor2.CBORTag(CID_TAG, b"\x00" + value.to_bytes())
    if isinstance(value, list | tuple):
        return [_to_cbor(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"map keys must be strings, not {type(key).__name__}")
            out[key] = _to_cbor(item, depth + 1)
        return out
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, float):
        raise CodecError("floats are not allowed in chain data")
    raise CodecError(f"{type(value).__name__} cannot be encoded as DAG-CBOR")


def _from_cbor(value: Any, depth: int) -> Any:
    """Check a decoded value against the subset (cbor2 may produce more types)."""
    if isinstance(value, _DECODED_LEAVES):
        return value
    if type(value) is int:
        if not _INT_MIN <= value <= _INT_MAX:  # a bignum; shortest form is enforced by re-encoding
            raise CodecError(f"integer {value} is outside the DAG-CBOR range")
        return value
    if depth >= MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")
    if type(value) is cbor2.CBORTag:
        if value.tag != CID_TAG:
            raise CodecError(f"CBOR tag {value.tag} is not allowed (only 42, CID links)")
        return _decode_cid_tag(value.value)
    if type(value) is list:
        return [_from_cbor(item, depth + 1) for item in value]
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError("map keys must be strings")
            out[key] = _from_cbor(item, depth + 1)
        return out
    if isinstance(value, float):
        raise CodecError("floats are not allowed in chain data")
    raise CodecError(f"unsupported CBOR item ({type(value).__name__})")
