"""The node's one transaction-type registry, filled by the apps in ``AppConfig.ready``.

DESIGN section 2: ``chain`` knows no medical words. Each app describes its
transaction types with :class:`chain.core.registry.TxType` and hands them to
:func:`register_tx_type` from its ``ready()``; the ledger services, the seal
task and ``chain verify`` all read the same :func:`registry`. The ledger's own
types (``node.joined``, ``node.left``) and the neutral ``chain.demo`` type
used by ``chain submit-demo`` and the benchmark are present from the start.

An app whose type writes state it wants to query also registers a
:class:`StateProjection`: a table that mirrors the state keys under a prefix,
one row per key. The projection is a pure function of the state, so ``chain
verify`` can check it against the state it rebuilds from the blocks.

This module imports only the pure core, so ``ready()`` can import it cheaply
and without touching a store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain.core import ledger
from chain.core.registry import Field, Registry, RegistryError, TxType, reject
from chain.core.state import StateChange, StateView
from chain.core.transaction import Transaction

DEMO_PREFIX = "demo/"


def _validate_demo(view: StateView, tx: Transaction) -> None:
    if tx.payload["nonce"] < 0:
        reject("nonce must not be negative")


def _apply_demo(view: StateView, tx: Transaction) -> list[StateChange]:
    return [StateChange(DEMO_PREFIX + tx.signer.hex(), tx.payload["nonce"])]


DEMO = TxType(
    name="chain.demo",
    schema={"nonce": Field(int), "memo": Field(str, required=False, max_length=64)},
    validate=_validate_demo,
    apply=_apply_demo,
    description="A neutral test transaction (load tests, checks); records the signer's last nonce.",
)


@dataclass(frozen=True)
class StateProjection:
    """A table mirroring the state keys under ``prefix``.

    ``model`` has a unique ``state_key`` field; ``fields(key, value)`` gives
    the other column values of the row for a state key and its (decoded)
    value. It must be deterministic: ``chain verify`` recomputes it.
    """

    prefix: str
    model: Any
    fields: Callable[[str, Any], dict[str, Any]]


_registry = ledger.default_registry()
_registry.register(DEMO)
_projections: dict[str, StateProjection] = {}


def registry() -> Registry:
    """The registry every ledger operation of this process uses."""
    return _registry


def register_tx_type(txtype: TxType) -> TxType:
    """Add an app's type. Registering an equal type again is a no-op (``ready()`` may rerun)."""
    if txtype.name in _registry:
        if _registry.get(txtype.name) == txtype:
            return txtype
        raise RegistryError(f"another transaction type is already registered as {txtype.name!r}")
    return _registry.register(txtype)


# Transaction types that say a DAG object is kept (its ``pins`` field) and, optionally, that
# another no longer is (its ``releases`` field): the consortium replicates what they name.
_pin_intents: dict[str, tuple[str, str | None]] = {}


def register_pin_intent(type_name: str, *, pins: str, releases: str | None = None) -> None:
    _pin_intents[type_name] = (pins, releases)


def pin_intents() -> dict[str, tuple[str, str | None]]:
    return dict(_pin_intents)


def register_projection(projection: StateProjection) -> None:
    """Mirror the state under ``projection.prefix`` into ``projection.model``."""
    existing = _projections.get(projection.prefix)
    if existing is not None and existing != projection:
        raise RegistryError(f"state prefix {projection.prefix!r} is already projected")
    _projections[projection.prefix] = projection


def projections() -> list[StateProjection]:
    return list(_projections.values())


# What an app does once a block that changed its state has committed (the accounts app keeps its
# directory rows in step with the listings). Keyed by name, so ``ready()`` may run again.
_commit_hooks: dict[str, tuple[tuple[str, ...], Callable[[list[str]], None]]] = {}


def register_commit_hook(name: str, prefixes: tuple[str, ...], hook: Callable[[list[str]], None]) -> None:
    """Call ``hook(keys)`` after each committed block that changed state keys under ``prefixes``.

    It runs after the block's database transaction committed, in the process
    that committed it; an error is logged and does not undo the block (the app
    repairs from the projections, which are the truth).
    """
    _commit_hooks[name] = (prefixes, hook)


def commit_hooks() -> list[tuple[tuple[str, ...], Callable[[list[str]], None]]]:
    return list(_commit_hooks.values())
