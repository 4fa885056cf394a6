"""What a validator must remember across a crash: ``DATA_DIR/consensus/state.cbor``.

* the last message it signed (:class:`~chain.core.consensus.LastSigned`):
  nothing is signed that :func:`~chain.core.consensus.may_sign` refuses, and
  the new last message is on disk (written, fsynced, renamed, directory
  fsynced) *before* the signature is returned, so no signature leaves the
  process ahead of the record that forbids its conflicting twin;
* every message it signed at the current height, with its own proposals'
  blocks: after a restart they are fed back to the state machine first, so it
  counts its own votes again and re-sends them unchanged;
* the state machine's :class:`~chain.core.consensus.Durable` state (round,
  lock, valid value and its proof of lock), written before what follows it
  is signed.

A file that cannot be read is a refusal to start, never a silent reset: a
validator that forgot what it signed could sign its contradiction.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from chain.core import consensus as c
from chain.core import crypto, dagcbor
from chain.core.errors import CodecError


class GuardError(Exception):
    """The guard's file is unreadable: the node must not vote until an operator looks."""


class SignGuard:
    def __init__(self, directory: Path, *, chain_id: str, node_id: str, private_key: bytes) -> None:
        self.path = Path(directory) / "state.cbor"
        self.chain_id = chain_id
        self.node_id = node_id
        self._key = private_key
        self.last: c.LastSigned | None = None
        self.durable: c.Durable | None = None
        self._own: list[c.Message] = []
        self._blocks: dict[bytes, bytes] = {}
        Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            self._load()

    # -- reading ------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            value = dagcbor.decode(self.path.read_bytes())
            last = value["last"]
            self.last = None if last is None else c.LastSigned(*last[:2], c.Kind(last[2]), last[3], last[4])
            self.durable = None if value["durable"] is None else c.durable_from_cbor(value["durable"])
            self._own = [c.message_from_cbor(m) for m in value["own"]]
            self._blocks = {bytes(v): bytes(b) for v, b in value["blocks"]}
        except (CodecError, KeyError, TypeError, ValueError, IndexError, OSError) as exc:
            raise GuardError(f"{self.path} cannot be read ({exc}); refusing to vote rather than forget") from None

    def own_messages(self, height: int) -> list[tuple[c.Message, bytes | None]]:
        """What this validator signed at ``height``, with the blocks of its proposals."""
        return [(m, self._blocks.get(m.value) if m.value else None) for m in self._own if m.height == height]

    # -- writing ----------------------------------------------------------------------------------------
    def persist(self, durable: c.Durable) -> None:
        self.durable = durable
        self._write()

    def sign(self, message: c.Message, block: bytes | None = None) -> c.Message | None:
        """``message`` signed, or None when signing it could contradict what was signed before."""
        data = c.sign_bytes(self.chain_id, message)
        verdict = c.may_sign(self.last, message, data)
        if verdict == "refuse":
            return None
        if verdict == "again" and self.last is not None:
            return _signed(message, self.last.signature)
        signature = crypto.sign(self._key, data)
        self.last = c.LastSigned(message.height, message.round, message.kind, data, signature)
        signed = _signed(message, signature)
        self._own = [m for m in self._own if m.height == message.height] + [signed]
        self._blocks = {v: b for v, b in self._blocks.items() if any(m.value == v for m in self._own)}
        if block is not None and signed.value is not None:
            self._blocks[signed.value] = block
        self._write()
        return signed

    def _write(self) -> None:
        body: dict[str, Any] = {
            "last": None
            if self.last is None
            else [self.last.height, self.last.round, int(self.last.kind), self.last.sign_bytes, self.last.signature],
            "durable": None if self.durable is None else c.durable_to_cbor(self.durable),
            "own": [c.message_to_cbor(m) for m in self._own],
            "blocks": [[v, b] for v, b in self._blocks.items()],
        }
        data = dagcbor.encode(body)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _signed(message: c.Message, signature: bytes) -> c.Message:
    return replace(message, signature=signature)
