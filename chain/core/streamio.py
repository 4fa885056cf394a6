"""Reading from binary streams that may return short reads (pipes, sockets, a file still being written)."""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO, TypeVar

from .errors import CodecError

T = TypeVar("T")


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer only at the end of the stream.

    A plain ``read(n)`` may legally return fewer bytes mid-stream; the
    chunkers, the CAR reader and the stream cipher all need whole units.
    """
    data = stream.read(size)
    if data is None:
        raise ValueError("non-blocking stream returned no data")
    if len(data) == size or not data:
        return data
    parts = [data]
    missing = size - len(data)
    while missing:
        more = stream.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


class GrowingFile(io.RawIOBase):
    """Reads a file that another process is still writing, as far as its writer goes.

    The writer appends to ``path`` and, when done, calls :func:`finish_growing`,
    which leaves a marker beside it (``path.end``): the final size, or a failure.
    (``marker_of``: the writer's name for the file, when it is read here through
    another link to it, which the writer may rename or remove meanwhile.)
    A read at the current end waits for more bytes or for the marker: the end
    of the stream once every byte written is read; :class:`CodecError` if the
    writer gave up, or wrote nothing for ``idle`` seconds. Wrap it in
    ``io.BufferedReader`` for small reads.
    """

    POLL = 0.002
    """First pause at the current end; it doubles up to 10 ms while nothing arrives."""

    def __init__(
        self, path: str | os.PathLike[str], *, idle: float = 60.0, marker_of: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__()
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self._path = os.fspath(path if marker_of is None else marker_of)  # whose ``.end`` marker ends it
        self._idle = idle
        self._size: int | None = None  # known once the writer has finished

    def readable(self) -> bool:
        return True

    def source_fd(self) -> int:
        """The descriptor of the file being read (its bytes, once read here, do not change)."""
        return self._file.fileno()

    def readinto(self, buffer: Any) -> int:
        pause = self.POLL
        waited = 0.0
        while True:
            got = self._file.readinto(buffer)
            if got:
                return got
            if self._size is None:
                self._size = _finished_size(self._path)
            if self._size is not None and self._file.tell() >= self._size:
                return 0
            if self._size is None:
                if waited >= self._idle:
                    raise CodecError(f"{self._path}: nothing written for {self._idle:.0f} s")
                time.sleep(pause)
                waited += pause
                pause = min(pause * 2, 0.01)

    def close(self) -> None:
        self._file.close()
        super().close()


def finish_growing(path: str | os.PathLike[str], *, complete: bool) -> None:
    """The writer's last word on ``path``: its final size (flushed already), or that it gave up."""
    marker = f"{os.fspath(path)}.end"
    with open(marker + ".tmp", "w") as out:
        out.write(str(os.path.getsize(path)) if complete else "failed")
    os.replace(marker + ".tmp", marker)


def remove_growing(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and its marker."""
    for name in (os.fspath(path), f"{os.fspath(path)}.end"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _finished_size(path: str) -> int | None:
    try:
        with open(f"{path}.end") as marker:
            text = marker.read()
    except FileNotFoundError:
        return None
    if text == "failed":
        raise CodecError(f"{path}: its writer gave up")
    return int(text)


def read_ahead(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """``items``, produced by a thread of their own up to ``depth`` ahead of the consumer.

    For a producer and a consumer that both release the GIL (reading and
    hashing blocks; sending them), so they overlap on two cores. An exception
    in the producer is raised to the consumer where it would have surfaced;
    a consumer that stops early stops the producer at its next item.
    """
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                box.put((True, item))
            box.put((True, done))
        except BaseException as exc:  # handed over to the consumer
            box.put((False, exc))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = box.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # let a producer blocked on a full queue see the stop
            with contextlib.suppress(queue.Empty):
                box.get(timeout=0.05)
