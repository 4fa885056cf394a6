"""The embedded default's Celery broker: message files in folders, made safe for several processes.

kombu's ``filesystem`` transport creates a message file under its final name,
then writes into it. A consumer that lists the folder in between reads an empty
or half-written file, and the ``JSONDecodeError`` that follows is
"unrecoverable" for Celery: the worker exits (celery/kombu#1551). It also moves
claimed messages to the system temporary folder, outside the node's data
directory, and rewrites its exchange tables in place after truncating them, so a
reader can see an empty table. This transport keeps kombu's folder layout and
file names and fixes all three:

* **Visible only when complete.** A producer writes the whole message under a
  temporary name in ``tmp/`` (same filesystem), flushes it to disk, and renames
  it into ``queue/``. ``rename(2)`` is atomic: a consumer sees no file or the
  whole message, never part of one.
* **Claimed by rename.** A consumer claims a message by renaming it into
  ``claimed/`` (only one consumer's rename succeeds), reads it, then removes it.
  Everything stays under the data directory.
* **A bad message never kills a worker.** A file that is not a JSON message (a
  producer killed before the rename leaves nothing visible, but older versions
  of kombu, a full disk or a person can leave an empty or damaged file) is moved
  aside into ``bad/`` and logged, and the consumer goes on to the next message.
* **Exchange tables replaced atomically**, under a lock file, so a reader never
  sees a truncated table.

What it does not add: acknowledgements that survive a killed worker. A message
a worker has claimed and not finished is lost with the worker, as with kombu's
transport; nothing depends on it, because pending work lives in database rows
(the outbox) and beat re-drives it (``docs/architecture.md``, "Broker").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from pathlib import Path
from queue import Empty

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.objects import cached_property

log = logging.getLogger(__name__)

# Claimed files older than this belonged to a consumer that died between claiming and
# reading (microseconds apart): they go back to the queue. Unfinished temporary files
# of killed producers are removed after the same time.
STALE_SECONDS = 60.0


class BadMessage(ValueError):
    """A queue file that is not a complete kombu message."""


def _decode(payload: bytes) -> dict:
    try:
        message = loads(bytes_to_str(payload))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"not a JSON message ({exc})") from None
    if not isinstance(message, dict):
        raise BadMessage(f"a message is a JSON object, not {type(message).__name__}")
    return message


def _write_durably(path: str, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear atomically and whose bad messages are set aside."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for folder in (self.tmp_folder, self.claimed_folder, self.bad_folder, str(self.control_folder)):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        self._recover()

    # -- folders ---------------------------------------------------------------------------
    def _sibling(self, option: str, name: str) -> str:
        return self.transport_options.get(option) or os.path.join(os.path.dirname(self.data_folder_in), name)

    @cached_property
    def tmp_folder(self) -> str:
        return self._sibling("tmp_folder", "tmp")

    @cached_property
    def claimed_folder(self) -> str:
        return self._sibling("claimed_folder", "claimed")

    @cached_property
    def bad_folder(self) -> str:
        return self._sibling("bad_folder", "bad")

    # -- producing ---------------------------------------------------------------------------
    def _put(self, queue, payload, **kwargs):
        # Zero-padded milliseconds keep lexicographic order equal to time order.
        name = f"{int(time.monotonic() * 1000):016d}_{uuid.uuid4()}.{queue}.msg"
        temporary = os.path.join(self.tmp_folder, name)
        try:
            _write_durably(temporary, str_to_bytes(dumps(payload)))
            os.replace(temporary, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise filesystem.ChannelError(f"Cannot add message {name!r} to the queue: {exc}") from exc

    # -- consuming ---------------------------------------------------------------------------
    def _get(self, queue):
        suffix = f"{queue}.msg"
        for filename in sorted(os.listdir(self.data_folder_in)):
            if filename.partition(".")[2] != suffix:
                continue
            claimed = os.path.join(self.claimed_folder, filename)
            try:
                os.rename(os.path.join(self.data_folder_in, filename), claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            try:
                with open(claimed, "rb") as handle:
                    message = _decode(handle.read())
            except (BadMessage, OSError) as exc:
                self._set_aside(claimed, filename, exc)
                continue
            os.unlink(claimed)
            return message
        raise Empty()

    def _set_aside(self, claimed: str, filename: str, reason: Exception) -> None:
        target = os.path.join(self.bad_folder, filename)
        try:
            os.replace(claimed, target)
        except OSError:
            target = "(could not be moved; removed)"
            with contextlib.suppress(OSError):
                os.unlink(claimed)
        log.error("broker: set aside unreadable message %s: %s; kept at %s", filename, reason, target)

    def _recover(self) -> None:
        """Return messages a dead consumer claimed but never read; drop dead producers' temporary files."""
        cutoff = time.time() - STALE_SECONDS
        for folder, action in ((self.claimed_folder, "requeue"), (self.tmp_folder, "drop")):
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    try:
                        if entry.stat().st_mtime >= cutoff:
                            continue
                        if action == "requeue":
                            os.replace(entry.path, os.path.join(self.data_folder_in, entry.name))
                            log.warning("broker: returned unfinished message %s to the queue", entry.name)
                        else:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        continue

    # -- exchange tables ------------------------------------------------------------------
    def get_table(self, exchange):
        file = self._exchange_file(exchange)
        try:
            table = loads(bytes_to_str(file.read_bytes()))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise filesystem.ChannelError(f"Cannot read exchange table {file}: {exc}") from exc
        return [filesystem.exchange_queue_t(*q) for q in table]

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: queues if entry in queues else [entry, *queues])

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        virtual_delete = super(filesystem.Channel, self)._delete
        virtual_delete(queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: [q for q in queues if q != entry])

    def _update_table(self, exchange, change) -> None:
        file = self._exchange_file(exchange)
        lock_path = file.with_suffix(".lock")
        try:
            with open(lock_path, "a+b") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                before = self.get_table(exchange)
                after = change(list(before))
                if after == before and file.exists():
                    return
                temporary = Path(self.tmp_folder) / f"{file.name}.{uuid.uuid4()}"
                _write_durably(str(temporary), str_to_bytes(dumps(after)))
                os.replace(temporary, file)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot update exchange table {file}: {exc}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    global_state = filesystem.virtual.BrokerState()
    driver_type = "filesystem"
    driver_name = "yilian-filesystem"

    @property
    def default_connection_params(self) -> dict:
        # Folders on this machine: no host to name. With kombu's default ("localhost"), every process
        # logged "No hostname was supplied" at each connection, which reads like a misconfiguration.
        return {"port": None, "hostname": None}
