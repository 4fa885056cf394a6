"""``python manage.py dag …``: the node's content store from the command line.

Works whether or not the node is running (DESIGN section 3):

* **writes** (``add``, ``import-car``, ``pin``, ``unpin``, ``gc``) open the store
  as primary when no process holds it; when one does (RocksDB's lock says so:
  the running store worker), the command sends the matching ``store.…`` task to
  the store worker and waits for its result. Either way the same function of
  :mod:`chain.dag_services` does the work.
* **reads** (``cat``, ``stat``, ``verify``, ``export-car``) always go through a
  secondary instance of their own, so a long ``verify`` never keeps the store
  worker from starting or writing.

Only the requested output goes to stdout (``add`` prints the root CID and
nothing else; ``cat`` writes raw bytes); logs go to stderr. Every failure is a
one-line message and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from json import dumps
from pathlib import Path
from typing import Any

from celery import Task
from celery.exceptions import TimeoutError as CeleryTimeoutError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chain import dag_services, dag_tasks, stores
from chain.core.blockstore import BlockStore, StoreError, export_car
from chain.core.cid import CID
from chain.core.errors import CodecError, CoreError, IntegrityError, NotFoundError

logger = logging.getLogger("chain.dag")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


class Command(BaseCommand):
    help = "The node's content store (UnixFS merkle DAG): add, cat, stat, verify, CAR export/import, pins, gc."

    def add_arguments(self, parser: CommandParser) -> None:
        waiting = CommandParser(add_help=False)
        waiting.add_argument(
            "--wait",
            type=_positive,
            metavar="SECONDS",
            help="when the store worker holds the store: how long to wait for its answer "
            "(default: the task's time limit)",
        )
        sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

        add = sub.add_parser("add", parents=[waiting], help="store a file, pin it, print its root CID")
        add.add_argument("file")
        add.add_argument("--chunk-size", type=_positive, help="bytes per leaf (default: DAG_CHUNK_SIZE)")
        add.add_argument("--max-links", type=_positive, help="links per node (default: DAG_MAX_LINKS)")

        cat = sub.add_parser("cat", help="write a file's bytes to stdout")
        cat.add_argument("cid")
        cat.add_argument("--offset", type=_non_negative, default=0)
        cat.add_argument("--length", type=_non_negative, default=None)

        stat = sub.add_parser("stat", help="size, blocks, depth and chunk parameters of a file")
        stat.add_argument("cid")

        export = sub.add_parser("export-car", help="write the DAG under CID to a CARv1 file")
        export.add_argument("cid")
        export.add_argument("out")

        imp = sub.add_parser("import-car", parents=[waiting], help="import a CARv1 file, pin and print its roots")
        imp.add_argument("file")

        verify = sub.add_parser("verify", help="re-hash every block (or those under CIDs); exit 1 naming bad ones")
        verify.add_argument("cids", nargs="*", metavar="CID")

        pin = sub.add_parser("pin", parents=[waiting], help="add a pin reference to a stored DAG")
        pin.add_argument("cid")
        unpin = sub.add_parser("unpin", parents=[waiting], help="drop a pin reference")
        unpin.add_argument("cid")

        sub.add_parser("gc", parents=[waiting], help="delete every block no pin reaches")

        status = sub.add_parser(
            "status", help="which nodes hold the DAG under CID, and whether it meets its replication factor"
        )
        status.add_argument("cid")
        status.add_argument("--json", action="store_true", help="print it as JSON")

    def handle(self, *args: str, action: str, **options: Any) -> None:
        run = getattr(self, "do_" + action.replace("-", "_"))
        try:
            run(**options)
        except CommandError:
            raise
        except stores.DagStoreUnavailable as exc:
            raise CommandError(str(exc)) from None
        except NotFoundError as exc:
            raise CommandError(f"not found: {exc}") from None
        except IntegrityError as exc:
            raise CommandError(f"integrity error: {exc}") from None
        except (CodecError, StoreError) as exc:
            raise CommandError(str(exc)) from None
        except OSError as exc:
            raise CommandError(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)) from None

    # -- replication ---------------------------------------------------------------------------
    def do_status(self, *, cid: str, json: bool, **_: object) -> None:
        from chain.replication import object_status

        root = self._cid(cid)
        try:
            with self._reader() as store:
                status = object_status(root, store=store)
        except stores.DagStoreUnavailable:
            status = object_status(root, store=None)  # nothing stored here yet: the others may hold it
        if json:
            self.stdout.write(dumps(status.as_dict(), indent=2))
            return
        verdict = (
            "at its target"
            if status.at_target
            else "meets its minimum, below its target"
            if status.meets_minimum
            else "UNDER-REPLICATED"
        )
        self.stdout.write(
            f"{status.cid}: {status.copies} whole cop{'y' if status.copies == 1 else 'ies'} "
            f"(minimum {status.minimum}, target {status.target}, {len(status.nodes)} node(s)): {verdict}"
        )
        for node, info in status.nodes.items():
            self.stdout.write(f"  {node:<16} {info['state']:<12} {'holder' if info['holder'] else ''}")

    # -- writes ---------------------------------------------------------------------------
    def do_add(
        self, *, file: str, chunk_size: int | None, max_links: int | None, wait: int | None, **_: object
    ) -> None:
        path = self._input_file(file)
        params = dag_services.chunk_params(chunk_size, max_links)  # a bad value fails before any dispatch
        result = self._write(
            lambda store: dag_services.dag_add_path(
                store=store, path=path, chunk_size=params.chunk_size, max_links=params.max_links
            ),
            dag_tasks.dag_add_path,
            [str(path), params.chunk_size, params.max_links],
            wait,
        )
        logger.info(
            "added %s: %s bytes in %s blocks, depth %s",
            result["root"],
            result["size"],
            result["blocks"],
            result["depth"],
        )
        self.stdout.write(result["root"])

    def do_import_car(self, *, file: str, wait: int | None, **_: object) -> None:
        path = self._input_file(file)
        try:
            result = self._write(
                lambda store: dag_services.dag_import_car(store=store, path=path),
                dag_tasks.dag_import_car,
                [str(path)],
                wait,
            )
        except (CodecError, IntegrityError, NotFoundError) as exc:
            raise CommandError(f"cannot import {file}: {exc}; nothing was stored") from None
        logger.info("imported %s blocks (%s bytes) from %s", result["blocks"], result["bytes"], file)
        for root in result["roots"]:
            self.stdout.write(root)

    def do_pin(self, *, cid: str, wait: int | None, **_: object) -> None:
        root = self._cid(cid)
        result = self._write(
            lambda store: dag_services.dag_pin(store=store, cid=str(root)), dag_tasks.dag_pin, [str(root)], wait
        )
        self.stdout.write(f"{result['cid']} pins={result['pins']}")

    def do_unpin(self, *, cid: str, wait: int | None, **_: object) -> None:
        root = self._cid(cid)
        result = self._write(
            lambda store: dag_services.dag_unpin(store=store, cid=str(root)), dag_tasks.dag_unpin, [str(root)], wait
        )
        self.stdout.write(f"{result['cid']} pins={result['pins']}")

    def do_gc(self, *, wait: int | None, **_: object) -> None:
        result = self._write(lambda store: dag_services.dag_gc(store=store), dag_tasks.dag_gc, [], wait)
        self.stdout.write(
            f"removed {result['removed']} block(s); kept {result['kept']} reachable from "
            f"{result['pinned_roots']} pinned root(s)"
        )

    def _write(self, local: Callable[[BlockStore], dict], task: Task, args: list, wait: int | None) -> dict:
        """Run ``local`` on a primary opened here, or ``task`` on the store worker that holds it."""
        store = stores.try_open_primary()
        if store is not None:
            with store:
                return local(store)
        timeout = wait or task.time_limit + 30
        logger.info(
            "the DAG store %s is held by another process (the store worker); sending %s to it",
            stores.dag_path(),
            task.name,
        )
        pending = task.apply_async(args=args, expires=timeout)
        try:
            return pending.get(timeout=timeout)
        except CeleryTimeoutError:
            raise CommandError(
                f"no answer from the store worker within {timeout} s; another process holds "
                f"{stores.dag_path()}: is the store worker running?"
            ) from None
        except (CoreError, OSError, CommandError):
            raise
        except Exception as exc:  # the worker's error, rebuilt by Celery as whatever type it can
            raise CommandError(f"the store worker failed: {type(exc).__name__}: {exc}") from None

    # -- reads ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reader(self) -> Iterator[BlockStore]:
        store = stores.open_secondary()
        try:
            yield store
        finally:
            store.close()

    def do_cat(self, *, cid: str, offset: int, length: int | None, **_: object) -> None:
        root = self._cid(cid)
        self.stdout.flush()
        out = getattr(self.stdout, "buffer", None) or sys.stdout.buffer
        with self._reader() as store:
            try:
                for piece in store.cat(root, offset, length):
                    out.write(piece)
                out.flush()
            except BrokenPipeError:
                # The reader went away (`dag cat … | head`): not an error; keep Python quiet at exit.
                if out is sys.stdout.buffer:
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    def do_stat(self, *, cid: str, **_: object) -> None:
        root = self._cid(cid)
        with self._reader() as store:
            stat = store.stat(root)
            meta = store.object_meta(root)
            pins = store.pin_count(root)
        chunk_size: int | None
        max_links: int | None
        if meta is not None:
            chunk_size, max_links, source = meta.chunk_size, meta.max_links, "recorded at import"
        else:
            chunk_size, max_links, source = stat.chunk_size, stat.max_links, "inferred from the layout"
        rows = [
            ("cid", str(root)),
            ("size", stat.size),
            ("blocks", stat.blocks),
            ("depth", stat.depth),
            ("chunk size", "-" if chunk_size is None else chunk_size),
            ("max links", "-" if max_links is None else max_links),
            ("parameters", source),
            ("pins", pins),
        ]
        for name, value in rows:
            self.stdout.write(f"{name:<11} {value}")

    def do_export_car(self, *, cid: str, out: str, **_: object) -> None:
        root = self._cid(cid)
        target = Path(out)
        partial = target.with_name(target.name + ".part")
        with self._reader() as store:
            try:
                with partial.open("wb") as stream:
                    stats = export_car(store, stream, [root])
                partial.replace(target)  # a failed export leaves no truncated CAR behind
            finally:
                partial.unlink(missing_ok=True)
        self.stdout.write(f"wrote {stats.blocks} block(s), {stats.bytes_written} bytes to {target}")

    def do_verify(self, *, cids: list[str], **_: object) -> None:
        roots = [self._cid(text) for text in cids] or None
        with self._reader() as store:
            store.catch_up()
            bad = store.verify(roots)
            for cid in bad:
                self.stdout.write(f"{'corrupt' if store.has(cid) else 'missing'} {cid}")
        if bad:
            raise CommandError(f"{len(bad)} block(s) corrupt or missing")
        scope = f"every block under {len(roots)} root(s)" if roots else "every stored block"
        self.stdout.write(f"ok: {scope} hashes to its CID")

    # -- arguments -----------------------------------------------------------------------------
    @staticmethod
    def _cid(text: str) -> CID:
        try:
            return CID.decode(text)
        except CodecError as exc:
            raise CommandError(f"invalid CID {text!r}: {exc}") from None

    @staticmethod
    def _input_file(name: str) -> Path:
        path = Path(name).resolve()
        if not path.exists():
            raise CommandError(f"no such file: {name}")
        if not path.is_file():
            raise CommandError(f"not a regular file: {name}")
        return path
