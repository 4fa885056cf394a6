"""``chain verify`` and the other commands; tamper detection in the store and in the database."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chain import chainstore
from chain.core import crypto, dagcbor
from chain.core.car import CarReader
from chain.ledger_services import chain_seal, tx_submit
from chain.models import Block, KeyRegistration, LedgerState, MempoolEntry, Transaction, VerificationRun

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("chain_dir")]


@pytest.fixture
def chain(demo_tx, alice):
    """Genesis + three blocks: alice's key registration and demo transactions."""
    pairs = [crypto.new_ed25519() for _ in range(3)]
    chain_seal()  # block 1: alice's registration
    for seq in (1, 2):
        for pair in pairs:
            tx_submit(demo_tx(pair, seq))
        chain_seal()  # blocks 2 and 3
    chainstore.close_all()  # as after a seal by the worker: the command opens the store itself
    return pairs


def verify(*args: str) -> str:
    out = io.StringIO()
    call_command("chain", "verify", *args, stdout=out)
    return out.getvalue()


def verify_fails(*args: str) -> CommandError:
    with pytest.raises(CommandError) as info:
        verify(*args)
    assert info.value.returncode == 1
    return info.value


def flip(value: bytes, index: int) -> bytes:
    return value[:index] + bytes([value[index] ^ 0x01]) + value[index + 1 :]


def tamper_store(key: bytes, change) -> None:
    store = chainstore.primary()
    store.put_raw(key, change(store._raw(key)))
    chainstore.close_all()


def test_an_intact_chain_verifies(chain):
    output = verify()
    assert "ok: blocks 0..3 valid" in output
    assert "7 transactions" in output
    assert VerificationRun.objects.get().ok


@pytest.mark.parametrize("where", ["header", "middle", "certificate"])
def test_one_changed_byte_of_a_stored_block_fails_at_its_height(chain, where):
    store = chainstore.primary()
    cid = store.cid_at(2)
    raw = store.block_bytes(cid)
    chainstore.close_all()
    index = {"header": 5, "middle": len(raw) // 2, "certificate": len(raw) - 3}[where]
    tamper_store(chainstore.ChainStore.block_key(cid), lambda raw: flip(raw, index))
    error = verify_fails()
    assert "FAILED at height 2" in str(error)
    assert any(reason in str(error) for reason in ("block-tampered", "bad-certificate"))
    run = VerificationRun.objects.get()
    assert (run.ok, run.first_bad_height) == (False, 2)


def test_one_changed_byte_of_a_stored_transaction_fails_at_its_block(chain):
    store = chainstore.primary()
    tx_cid = store.block_at(3).txs[1]
    chainstore.close_all()
    tamper_store(chainstore.ChainStore.tx_key(tx_cid), lambda raw: flip(raw, len(raw) - 70))
    error = verify_fails()
    assert "FAILED at height 3: block-tampered" in str(error)
    assert str(tx_cid) in str(error)


def test_a_block_replaced_by_a_validly_encoded_other_block_breaks_the_link(chain):
    """Point the height index at block 1 again at height 2: its header is intact but it is not the child."""
    store = chainstore.primary()
    one = store.cid_at(1)
    chainstore.close_all()
    tamper_store(b"N" + (2).to_bytes(8, "big"), lambda raw: one.to_bytes())
    error = verify_fails()
    assert "FAILED at height 2" in str(error)


def test_a_changed_transaction_row_is_named(chain):
    row = Transaction.objects.filter(block__height=3).order_by("index").first()
    Transaction.objects.filter(pk=row.pk).update(payload={"nonce": 999})
    error = verify_fails()
    assert "FAILED at height 3: projection-differs" in str(error)
    assert f"Transaction {row.cid} payload" in str(error)
    assert "999" in str(error)


def test_a_changed_block_row_is_named(chain):
    Block.objects.filter(height=2).update(proposer="mallory")
    error = verify_fails()
    assert "FAILED at height 2: projection-differs: Block 2 proposer" in str(error)


def test_a_changed_state_row_is_named_with_the_block_that_wrote_it(chain):
    key = "demo/" + chain[0].public.hex()
    LedgerState.objects.filter(key=key).update(value=dagcbor.encode(7))
    error = verify_fails()
    assert "FAILED at height 3: projection-differs" in str(error)
    assert key in str(error)


def test_a_deleted_state_row_is_named(chain):
    key = "seq/" + chain[1].public.hex()
    LedgerState.objects.filter(key=key).delete()
    error = verify_fails()
    assert f"LedgerState {key!r} is in the chain's state but not in the database" in str(error)


def test_an_extra_state_row_is_named(chain):
    from chain.models.ledger import state_key_digest

    LedgerState.objects.create(key="demo/forged", key_digest=state_key_digest("demo/forged"), value=b"\x01", height=2)
    error = verify_fails()
    assert "'demo/forged' is in the database but not in the chain's state" in str(error)


def test_a_changed_key_registration_is_named(chain, alice):
    KeyRegistration.objects.filter(sign_public=bytes(alice.sign_public).hex()).update(kind="institution")
    error = verify_fails()
    assert "FAILED at height 1: projection-differs: KeyRegistration" in str(error)
    assert "kind" in str(error)


def test_a_deleted_transaction_row_is_named(chain):
    Transaction.objects.filter(block__height=2).order_by("index").first().delete()
    error = verify_fails()
    assert "FAILED at height 2: projection-differs: block 2 has 3 transactions on chain and 2 in the database" in str(
        error
    )


def test_the_lowest_bad_height_wins(chain):
    Block.objects.filter(height=3).update(size=1)
    Block.objects.filter(height=1).update(size=1)
    error = verify_fails()
    assert "FAILED at height 1" in str(error)
    assert "(2 differences in all)" in str(error)


def test_verify_from_a_height_trusts_earlier_signatures_but_still_hashes(chain):
    assert "blocks 2..3 valid" in verify("--from", "2")
    store = chainstore.primary()
    cid = store.cid_at(1)
    chainstore.close_all()
    tamper_store(chainstore.ChainStore.block_key(cid), lambda raw: flip(raw, 5))
    assert "FAILED at height 1" in str(verify_fails("--from", "2"))


def test_verify_from_beyond_the_head(chain):
    with pytest.raises(CommandError, match="beyond the head"):
        verify("--from", "9")


def test_verify_reads_through_a_secondary_while_the_worker_holds_the_store(chain, demo_tx, settings):
    """The store worker holds the primary; the command reads a secondary instance that catches up."""
    holder = chainstore.ChainStore(settings.CHAIN_DIR)  # stands for the store worker's handle
    try:
        with pytest.raises(chainstore.StoreLocked):
            chainstore.primary()
        assert "blocks 0..3 valid" in verify()
        assert chainstore.reader().readonly
        tx_submit(demo_tx(crypto.new_ed25519(), 1))
        chain_seal(store=holder)  # the worker seals block 4
        assert "blocks 0..4 valid" in verify()  # the same secondary caught up
    finally:
        chainstore.close_all()
        holder.close()


def test_status_command(chain):
    out = io.StringIO()
    call_command("chain", "status", stdout=out)
    text = out.getvalue()
    assert "height:            3" in text
    assert Block.objects.get(height=3).cid in text
    assert "pending:           0" in text
    assert "last verification: never" in text


def test_seal_command(demo_tx):
    tx_submit(demo_tx(crypto.new_ed25519(), 1))
    out = io.StringIO()
    call_command("chain", "seal", stdout=out)
    assert "sealed block 1" in out.getvalue()
    assert not MempoolEntry.objects.exists()


def test_submit_demo_then_seal_then_verify():
    out = io.StringIO()
    call_command("chain", "submit-demo", "25", "--signers", "4", stdout=out)
    assert "submitted 25 chain.demo transactions from 4 throwaway signers" in out.getvalue()
    assert MempoolEntry.objects.count() == 25
    call_command("chain", "seal", stdout=out)
    assert Transaction.objects.count() == 25
    assert "ok" in verify()


def test_export_car(chain, tmp_path):
    path = tmp_path / "segment.car"
    out = io.StringIO()
    call_command("chain", "export-car", "1", "3", str(path), stdout=out)
    with path.open("rb") as handle:
        reader = CarReader(handle)
        sections = dict(reader)  # every block is re-hashed by the reader
        roots = reader.roots
    store = chainstore.reader()
    assert roots == (store.cid_at(3),)
    for height in (1, 2, 3):
        block = store.block_at(height)
        assert sections[block.cid] == block.header_bytes
        for tx_cid in block.txs:
            assert tx_cid in sections
    assert len(sections) == 3 + 7 + 3  # headers, transactions, certificates
    assert "wrote blocks 1..3" in out.getvalue()


def test_export_car_of_missing_heights(chain, tmp_path):
    with pytest.raises(CommandError, match="no block at height 9"):
        call_command("chain", "export-car", "1", "9", str(tmp_path / "x.car"))
    assert not (tmp_path / "x.car").exists()
