"""Writes to the content store: one path for the store worker's tasks and the ``dag`` command.

Each function takes the primary :class:`~chain.core.blockstore.BlockStore` to
write through (the store worker's :func:`chain.stores.dag_writer`, or the
instance a ``dag`` command opened because no process held the store), takes
paths and CID strings rather than objects, and returns a JSON-ready dict,
which is what a Celery result carries back to the caller.

Pins are reference counts (a record version pins its root). A call pins once;
the caller that holds a reference is the one that drops it.
"""

from __future__ import annotations

import io
from pathlib import Path

from django.conf import settings

from chain.core.blockstore import BlockStore, add_file, import_car
from chain.core.cid import CID
from chain.core.errors import CodecError, NotFoundError
from chain.core.streamio import GrowingFile
from chain.core.unixfs import ChunkParams


def chunk_params(chunk_size: int | None = None, max_links: int | None = None) -> ChunkParams:
    """The node's profile (``DAG_CHUNK_SIZE``, ``DAG_MAX_LINKS``) unless overridden.

    :class:`CodecError` for values the UnixFS builder or bitswap cannot handle.
    """
    try:
        return ChunkParams(chunk_size or settings.DAG_CHUNK_SIZE, max_links or settings.DAG_MAX_LINKS)
    except ValueError as exc:
        raise CodecError(str(exc)) from None


def dag_add_path(
    *, store: BlockStore, path: str | Path, chunk_size: int | None = None, max_links: int | None = None
) -> dict:
    """Stream the file at ``path`` (a spool file, a file named on the command line) into the
    store as a UnixFS DAG and pin its root. The same bytes and parameters give the same root."""
    params = chunk_params(chunk_size, max_links)
    with open(path, "rb") as stream:
        result = add_file(store, stream, chunk_size=params.chunk_size, max_links=params.max_links, pin=True)
    return {
        "root": str(result.root),
        "size": result.size,
        "blocks": result.blocks,
        "depth": result.depth,
        "chunk_size": result.chunk_size,
        "max_links": result.max_links,
        "pins": store.pin_count(result.root),
    }


def dag_import_car(*, store: BlockStore, path: str | Path, root: str | None = None, growing: bool = False) -> dict:
    """Import a CARv1 file and pin its roots, all or nothing: a bad CAR leaves nothing
    stored. With ``root``, a CAR whose roots are not exactly that one is refused.
    ``growing``: the file is still being fetched (a replica); it is imported as it
    arrives, up to the end its writer marks (:class:`~chain.core.streamio.GrowingFile`)."""
    expected = None if root is None else [CID.decode(root)]
    try:
        raw = GrowingFile(path) if growing else open(path, "rb", buffering=0)  # noqa: SIM115
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such CAR file (already removed)") from None
    source = raw.source_fd() if isinstance(raw, GrowingFile) else raw.fileno()
    with io.BufferedReader(raw, buffer_size=1 << 20) as stream:
        result = import_car(store, stream, pin=True, expect_roots=expected, source_fd=source)
    return {"roots": [str(root) for root in result.roots], "blocks": result.blocks, "bytes": result.bytes}


def dag_gc(*, store: BlockStore) -> dict:
    """Delete every block no pin reaches (nothing at all if a pinned DAG is damaged)."""
    result = store.gc()
    return {"removed": result.removed, "kept": result.marked, "pinned_roots": len(store.pins())}


def dag_pin(*, store: BlockStore, cid: str) -> dict:
    """Add a reference to ``cid``, whose whole DAG must be stored; return the new count."""
    root = CID.decode(cid)
    return {"cid": str(root), "pins": store.pin(root)}


def dag_unpin(*, store: BlockStore, cid: str) -> dict:
    """Drop a reference to ``cid``; return what remains (gc frees the blocks at 0)."""
    root = CID.decode(cid)
    return {"cid": str(root), "pins": store.unpin(root)}
