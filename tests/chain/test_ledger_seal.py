"""Sealing: genesis, blocks, the projection, what happens to refused and waiting transactions."""

from __future__ import annotations

import json

import pytest
from django.conf import settings

from chain import chainstore
from chain.core import crypto, dagcbor
from chain.core.merkle import merkle_root
from chain.core.state import seq_key
from chain.ledger_services import DbState, chain_ensure_genesis, chain_seal, chain_status, tx_submit
from chain.ledger_verify import chain_validate_recent, chain_verify
from chain.models import Block, KeyRegistration, LedgerState, MempoolEntry, Transaction, VerificationRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("chain_dir")]


def submit_many(demo_tx, signers: int, each: int) -> list:
    pairs = [crypto.new_ed25519() for _ in range(signers)]
    txs = []
    for seq in range(1, each + 1):
        for pair in pairs:
            tx = demo_tx(pair, seq)
            tx_submit(tx)
            txs.append(tx)
    return txs


def test_genesis_founds_the_chain_with_this_node_as_authority():
    from chain.services import node_identity

    genesis = chain_ensure_genesis()
    assert genesis.height == 0
    assert genesis.chain_id == settings.CHAIN_ID
    assert [(a.id, a.public_key) for a in genesis.genesis.authorities] == [
        (settings.NODE_ID, bytes(node_identity().sign_public))
    ]
    assert genesis.genesis.params.max_block_txs == settings.CHAIN_MAX_BLOCK_TXS
    row = Block.objects.get(height=0)
    assert row.cid == str(genesis.cid)
    assert chain_ensure_genesis().cid == genesis.cid  # made once
    assert DbState().get("chain/params")["max_tx_size"] == settings.CHAIN_MAX_TX_BYTES


def test_sealing_with_nothing_pending_makes_no_block():
    outcome = chain_seal()
    assert outcome.height is None
    assert Block.objects.count() == 1  # genesis only


def test_seal_stores_projects_and_clears_the_mempool(demo_tx):
    txs = submit_many(demo_tx, signers=3, each=2)
    outcome = chain_seal()
    assert (outcome.height, outcome.included, outcome.rejected, outcome.deferred) == (1, 6, 0, 0)
    assert not MempoolEntry.objects.exists()

    stored = chainstore.primary().block_at(1)
    assert str(stored.cid) == outcome.cid
    assert stored.tx_root == merkle_root(stored.txs)
    assert {str(c) for c in stored.txs} == {str(tx.cid) for tx in txs}

    row = Block.objects.get(height=1)
    assert (row.cid, row.tx_count, row.parent_cid) == (outcome.cid, 6, str(stored.parent))
    assert row.state_hash == stored.state_hash.hex()
    rows = list(Transaction.objects.filter(block=row).order_by("index"))
    assert [r.cid for r in rows] == [str(c) for c in stored.txs]
    assert rows[0].payload == {"nonce": rows[0].seq}

    state = DbState()
    for pair_hex in {tx.signer for tx in txs}:
        assert state.get(seq_key(pair_hex)) == 2
        assert state.get("demo/" + pair_hex.hex()) == 2
    assert LedgerState.objects.get(key="demo/" + txs[0].signer.hex()).height == 1


def test_a_key_written_again_in_a_later_block_keeps_one_row_with_the_new_value(demo_tx):
    pair = crypto.new_ed25519()
    key = "demo/" + pair.public.hex()
    tx_submit(demo_tx(pair, 1))
    chain_seal()
    tx_submit(demo_tx(pair, 2))
    chain_seal()

    rows = list(LedgerState.objects.filter(key=key).values_list("height", "value"))
    assert [(height, dagcbor.decode(bytes(value))) for height, value in rows] == [(2, 2)]
    assert DbState().get(seq_key(pair.public)) == 2


def test_blocks_link_and_the_chain_verifies(demo_tx):
    submit_many(demo_tx, signers=2, each=1)
    first = chain_seal()
    submit_many(demo_tx, signers=2, each=1)
    second = chain_seal()
    assert Block.objects.get(height=2).parent_cid == first.cid
    assert second.height == 2
    result = chain_verify()
    assert result.ok, result.summary()
    assert (result.blocks, result.transactions) == (3, 4)
    assert VerificationRun.objects.get().ok


def test_a_full_block_leaves_the_rest_pending(settings, demo_tx):
    settings.CHAIN_MAX_BLOCK_TXS = 4  # recorded in genesis
    submit_many(demo_tx, signers=5, each=2)
    outcome = chain_seal()
    assert outcome.included == 4
    assert MempoolEntry.objects.count() == 6
    while chain_seal().height is not None:
        pass
    assert Transaction.objects.count() == 10
    assert chain_verify().ok


def queue(txs) -> None:
    """Mempool rows as another process's submissions leave them: nothing verified in this one."""
    MempoolEntry.objects.bulk_create(
        MempoolEntry(cid=str(tx.cid), raw=tx.encoded, type=tx.type, signer=tx.signer.hex(), seq=tx.seq, size=tx.size)
        for tx in txs
    )


@pytest.fixture
def verified_here(monkeypatch):
    """How many signatures each seal verifies itself (in threads), in order."""
    counts = []
    real = crypto.verify_many

    def counting(items, **options):
        items = list(items)
        counts.append(len(items))
        return real(items, **options)

    monkeypatch.setattr(crypto, "verify_many", counting)
    return counts


def seal_all() -> int:
    blocks = 0
    while chain_seal().height is not None:
        blocks += 1
    return blocks


def test_a_seal_has_the_next_blocks_signatures_verified_in_other_processes(settings, demo_tx, verified_here):
    settings.CHAIN_MAX_BLOCK_TXS = 4  # recorded in genesis
    chain_ensure_genesis()
    # More than a block and the 256 rows a seal reads beyond it: the mempool holds more.
    queue([demo_tx(crypto.new_ed25519(), 1) for _ in range(270)])
    assert seal_all() == 68
    # More than a block waits: even the first seal has its block verified in the processes, and
    # each one after finds its block verified ahead; no seal verifies in its own threads.
    assert verified_here == [0] * 68
    assert Transaction.objects.count() == 270
    assert chain_verify().ok


def test_a_sealed_transaction_leaves_the_cache_of_verified_ones(settings, demo_tx, monkeypatch):
    from chain import ledger_services
    from chain.ledger_services import _CheckedTxs, _finish_read_ahead

    _finish_read_ahead()  # an earlier test's, if it left one
    _checked_txs = _CheckedTxs()  # not what earlier tests in this process submitted
    monkeypatch.setattr(ledger_services, "_checked_txs", _checked_txs)
    settings.CHAIN_MAX_BLOCK_TXS = 4  # recorded in genesis
    chain_ensure_genesis()
    txs = [demo_tx(crypto.new_ed25519(), 1) for _ in range(270)]
    queue(txs)
    chain_seal()
    chain_seal()  # finds its block verified ahead (remembered), then reads the next one ahead
    _finish_read_ahead()
    remembered = set(_checked_txs._items)
    sealed = {tx.cid.digest for tx in txs if Transaction.objects.filter(cid=str(tx.cid)).exists()}
    assert len(sealed) == 8
    assert len(remembered) >= 4 and not remembered & sealed
    seal_all()
    assert not _checked_txs._items and _checked_txs._bytes == 0
    assert Transaction.objects.count() == 270


def test_a_forged_signature_read_ahead_is_still_refused_by_its_seal(settings, demo_tx, caplog):
    import dataclasses

    settings.CHAIN_MAX_BLOCK_TXS = 4
    chain_ensure_genesis()
    txs = [demo_tx(crypto.new_ed25519(), 1) for _ in range(266)]
    txs[5] = forged = dataclasses.replace(txs[5], payload={"nonce": 999})  # in the second block
    queue(txs)
    seal_all()
    assert not Transaction.objects.filter(cid=str(forged.cid)).exists()
    assert not MempoolEntry.objects.exists()
    assert f"dropped pending transaction {forged.cid}: bad-signature" in caplog.text
    assert Transaction.objects.count() == 265
    assert chain_verify().ok


def test_a_failed_signature_process_costs_only_speed(settings, demo_tx, verified_here, monkeypatch, caplog):
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from chain import ledger_services

    class Broken:
        def submit(self, *args, **kwargs):
            future = Future()
            future.set_exception(BrokenProcessPool("a signature process was killed"))
            return future

        def shutdown(self, **kwargs):
            pass

    settings.CHAIN_MAX_BLOCK_TXS = 4
    chain_ensure_genesis()
    queue([demo_tx(crypto.new_ed25519(), 1) for _ in range(264)])
    monkeypatch.setattr(ledger_services, "_pool", Broken())
    chain_seal()
    assert verified_here == [4]  # the processes failed: the seal verified its block itself
    assert "the signature processes failed; the seal verifies in threads" in caplog.text
    seal_all()
    assert set(verified_here[1:]) == {0}  # new processes verified the rest
    assert Transaction.objects.count() == 264
    assert chain_verify().ok


def test_signature_processes_that_cannot_start_do_not_stop_the_seal(settings, demo_tx, monkeypatch, caplog):
    from chain import ledger_services

    def refuse(count):
        raise AssertionError("daemonic processes are not allowed to have children")  # as in a prefork worker

    settings.CHAIN_MAX_BLOCK_TXS = 4
    chain_ensure_genesis()
    queue([demo_tx(crypto.new_ed25519(), 1) for _ in range(264)])
    monkeypatch.setattr(ledger_services, "_pool", None)
    monkeypatch.setattr(crypto, "signature_processes", refuse)
    outcome = chain_seal()
    assert outcome.included == 4
    assert Block.objects.filter(height=outcome.height).exists()  # stored and projected
    assert "could not start the signature processes" in caplog.text
    seal_all()
    assert Transaction.objects.count() == 264
    monkeypatch.undo()
    assert chain_verify().ok


def test_a_transaction_refused_at_seal_is_dropped_and_so_are_its_followers(demo_tx, caplog):
    """Two registrations of one key both pass submission; the second is refused when sealed."""
    from accounts.ledger import KEY_REGISTERED

    pair, enc = crypto.new_ed25519(), crypto.new_x25519()
    payload = {"kind": "user", "enc_public": enc.public, "sign_public": pair.public}
    first = demo_tx(pair, 1, type=KEY_REGISTERED.name, payload=payload)
    second = demo_tx(pair, 2, type=KEY_REGISTERED.name, payload=payload)
    follower = demo_tx(pair, 3, nonce=3)
    for tx in (first, second, follower):
        tx_submit(tx)  # all valid against the committed state, which has no registration yet
    other = crypto.new_ed25519()
    unrelated = demo_tx(other, 1)
    tx_submit(unrelated)
    outcome = chain_seal()
    assert outcome.included == 2  # first and unrelated
    assert outcome.rejected == 2  # second (already registered) and its follower (gap never filled)
    assert not MempoolEntry.objects.exists()
    assert "already registered" in caplog.text
    assert set(Transaction.objects.values_list("cid", flat=True)) == {str(first.cid), str(unrelated.cid)}
    assert chain_verify().ok


def test_key_registrations_after_user_and_institution_creation(alice, hospital):
    entries = {e.signer: e for e in MempoolEntry.objects.filter(type="accounts.key_registered")}
    assert set(entries) == {bytes(alice.sign_public).hex(), bytes(hospital.sign_public).hex()}
    outcome = chain_seal()
    assert outcome.included == 2
    user_key = KeyRegistration.objects.get(sign_public=bytes(alice.sign_public).hex())
    assert (user_key.kind, user_key.enc_public, user_key.institution_code) == (
        "user",
        bytes(alice.enc_public).hex(),
        "",
    )
    inst_key = KeyRegistration.objects.get(sign_public=bytes(hospital.sign_public).hex())
    assert (inst_key.kind, inst_key.institution_code) == ("institution", "north")
    tx = Transaction.objects.get(cid=user_key.tx_cid)
    assert tx.signer == user_key.sign_public
    text = json.dumps(tx.payload) + bytes(chainstore.primary().tx_bytes_many([_cid(tx.cid)])[0]).hex()
    for personal in (alice.email, alice.name, str(alice.public_id), alice.email.encode().hex()):
        assert personal not in text  # no personal data on chain
    assert chain_verify().ok


def _cid(text):
    from chain.core.cid import CID

    return CID.decode(text)


def test_a_failed_signup_leaves_no_registration(db):
    from accounts.services import user_create

    with pytest.raises(ValueError, match="institution"):
        user_create(email="x@example.org", password="long-enough-pw", role="clinician")
    assert not MempoolEntry.objects.exists()


def test_state_values_round_trip_as_dag_cbor(alice):
    chain_seal()
    key = "accounts/key/" + bytes(alice.sign_public).hex()
    value = dagcbor.decode(bytes(LedgerState.objects.get(key=key).value))
    assert value["kind"] == "user"
    assert value["enc_public"] == bytes(alice.enc_public)


def test_status_reports_height_head_pending_and_last_verification(demo_tx):
    submit_many(demo_tx, signers=1, each=1)
    chain_seal()
    submit_many(demo_tx, signers=1, each=1)
    chain_verify()
    status = chain_status()
    assert status.height == 1
    assert status.head_cid == Block.objects.get(height=1).cid
    assert status.pending == 1
    assert status.last_verification.ok


def test_recent_validation_continues_from_its_checkpoint(demo_tx):
    submit_many(demo_tx, signers=2, each=1)
    chain_seal()
    first = chain_validate_recent()
    assert first.ok and (first.from_height, first.to_height, first.blocks) == (0, 1, 2)
    submit_many(demo_tx, signers=2, each=1)
    chain_seal()
    second = chain_validate_recent()
    assert second.ok and (second.from_height, second.to_height, second.blocks) == (2, 2, 1)
    third = chain_validate_recent()
    assert third.ok and third.blocks == 0
    assert VerificationRun.objects.filter(kind="recent").count() == 3


def test_recent_validation_notices_a_changed_row(demo_tx):
    submit_many(demo_tx, signers=2, each=1)
    chain_seal()
    chain_validate_recent()
    txs = submit_many(demo_tx, signers=2, each=1)
    chain_seal()
    LedgerState.objects.filter(key="demo/" + txs[0].signer.hex()).update(value=dagcbor.encode(41))
    result = chain_validate_recent()
    assert not result.ok
    assert result.reason == "projection-differs"
    assert "demo/" in result.message


def test_the_seal_task_runs_the_service(demo_tx):
    from chain.ledger_tasks import chain_seal_task, chain_validate_recent_task

    submit_many(demo_tx, signers=1, each=3)
    result = chain_seal_task.apply().get()
    assert result["included"] == 3
    assert chain_validate_recent_task.apply().get()["ok"]


def test_the_seal_task_steps_aside_when_another_process_holds_the_store(monkeypatch):
    from chain.ledger_tasks import chain_seal_task

    def locked():
        raise chainstore.StoreLocked("held by a command")

    monkeypatch.setattr(chainstore, "primary", locked)
    assert chain_seal_task.apply().get() is None


# -- the projection's own shortcuts ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("ids", "spans", "single"),
    [
        ([], [], []),
        ([7], [], [7]),
        ([3, 4, 5, 6], [(3, 6)], []),
        ([9, 1, 2, 3, 12, 11, 20], [(1, 3), (11, 12)], [9, 20]),
        ([5, 5, 6, 6], [(5, 6)], []),
    ],
)
def test_mempool_ids_become_spans_of_consecutive_ids_and_the_ids_left_alone(ids, spans, single):
    from chain.ledger_services import _id_spans

    assert _id_spans(ids) == (spans, single)


def test_deleting_mempool_rows_by_spans_leaves_every_other_row(demo_tx):
    from chain.ledger_services import _delete_mempool

    queue([demo_tx(crypto.new_ed25519(), 1) for _ in range(12)])
    ids = list(MempoolEntry.objects.order_by("id").values_list("id", flat=True))
    gone = ids[0:4] + ids[5:6] + ids[7:11]  # two spans and one id alone
    _delete_mempool(ids=gone)
    assert list(MempoolEntry.objects.order_by("id").values_list("id", flat=True)) == [ids[4], ids[6], ids[11]]


def test_inserted_rows_are_adapted_as_the_orm_adapts_them():
    from django.db import connection

    from chain.ledger_services import _adapter, ms_to_datetime, to_dag_json

    stamp = ms_to_datetime(1_764_990_000_123)
    payload = to_dag_json({"nonce": 1, "memo": "体检", "blob": b"\x00\xff"})
    for name, value in (("timestamp", stamp), ("payload", payload)):
        field = Transaction._meta.get_field(name)
        assert _adapter(field)(value) == field.get_db_prep_save(value, connection)
    assert _adapter(Transaction._meta.get_field("cid")) is None
    with pytest.raises(ValueError, match="naive"):
        _adapter(Transaction._meta.get_field("timestamp"))(stamp.replace(tzinfo=None))


def test_a_sealed_transaction_reads_back_with_its_timestamp_and_payload(demo_tx):
    from chain.ledger_services import ms_to_datetime

    tx = demo_tx(crypto.new_ed25519(), 1)
    tx_submit(tx)
    chain_seal()
    row = Transaction.objects.get(cid=str(tx.cid))
    assert row.timestamp == ms_to_datetime(tx.timestamp)
    assert row.payload == {"nonce": 1}
