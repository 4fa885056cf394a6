"""The consensus process of a consortium node (``manage.py consensus``, a ``runnode`` child).

Where it runs and why (DESIGN section 7): one process per node holds the
chain store's primary instance and runs one single-threaded loop with real
timers (a heap of deadlines, not Celery countdowns, which a broker may
redeliver). Threads around it only move bytes: the peer server's threads
put what peers send into the loop's inbox, one sender thread per peer posts
what the loop broadcasts, and a watcher asks peers their heights. Every
decision (verifying a consensus message against the validator set of its
height, validating a proposed block, signing through the double-sign guard,
committing a decided block) happens on the loop's thread, in order.

One height:

1. The height starts when this node has transactions pending or hears a
   validator at this height (no empty blocks on an idle consortium, and no
   rounds piling up while nobody has anything to say).
2. The proposer builds a block from its mempool (``chain_propose``); other
   nodes check it on top of their own head (``chain_check_proposal``) and
   vote. Every signature goes through :class:`~chain.consensus_guard.SignGuard`
   after the state it follows was persisted.
3. The decided block, with the precommits of its round as certificate, is
   validated like any block and committed (``chain_commit``), which also
   clears its transactions from this node's mempool; the next height starts.

Transactions: rows of this node's mempool are relayed to every peer (from
the oldest not yet sent, and all of them again after a restart, since the
row is the only record); a relayed transaction enters each peer's mempool
through the same validation (``tx_submit_many``, the batch path). Catching up: a message from a
later height, or a peer reporting a higher head, makes the loop fetch the
missing blocks with their certificates from that peer and commit them one by
one, each verified against the authorities at its height; a brand-new node
with only the genesis block takes the same path.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import OperationalError, close_old_connections, transaction

from chain import chainstore
from chain.cluster import ClusterConfig, config_path, reload_cluster_config
from chain.consensus_guard import SignGuard
from chain.core import consensus as c
from chain.core import crypto
from chain.core.block import Block as CoreBlock
from chain.core.block import Vote as BlockVote
from chain.core.consortium import authorities_of
from chain.core.errors import CodecError
from chain.core.evidence import EVIDENCE, evidence_payload
from chain.core.ledger import BlockResult
from chain.core.reasons import Reason, ValidationError
from chain.core.transaction import Transaction as CoreTx
from chain.ledger_services import (
    ChainError,
    DbState,
    TxRejected,
    chain_blocks,
    chain_check_proposal,
    chain_commit,
    chain_head,
    chain_propose,
    chain_refill,
    chain_store_gap,
    decode_value,
    tx_sign_and_submit,
    tx_submit_many,
)
from chain.models import MempoolEntry
from chain.peers import PeerClient, PeerServer
from chain.services import node_identity, node_signing_key
from chain.stores import dag_reader

logger = logging.getLogger(__name__)

RESEND_INTERVAL = 1.0  # seconds between re-sends of the current rounds' messages
RELAY_INTERVAL = 0.1  # seconds between looks at the mempool for transactions to relay
WATCH_INTERVAL = 2.0  # seconds between asking peers their heights
STATUS_INTERVAL = 1.0
SYNC_BATCH = 50


class ConsensusNode:
    def __init__(self, config: ClusterConfig, *, timeouts: c.Timeouts | None = None) -> None:
        self.config = config
        self.me = config.node_id
        self.timeouts = timeouts or c.Timeouts()
        self.store = chainstore.primary()
        self._key = node_signing_key(node_identity())
        self.guard = SignGuard(
            Path(settings.DATA_DIR) / "consensus", chain_id=settings.CHAIN_ID, node_id=self.me, private_key=self._key
        )
        self.inbox: queue.Queue[tuple[str, str, Any]] = queue.Queue(maxsize=5000)
        self.client = PeerClient(self.me, self._key, config.peers)
        self.keys: dict[str, bytes] = {}
        self.server = PeerServer(
            (config.peer_host, config.peer_port),
            keys=lambda: self.keys,
            on_messages=self._enqueue,
            on_txs=self._receive_txs,
            status=self._status,
            blocks=lambda start, limit: chain_blocks(start, limit, store=self.store),
            dag=dag_reader,
        )
        self.stats: Counter[str] = Counter()
        self.evidence: deque[dict[str, Any]] = deque(maxlen=20)
        self.decided_at: deque[tuple[int, int, float]] = deque(maxlen=100)  # (height, round, time)
        self._timers: list[tuple[float, int, c.Timeout]] = []
        self._seq = 0
        self._from_peers: OrderedDict[str, None] = OrderedDict()
        self._relayed_up_to = 0
        self._next = {"resend": 0.0, "relay": 0.0, "status": 0.0}
        self._sync_after = 0.0
        self._config_mtime = config_path().stat().st_mtime
        self._stop = threading.Event()
        self._refill_store()
        self._enter_height()

    # -- heights -----------------------------------------------------------------------------------------
    def _enter_height(self) -> None:
        head = chain_head(store=self.store)
        self.head = head
        self.height = head.height + 1
        self.keys = {a.id: a.public_key for a in authorities_of(DbState())}
        validators = tuple(sorted(self.keys))
        durable = self.guard.durable
        restored = durable if durable is not None and durable.height == self.height else None
        me = self.me if self.me in self.keys else None
        self.core = c.Consensus(me, self.height, validators, timeouts=self.timeouts, restored=restored)
        self.started = False
        self.values: dict[bytes, tuple[CoreBlock, list[CoreTx], BlockResult | None]] = {}
        self._timers = []
        for message, block in self.guard.own_messages(self.height):  # what it signed before a restart
            self._start()
            if isinstance(message, c.Proposal) and block is not None:
                self._feed(c.ProposalIn(message, block, self._validity(message.value, block)))
            elif isinstance(message, c.Vote):
                self._feed(c.VoteIn(message))

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._carry_out(self.core.start())

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="peer-server", daemon=True).start()
        self.client.start()
        threading.Thread(target=self._watch, name="peer-watch", daemon=True).start()
        logger.info(
            "consensus node %s at height %s, %d validators, peers on %s",
            self.me,
            self.height,
            len(self.keys),
            self.config.peer_listen,
        )
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except OperationalError as exc:
                    # The database stayed busy past its timeout (another process held a long write).
                    # Nothing is lost: carry on from what is stored, as after a restart.
                    logger.warning("database busy (%s); resuming from the stored state", exc)
                    self.stats["database busy"] += 1
                    self._resume()
        finally:
            self.server.shutdown()
            self.client.stop()
            chainstore.close_all()

    def _step(self) -> None:
        wait = 0.05
        if self._timers:
            wait = max(0.0, min(wait, self._timers[0][0] - time.monotonic()))
        try:
            item = self.inbox.get(timeout=wait)
        except queue.Empty:
            item = None
        self._fire_timers()
        if item is not None:
            self._on_item(*item)
        self._periodic()

    def _resume(self) -> None:
        """Rebuild this height from the chain store, the projection and the guard (a stored block the
        database did not take yet is projected first)."""
        while not self._stop.is_set():
            close_old_connections()
            time.sleep(0.5)
            try:
                self._enter_height()
            except OperationalError:
                continue
            return

    def stop(self) -> None:
        self._stop.set()

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timeout = heapq.heappop(self._timers)
            self._feed(timeout)

    def _periodic(self) -> None:
        now = time.monotonic()
        if now >= self._next["relay"]:
            self._next["relay"] = now + RELAY_INTERVAL
            if not self.started and MempoolEntry.objects.exists():  # at the relay's pace, not every pass
                self._start()
            self._relay_txs()
        if now >= self._next["resend"]:
            self._next["resend"] = now + RESEND_INTERVAL
            self._send(self.core.recent())
        if now >= self._next["status"]:
            self._next["status"] = now + STATUS_INTERVAL
            self._write_status()
            self._follow_config()

    def _on_item(self, kind: str, node: str, value: Any) -> None:
        if kind == "messages":
            self._on_messages(node, value)
        elif kind == "behind" and value > self.head.height:
            self._catch_up(node)

    # -- messages from peers ---------------------------------------------------------------------------------
    def _enqueue(self, node: str, value: Any) -> bool:
        try:
            self.inbox.put_nowait(("messages", node, value))
        except queue.Full:
            return False
        return True

    def _on_messages(self, node: str, value: dict[str, Any]) -> None:
        blocks = {}
        for pair in value.get("blocks") or []:
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair):
                blocks[pair[0]] = pair[1]
        for raw in value.get("messages") or []:
            try:
                message = c.message_from_cbor(raw)
            except CodecError:
                self.stats["malformed"] += 1
                continue
            if message.height < self.height:
                self.stats["old height"] += 1
                continue
            if message.height > self.height:
                self._behind(node, message.height)
                continue
            key = self.keys.get(message.sender)
            if key is None or not crypto.is_valid_signature(
                key, message.signature, c.sign_bytes(settings.CHAIN_ID, message.unsigned())
            ):
                self.stats["bad signature" if key else "not a validator"] += 1
                continue
            self._start()
            if isinstance(message, c.Proposal):
                block = blocks.get(message.value)
                if block is None:
                    self.stats["proposal without block"] += 1
                    continue
                self._feed(c.ProposalIn(message, block, self._validity(message.value, block)))
            else:
                self._feed(c.VoteIn(message))

    def _validity(self, value: bytes, data: bytes) -> bool:
        """valid(v): the block decodes, is named by ``value``, and validates on top of this node's head."""
        if value in self.values:
            return self.values[value][2] is not None
        try:
            block, txs = decode_value(data, max_tx_size=DbState().params().max_tx_size)
        except ValidationError as exc:
            logger.warning("undecodable proposal %s: %s", value.hex()[:16], exc)
            return False
        checked = None
        if block.cid.to_bytes() != value:
            problem = "its id is not its block's CID"
        else:
            verdict = chain_check_proposal(block, txs, store=self.store)
            checked = verdict if isinstance(verdict, BlockResult) else None
            problem = None if checked is not None else f"{verdict.reason}: {verdict.message}"
        if problem is not None:
            logger.warning("proposal %s at height %s refused: %s", value.hex()[:16], self.height, problem)
            self.stats["invalid proposal"] += 1
        self.values[value] = (block, txs, checked)
        return checked is not None

    def _behind(self, node: str, height: int) -> None:
        now = time.monotonic()
        if now >= self._sync_after:
            self._sync_after = now + 1.0
            self._catch_up(node)

    # -- the state machine's outputs -------------------------------------------------------------------------
    def _feed(self, event: c.Input) -> None:
        self._carry_out(self.core.handle(event))

    def _carry_out(self, outputs: Iterable[c.Output]) -> None:
        for out in outputs:
            if isinstance(out, c.Persist):
                self.guard.persist(out.state)
            elif isinstance(out, c.Broadcast):
                self._sign_and_send(out)
            elif isinstance(out, c.Schedule):
                self._seq += 1
                heapq.heappush(self._timers, (time.monotonic() + out.delay, self._seq, out.timeout))
            elif isinstance(out, c.NeedValue):
                self._propose(out)
            elif isinstance(out, c.Decide):
                self._commit(out)
                return  # a new height: the old core's remaining outputs are moot
            elif isinstance(out, c.Equivocation):
                self._record_evidence(out)

    def _sign_and_send(self, out: c.Broadcast) -> None:
        signed = self.guard.sign(out.message, out.block)
        if signed is None:
            self.stats["refused to sign"] += 1
            return
        forward: list[c.Message] = [signed]
        if isinstance(signed, c.Proposal) and signed.valid_round >= 0:
            forward += self.core.votes_for(signed.valid_round, c.Kind.PREVOTE, signed.value)
        elif isinstance(signed, c.Vote) and signed.kind == c.Kind.PRECOMMIT and signed.value is not None:
            forward += self.core.votes_for(signed.round, c.Kind.PREVOTE, signed.value)
        self._send(forward)
        if isinstance(signed, c.Proposal) and out.block is not None:
            self._feed(c.ProposalIn(signed, out.block, self._validity(signed.value, out.block)))
        else:
            self._feed(c.VoteIn(signed))

    def _send(self, messages: list[c.Message]) -> None:
        if not messages:
            return
        blocks = []
        for m in messages:
            if isinstance(m, c.Proposal):
                block = self.core.block_of(m.value)
                if block is not None:
                    blocks.append([m.value, block])
        self.client.broadcast(
            "/peer/v1/messages", {"messages": [c.message_to_cbor(m) for m in messages], "blocks": blocks}
        )

    def _propose(self, need: c.NeedValue) -> None:
        proposed = chain_propose(node_id=self.me, node_key=self._key, store=self.store)
        value = proposed.block.cid.to_bytes()
        self.values[value] = (proposed.block, proposed.txs, proposed.checked)
        self._feed(c.OwnValue(need.height, need.round, value, proposed.value))

    def _commit(self, decision: c.Decide) -> None:
        block, txs, checked = self.values.get(decision.value) or (None, [], None)
        if block is None:
            block, txs = decode_value(decision.block, max_tx_size=DbState().params().max_tx_size)
        certificate = [BlockVote(v.sender, v.signature, decision.round) for v in decision.certificate]
        chain_commit(block.with_certificate(certificate), txs, checked=checked, store=self.store)
        self.decided_at.append((decision.height, decision.round, time.time()))
        self.stats["blocks decided"] += 1
        logger.info("decided block %s (%s) in round %s, %d txs", decision.height, block.cid, decision.round, len(txs))
        self._enter_height()

    def _record_evidence(self, out: c.Equivocation) -> None:
        self.stats["equivocations"] += 1
        entry = {
            "validator": out.first.sender,
            "height": out.first.height,
            "round": out.first.round,
            "type": out.first.kind.name.lower(),
            "values": [_short(out.first.value), _short(out.second.value)],
            "at": time.time(),
        }
        self.evidence.append(entry)
        logger.warning("evidence: %s signed two %ss at height %s round %s", *list(entry.values())[:4])
        try:
            with transaction.atomic():
                tx_sign_and_submit(
                    private_key=self._key, type=EVIDENCE.name, payload=evidence_payload(out.first, out.second)
                )
        except TxRejected as exc:  # another node's report got there first, or it is already on chain
            logger.info("evidence not submitted: %s", exc)

    # -- catching up ---------------------------------------------------------------------------------------------
    def _refill_store(self) -> None:
        """Fetch back from peers the blocks a torn write cut from the chain store's tail, or refuse to start."""
        gap = chain_store_gap(store=self.store)
        if gap is None:
            return
        stored, projected = gap
        logger.warning("the chain store ends at %s but the projection at %s: fetching the gap from peers", *gap)
        for peer in self.client.peers:
            while stored < projected:
                path = f"/peer/v1/blocks?from={stored + 1}&limit={min(SYNC_BATCH, projected - stored)}"
                answer = self.client.request(peer, "GET", path)
                values = answer.get("blocks") if isinstance(answer, dict) else None
                if not values:
                    break
                try:
                    for data in values:
                        block, txs = decode_value(data, max_tx_size=DbState().params().max_tx_size)
                        chain_refill(block, txs, store=self.store)
                        stored = block.height
                except (ValidationError, ChainError) as exc:
                    logger.warning("%s could not fill the gap: %s", peer, exc)
                    break
            if stored >= projected:
                logger.info("the chain store is whole again up to %s", stored)
                return
        raise ChainError(
            f"the chain store lost blocks {stored + 1}..{projected} (a torn write?) and no peer could give them "
            "back; start again once a peer is up, or restore the data directory"
        )

    def _catch_up(self, peer: str) -> None:
        """Fetch, verify and commit the blocks ``peer`` has beyond this node's head."""
        if peer not in self.client.peers:
            return
        committed = 0
        while not self._stop.is_set():
            answer = self.client.request(peer, "GET", f"/peer/v1/blocks?from={self.height}&limit={SYNC_BATCH}")
            values = answer.get("blocks") if isinstance(answer, dict) else None
            if not values:
                break
            params = DbState().params()
            for data in values:
                try:
                    block, txs = decode_value(data, max_tx_size=params.max_tx_size)
                    if block.height != self.head.height + 1:
                        raise ValidationError(Reason.BAD_HEIGHT, f"block {block.height} after {self.head.height}")
                    chain_commit(block, txs, store=self.store)
                except (ValidationError, ChainError) as exc:
                    logger.warning("block from %s refused while catching up: %s", peer, exc)
                    self.stats["refused sync blocks"] += 1
                    values = []
                    break
                self.head = block
                committed += 1
                self.decided_at.append((block.height, -1, time.time()))  # round -1: fetched, not voted
            if committed:
                self._enter_height()
            if len(values) < SYNC_BATCH:
                break
        if committed:
            self.stats["blocks synced"] += committed
            logger.info("caught up %d blocks from %s; now at height %s", committed, peer, self.height)

    def _watch(self) -> None:
        """Ask every peer its height now and then; a higher one sends the loop to catch up."""
        while not self._stop.wait(WATCH_INTERVAL):
            for peer in list(self.client.peers):
                status = self.client.request(peer, "GET", "/peer/v1/status", timeout=1.0)
                if isinstance(status, dict) and isinstance(status.get("height"), int):
                    self.client.heights[peer] = status["height"]
                    if status["height"] > self.head.height:
                        with contextlib.suppress(queue.Full):  # the loop is busy; the next look asks again
                            self.inbox.put_nowait(("behind", peer, status["height"]))

    # -- transactions ----------------------------------------------------------------------------------------------
    def _relay_txs(self) -> None:
        newer = MempoolEntry.objects.filter(pk__gt=self._relayed_up_to).order_by("pk")
        rows = list(newer.values_list("pk", "cid", "raw")[:1000])
        if not rows:
            return
        self._relayed_up_to = rows[-1][0]
        raws = [bytes(raw) for _pk, cid, raw in rows if cid not in self._from_peers]
        if raws:
            self.client.broadcast("/peer/v1/txs", {"txs": raws})
            self.stats["txs relayed"] += len(raws)

    def _receive_txs(self, node: str, raws: list[bytes]) -> dict[str, int]:
        """A peer's relayed transactions into this node's mempool (on a server thread)."""
        accepted = refused = 0
        try:
            # The batch path: one commit, the signatures over both cores, one query per kind of read.
            with transaction.atomic():
                for outcome in tx_submit_many(raws):
                    if isinstance(outcome, TxRejected):
                        refused += 1  # already here, already sealed, or invalid: nothing to relay
                        continue
                    accepted += 1
                    self._from_peers[outcome.cid] = None
            while len(self._from_peers) > 100_000:
                self._from_peers.popitem(last=False)
        finally:
            close_old_connections()
        return {"accepted": accepted, "refused": refused}

    # -- status ------------------------------------------------------------------------------------------------------
    def _status(self) -> dict[str, Any]:
        return {
            "height": self.head.height,
            "head": str(self.head.cid),
            "round": self.core.round,
            "step": self.core.step.name.lower(),
        }

    def status_report(self) -> dict[str, Any]:
        now = time.time()
        heard = self.server.last_heard
        peers = {
            peer: {
                "url": url,
                "reachable": self.client.reachable.get(peer, False),
                "height": self.client.heights.get(peer),
                "last_message_s": round(now - heard[peer], 1) if peer in heard else None,
            }
            for peer, url in self.client.peers.items()
        }
        return {
            "node": self.me,
            "height": self.height,
            "round": self.core.round,
            "step": self.core.step.name.lower(),
            "started": self.started,
            "pending": MempoolEntry.objects.count(),
            "validators": sorted(self.keys),
            "peers": peers,
            "dropped": dict(self.server.dropped) | {k: v for k, v in self.stats.items() if k not in _COUNTS},
            "counts": {k: v for k, v in self.stats.items() if k in _COUNTS},
            "recent": [{"height": h, "round": r, "at": t} for h, r, t in self.decided_at],
            "evidence": list(self.evidence),
            "updated": now,
        }

    def _follow_config(self) -> None:
        """Pick up peers added to (or removed from) ``consortium.json`` while running."""
        try:
            mtime = config_path().stat().st_mtime
        except OSError:
            return
        if mtime == self._config_mtime:
            return
        self._config_mtime = mtime
        config = reload_cluster_config()
        if config is not None:
            self.client.set_peers(config.peers)

    def _write_status(self) -> None:
        run = Path(settings.DATA_DIR) / "run"
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / "consensus.json.tmp"
        tmp.write_text(json.dumps(self.status_report(), indent=1), encoding="utf-8")
        os.replace(tmp, run / "consensus.json")


_COUNTS = {"blocks decided", "blocks synced", "txs relayed", "equivocations", "old height"}  # not drops: normal


def _short(value: bytes | None) -> str:
    return "nil" if value is None else value.hex()[:16]


def read_status(data_dir: Path | None = None) -> dict[str, Any] | None:
    """What the consensus process last wrote (the operator page and /healthz read it)."""
    path = Path(data_dir or settings.DATA_DIR) / "run" / "consensus.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
