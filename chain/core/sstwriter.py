"""SST files written by a helper process, so that writing them overlaps hashing.

rocksdict's ``SstFileWriter`` holds the GIL while it copies a block into the
file, so in one process a large add alternates between hashing (which
releases the GIL) and writing (which does not), and one of the two cores
waits. Here the process that reads and hashes sends each segment of verified
blocks to a helper process, which sorts them and writes one SST file while
the next segment is hashed: the two run on two cores. Measured on the
project's 2-core machines, 256 MiB of 1 MiB blocks: hashing and writing in
one process 0.40 s, with the helper 0.25 s.

A block travels either inline (its bytes over the pipe) or, when the caller
read it from a regular file, as an offset and a length in that file, which
the helper reads back itself: no copy through the pipe at all. The parent
names the file it has open by its path and its device and inode numbers
(:func:`source_spec`); the helper opens the path and refuses it unless it is
that very file. That file is the node's own (a spool file, the file a command
named) and is not written while the add runs: the parent hashed those very
bytes, and every read from the store re-hashes them anyway
(:meth:`BlockStore.get`).

The protocol, over the helper's stdin and stdout, all integers big-endian:

* a job: ``u32`` length + the SST path; ``u32`` length + the source file
  as ``device:inode:path`` (empty: none); ``u32`` number of blocks; then per block ``u8`` key
  length + key, and either ``0x00`` + ``u32`` length + bytes, or ``0x01`` +
  ``u64`` offset + ``u32`` length in the source file;
* the answer: ``K``, or ``E`` + ``u32`` length + a UTF-8 message;
* once, before any answer: ``R``, when the helper has started.

The helper writes the file (finished and fsynced) before it answers, and
exits when its stdin closes: a parent that dies takes its helpers with it.
A helper killed mid-file leaves a partial file in the import's staging
directory, which the parent (or the store's next open) removes.

    python -m chain.core.sstwriter      # the helper; started by HelperPool
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, cast

from rocksdict import SstFileWriter

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_READY = b"R"
"""What a helper writes once, when it has started: before the answer to its first job."""
_INLINE = 0
_IN_FILE = 1
_PIPE_BYTES = 1024 * 1024
"""Pipe buffer asked for (Linux's default maximum): fewer wake-ups per segment."""
_ROOT = str(Path(__file__).resolve().parents[2])
_IDLE_HELPERS = 4
_BLOCK_SLACK = 4096
"""A data block's bytes beyond its one value: the key, the lengths, the restart array, the trailer."""
_TAIL_BYTES = 64 * 1024
"""What follows an SST file's last data block (filter, index, properties, footer) fits in this for a segment."""


class HelperError(Exception):
    """The helper failed to write a file, or died."""


# One block of a segment: (key, bytes) inline, or (key, offset, length) in the source file.
Entry = tuple[bytes, bytes] | tuple[bytes, int, int]


class Helper:
    """One helper process and its pipes; one job at a time."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "chain.core.sstwriter"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        self._in = cast(BinaryIO, self._process.stdin)
        self._out = cast(BinaryIO, self._process.stdout)
        self._ready = False
        _grow_pipe(self._in.fileno())

    def ready(self) -> None:
        """Return once the helper has started (imported rocksdict, ~0.15 s after it was spawned)."""
        if self._ready:
            return
        try:
            greeting = self._out.read(1)
        except (ConnectionError, ValueError) as exc:
            raise HelperError(f"the SST helper died: {exc}") from None
        if greeting != _READY:
            raise HelperError(f"the SST helper did not start (exit status {self._process.poll()})")
        self._ready = True

    def send(self, path: str, source: str | None, entries: Sequence[Entry]) -> None:
        """Have the helper write ``entries`` (sorted there) into a new SST file at ``path``;
        :meth:`wait` for it before the next :meth:`send`."""
        try:
            self._send(path, source, entries)
        except (BrokenPipeError, ConnectionError, ValueError) as exc:
            raise HelperError(f"the SST helper died: {exc}") from None

    def wait(self) -> None:
        """The answer to the last :meth:`send`: return once the file is written; :class:`HelperError` if not."""
        self.ready()
        try:
            answer = self._out.read(1)
            if answer == b"K":
                return
            if answer == b"E":
                (length,) = _U32.unpack(self._read_exact(4))
                raise HelperError(self._read_exact(length).decode("utf-8", "replace"))
        except (ConnectionError, ValueError) as exc:
            raise HelperError(f"the SST helper died: {exc}") from None
        raise HelperError(f"the SST helper died (exit status {self._process.poll()})")

    def _send(self, path: str, source: str | None, entries: Sequence[Entry]) -> None:
        fd = self._in.fileno()
        out = [_text(path), _text(source or ""), _U32.pack(len(entries))]
        for entry in entries:
            out.append(bytes([len(entry[0])]) + entry[0])
            if len(entry) == 2:
                out += [b"\x00" + _U32.pack(len(entry[1])), entry[1]]
            else:
                out.append(b"\x01" + _U64.pack(entry[1]) + _U32.pack(entry[2]))
        for piece in out:
            _write_all(fd, piece)

    def _read_exact(self, size: int) -> bytes:
        data = self._out.read(size)
        if len(data) != size:
            raise HelperError("the SST helper died mid-answer")
        return data

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        for pipe in (self._in, self._out):
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class HelperPool:
    """Helpers for one store: taken one per running add, kept (a few) for the next."""

    def __init__(self) -> None:
        self._idle: list[Helper] = []
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.alive():
                    return helper
                helper.close()
        return Helper()

    def give_back(self, helper: Helper, *, healthy: bool) -> None:
        with self._lock:
            if healthy and not self._closed and helper.alive() and len(self._idle) < _IDLE_HELPERS:
                self._idle.append(helper)
                return
        helper.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.close()


def source_spec(fd: int) -> str:
    """How a helper finds the file ``fd`` is open on: its device and inode numbers, and its path now."""
    info = os.fstat(fd)
    return f"{info.st_dev}:{info.st_ino}:{os.readlink(f'/proc/self/fd/{fd}')}"


def _open_source(spec: str) -> int:
    device, inode, path = spec.split(":", 2)
    fd = os.open(path, os.O_RDONLY)
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (int(device), int(inode)):
        os.close(fd)
        raise OSError(f"{path} is no longer the file being added")
    return fd


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return _U32.pack(len(raw)) + raw


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]  # releases the GIL while the kernel copies


def _grow_pipe(fd: int) -> None:
    import fcntl

    setpipe = getattr(fcntl, "F_SETPIPE_SZ", 1031)
    with contextlib.suppress(OSError):  # a smaller pipe only means more wake-ups
        fcntl.fcntl(fd, setpipe, _PIPE_BYTES)


# -- the helper's side --------------------------------------------------------------------
def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    from .blockstore import _blocks_options

    options = _blocks_options()
    stdout.write(_READY)
    stdout.flush()
    while True:
        head = stdin.read(4)
        if not head:
            return  # the parent closed the pipe
        path = _read_text(stdin, head)
        source = _read_text(stdin, _read(stdin, 4))
        (count,) = _U32.unpack(_read(stdin, 4))
        entries: list[Entry] = []
        for _ in range(count):
            key = _read(stdin, _read(stdin, 1)[0])
            if _read(stdin, 1) == b"\x00":
                (length,) = _U32.unpack(_read(stdin, 4))
                entries.append((key, _read(stdin, length)))
            else:
                offset, length = _U64.unpack(_read(stdin, 8))[0], _U32.unpack(_read(stdin, 4))[0]
                entries.append((key, offset, length))
        try:
            fd = _open_source(source) if source else -1
            try:
                _write_sst(SstFileWriter(options=options), path, fd, entries)
            finally:
                if fd >= 0:
                    os.close(fd)
        except Exception as exc:  # rocksdict raises bare Exception; the parent reports it
            message = f"{type(exc).__name__}: {exc}".encode()
            stdout.write(b"E" + _U32.pack(len(message)) + message)
        else:
            stdout.write(b"K")
        stdout.flush()


def _write_sst(writer: SstFileWriter, path: str, source: int, entries: list[Entry]) -> None:
    entries.sort(key=lambda entry: entry[0])
    writer.open(path)
    previous = None
    for entry in entries:
        if entry[0] == previous:
            continue  # the same block twice in one segment: written once
        previous = entry[0]
        if len(entry) == 2:
            data = entry[1]
        else:
            data = os.pread(source, entry[2], entry[1])
            if len(data) != entry[2]:
                raise OSError(f"the source file ends before offset {entry[1] + entry[2]}")
        writer[entry[0]] = data
    writer.finish()  # fsyncs the file
    if entries:
        _prefetch_ends(path, _length(entries[0]), _length(entries[-1]))


def _length(entry: Entry) -> int:
    return len(entry[1]) if len(entry) == 2 else entry[2]


def _prefetch_ends(path: str, first: int, last: int) -> None:
    """Have the kernel read back the file's first and last data blocks, which its ingestion reads.

    ``SstFileWriter`` tells the kernel to drop every page it writes, so the
    ingestion, which reads the data blocks holding a file's smallest and
    largest keys, would read them from the disk while the add waits (about
    4 ms a 32 MiB file, most of an ingestion's time). Asking for them here
    (asynchronously) overlaps those reads with the hashing of the next
    segment. The last block sits just before the file's index, filter and
    properties, a few KiB for a segment of large blocks; a window that misses
    it only means the ingestion reads it itself.
    """
    with contextlib.suppress(OSError):  # a hint: nothing depends on it
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            os.posix_fadvise(fd, 0, min(size, first + _BLOCK_SLACK), os.POSIX_FADV_WILLNEED)
            tail = min(size, last + _TAIL_BYTES)
            os.posix_fadvise(fd, size - tail, tail, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _read(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise SystemExit(0)  # the parent went away mid-job: nothing to answer
    return data


def _read_text(stream: BinaryIO, head: bytes) -> str:
    (length,) = _U32.unpack(head)
    return _read(stream, length).decode("utf-8")


def main() -> None:
    """The helper's process: serve until the parent closes the pipe; quietly if the parent is already gone."""
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # a parent that exits before the greeting or an answer: nothing to tell anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # or the exit's flush would report it


if __name__ == "__main__":
    main()
