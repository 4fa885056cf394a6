"""The registry of transaction types.

The ledger knows no medical words. An app describes each of its transaction
types once: a name, a declarative payload schema, a validator and an applier,
and registers it (in ``AppConfig.ready``). The ledger then runs, for every
transaction, the same steps in the same order on every node:

1. the schema (:func:`check_payload`): every field known, required fields
   present, exact types, lengths bounded. It is strict on purpose: an unknown
   field is rejected rather than ignored, so a payload cannot carry data that
   no validator looked at, and two versions of an app cannot silently
   disagree on what a payload means;
2. ``validate(view, tx)``: the type's own rules against the current state;
   it raises :class:`~chain.core.reasons.ValidationError` (use :func:`reject`);
3. ``apply(view, tx)``: returns the list of state changes; it must not write.
   Returning changes instead of writing keeps a block all-or-nothing and lets
   the ledger hash exactly what changed.

Validators and appliers must be deterministic functions of the state and the
transaction (no clock, no randomness, no database outside the view): every
node re-runs them and must reach the same state hash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .cid import CID
from .errors import CoreError
from .reasons import Reason, ValidationError
from .state import StateChange, StateView
from .transaction import Transaction

Validator = Callable[[StateView, Transaction], None]
Applier = Callable[[StateView, Transaction], list[StateChange]]

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_MAX_NAME = 64
_ALLOWED_KINDS = (str, int, bool, bytes, list, dict, CID, type(None))


class RegistryError(CoreError, ValueError):
    """A transaction type that cannot be registered."""


@dataclass(frozen=True)
class Field:
    """One payload field: its type(s), whether it is required, its maximum length.

    ``max_length`` counts characters for text, bytes for byte strings and
    items for lists. ``items`` fixes the type of a list's elements. ``int``
    never accepts ``True``/``False``.
    """

    kind: type | tuple[type, ...]
    required: bool = True
    max_length: int | None = None
    items: type | tuple[type, ...] | None = None

    def __post_init__(self) -> None:
        for kind in _kinds(self.kind) + (_kinds(self.items) if self.items else ()):
            if kind not in _ALLOWED_KINDS:
                raise RegistryError(f"{kind!r} is not a DAG-CBOR payload type")


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = _kinds(kind)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def check_payload(schema: Mapping[str, Field], payload: Mapping[str, Any]) -> None:
    """Raise ``invalid-payload`` unless ``payload`` matches ``schema`` exactly."""
    unknown = sorted(set(payload) - set(schema))
    if unknown:
        raise ValidationError(Reason.INVALID_PAYLOAD, f"unknown field(s): {', '.join(unknown)}")
    for name, spec in schema.items():
        if name not in payload:
            if spec.required:
                raise ValidationError(Reason.INVALID_PAYLOAD, f"missing field {name!r}")
            continue
        _check_field(name, spec, payload[name])


def _check_field(name: str, spec: Field, value: Any) -> None:
    if not _is(value, spec.kind):
        raise ValidationError(
            Reason.INVALID_PAYLOAD, f"field {name!r} has the wrong type ({type(value).__name__})"
        )
    sized = isinstance(value, str | bytes | list)
    if spec.max_length is not None and sized and len(value) > spec.max_length:
        raise ValidationError(
            Reason.INVALID_PAYLOAD, f"field {name!r} is longer than {spec.max_length}"
        )
    items = spec.items
    if items is not None and isinstance(value, list) and not all(_is(i, items) for i in value):
        raise ValidationError(
            Reason.INVALID_PAYLOAD, f"field {name!r} has an item of the wrong type"
        )


def reject(message: str) -> NoReturn:
    """Raise the ``rejected`` error a validator uses to refuse a transaction."""
    raise ValidationError(Reason.REJECTED, message)


def accept(view: StateView, tx: Transaction) -> None:
    """A validator with no rules beyond the schema."""


def no_changes(view: StateView, tx: Transaction) -> list[StateChange]:
    """An applier for types that only record a fact on chain."""
    return []


@dataclass(frozen=True)
class TxType:
    """A named transaction type: schema, validator, applier."""

    name: str
    schema: Mapping[str, Field]
    validate: Validator = accept
    apply: Applier = no_changes
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.name) > _MAX_NAME or not _NAME.match(self.name):
            raise RegistryError(
                f"transaction type name {self.name!r} must look like 'app.action' "
                "(lowercase, dotted, at most 64 characters)"
            )


class Registry:
    """The transaction types a node accepts, by name."""

    def __init__(self, types: Iterable[TxType] = ()) -> None:
        self._types: dict[str, TxType] = {}
        for txtype in types:
            self.register(txtype)

    def register(self, txtype: TxType) -> TxType:
        """Add ``txtype``; a second type under the same name is an error."""
        if txtype.name in self._types:
            raise RegistryError(f"transaction type {txtype.name!r} is already registered")
        self._types[txtype.name] = txtype
        return txtype

    def get(self, name: str) -> TxType:
        """The type called ``name``; ``unknown-type`` if there is none."""
        try:
            return self._types[name]
        except KeyError:
            raise ValidationError(
                Reason.UNKNOWN_TYPE, f"unknown transaction type {name!r}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        return sorted(self._types)
