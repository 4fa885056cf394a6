"""``python manage.py chain status|seal|verify|export-car|submit-demo``.

Reads (status, verify, export-car) open the chain store as a secondary, so
they work while the store worker runs. ``seal`` writes it: it opens the store
itself when no process holds it, and otherwise asks the store worker (the
``store.chain_seal`` task) and waits for its answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from chain import chainstore
from chain.cluster import in_consortium
from chain.core import crypto
from chain.core.transaction import Transaction as CoreTx
from chain.ledger_registry import DEMO
from chain.ledger_services import TxRejected, chain_export_car, chain_seal, chain_status, next_seq, tx_submit_many
from chain.ledger_verify import chain_verify
from chain.services import chain_status_json

DEMO_BATCH = 500  # transactions per commit when submit-demo is not paced


class Command(BaseCommand):
    help = "The ledger: status, seal, verify, export-car, submit-demo."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        status = sub.add_parser("status", help="height, head CID, pending count, last verification")
        status.add_argument("--json", action="store_true", help="height, head, state hash and authorities as JSON")
        seal = sub.add_parser("seal", help="seal what is pending now")
        seal.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the store worker")
        verify = sub.add_parser("verify", help="re-validate every block and compare the database projection")
        verify.add_argument("--from", dest="from_height", type=int, default=0, metavar="HEIGHT")
        export = sub.add_parser("export-car", help="write blocks FROM..TO and their transactions as a CARv1")
        export.add_argument("start", type=int, metavar="FROM")
        export.add_argument("end", type=int, metavar="TO")
        export.add_argument("out", type=Path, metavar="OUT.car")
        demo = sub.add_parser("submit-demo", help="submit N signed chain.demo transactions from throwaway signers")
        demo.add_argument("count", type=int, metavar="N")
        demo.add_argument("--signers", type=int, default=10, help="number of throwaway signers (default 10)")
        demo.add_argument(
            "--per-second", type=float, default=0.0, help="submit one at a time at this rate (default: all at once)"
        )

    def handle(self, *args, **options) -> None:
        action = options["action"]
        try:
            getattr(self, "handle_" + action.replace("-", "_"))(options)
        finally:
            chainstore.close_all()  # never keep the store from the worker longer than needed

    # -- actions ----------------------------------------------------------------------------
    def handle_status(self, options: dict) -> None:
        if options["json"]:
            self.stdout.write(json.dumps(chain_status_json(), indent=2))
            return
        status = chain_status()
        self.stdout.write(f"chain:             {settings.CHAIN_ID} (node {settings.NODE_ID})")
        if status.height is None:
            self.stdout.write("height:            - (no genesis yet)")
        else:
            self.stdout.write(f"height:            {status.height}")
            self.stdout.write(f"head CID:          {status.head_cid}")
            self.stdout.write(f"head time:         {status.head_time:%Y-%m-%d %H:%M:%S} UTC")
        self.stdout.write(f"pending:           {status.pending}")
        try:
            top = chainstore.reader().head()
        except chainstore.StoreError as exc:
            self.stdout.write(f"chain store:       unavailable ({exc})")
        else:
            stored = "-" if top is None else str(top[0])
            note = "" if top is None or top[0] == status.height else "  (projection behind: the next seal recovers)"
            self.stdout.write(f"chain store head:  {stored}{note}")
        run = status.last_verification
        if run is None:
            self.stdout.write("last verification: never")
        else:
            outcome = "ok" if run.ok else f"FAILED at height {run.first_bad_height}: {run.reason}: {run.message}"
            self.stdout.write(
                f"last verification: {run.finished_at:%Y-%m-%d %H:%M:%S} UTC, {run.get_kind_display()}, "
                f"heights {run.from_height}..{run.to_height}: {outcome}"
            )

    def handle_seal(self, options: dict) -> None:
        try:
            store = chainstore.primary()
        except chainstore.StoreLocked:
            outcome = self._seal_by_worker(options["timeout"])
        else:
            outcome = chain_seal(store=store).as_dict()
        if outcome["height"] is None:
            self.stdout.write(
                f"nothing sealed (pending deferred: {outcome['deferred']}, dropped: {outcome['rejected']})"
            )
        else:
            self.stdout.write(
                f"sealed block {outcome['height']} {outcome['cid']}: {outcome['included']} transactions"
                f" ({outcome['rejected']} dropped, {outcome['deferred']} still pending)"
            )
        if outcome["recovered"]:
            self.stdout.write(f"recovered {outcome['recovered']} block(s) into the database projection first")

    def _seal_by_worker(self, timeout: float) -> dict:
        from chain.ledger_tasks import chain_seal_task

        self.stdout.write("the store worker holds the chain store; asking it to seal")
        try:
            return chain_seal_task.apply_async(ignore_result=False).get(timeout=timeout)
        except Exception as exc:  # celery raises TimeoutError, task errors, broker errors
            raise CommandError(f"the store worker did not seal: {exc}") from exc

    def handle_verify(self, options: dict) -> None:
        try:
            result = chain_verify(from_height=options["from_height"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        except chainstore.StoreUnavailable as exc:
            raise CommandError(str(exc)) from None
        took = (result.finished_at - result.started_at).total_seconds()
        if not result.ok:
            raise CommandError(result.summary(), returncode=1)
        self.stdout.write(f"{result.summary()} ({took:.1f} s)")

    def handle_export_car(self, options: dict) -> None:
        out: Path = options["out"]
        tmp = out.with_name(out.name + ".part")
        try:
            with tmp.open("wb") as handle:
                sections = chain_export_car(start=options["start"], end=options["end"], out=handle)
        except (ValueError, chainstore.StoreError) as exc:
            tmp.unlink(missing_ok=True)
            raise CommandError(str(exc)) from None
        tmp.replace(out)
        self.stdout.write(
            f"wrote blocks {options['start']}..{options['end']} to {out}: "
            f"{sections} sections, {out.stat().st_size} bytes"
        )

    def _submit_demo(self, keys: list, seqs: dict, count: int, pace: float, started: float) -> None:
        def demo_tx(i: int) -> CoreTx:
            pair = keys[i % len(keys)]
            seqs[pair.public] += 1
            return CoreTx.create(
                chain_id=settings.CHAIN_ID,
                type=DEMO.name,
                payload={"nonce": i, "memo": "submit-demo"},
                seq=seqs[pair.public] - 1,
                private_key=pair.private,
            )

        # Paced: each one acknowledged (committed) on its own. All at once: the batch path, a commit per batch.
        size = 1 if pace > 0 else DEMO_BATCH
        for first in range(0, count, size):
            batch = [demo_tx(i) for i in range(first, min(count, first + size))]
            with transaction.atomic():
                outcomes = tx_submit_many(batch)
                refused = next((o for o in outcomes if isinstance(o, TxRejected)), None)
                if refused is not None:
                    raise CommandError(f"a transaction was refused after {first} were accepted: {refused}")
            if pace > 0:
                time.sleep(max(0.0, started + (first + 1) / pace - time.perf_counter()))

    def handle_submit_demo(self, options: dict) -> None:
        count, signers = options["count"], max(1, options["signers"])
        if count < 1:
            raise CommandError("N must be at least 1")
        keys = [crypto.new_ed25519() for _ in range(min(signers, count))]
        pace = options["per_second"]
        started = time.perf_counter()
        seqs = {pair.public: next_seq(pair.public) for pair in keys}
        self._submit_demo(keys, seqs, count, pace, started)
        took = time.perf_counter() - started
        then = (
            "the consortium decides them in its next blocks"
            if in_consortium()
            else f"they are sealed within {settings.CHAIN_BLOCK_INTERVAL} s by the store worker, or now by `chain seal`"
        )
        self.stdout.write(
            f"submitted {count} chain.demo transactions from {len(keys)} throwaway signers "
            f"in {took:.2f} s ({count / took:,.0f} tx/s); {then}"
        )
