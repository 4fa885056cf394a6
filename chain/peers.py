"""Node-to-node HTTP on the peer port: consensus messages, transactions, block sync, status.

Every request is authenticated by its sending node: headers ``X-Yilian-Node``
(its authority id) and ``X-Yilian-Signature`` (base64 Ed25519 over the method,
path and body), checked against the authorities this node knows. Consensus
messages inside are signed again by their own senders and checked against the
validator set of their height by the consensus loop; a forwarded message is
as trustworthy as its signature, whoever forwards it.

Endpoints (bodies are DAG-CBOR):

* ``POST /peer/v1/messages`` ``{"messages": [...], "blocks": [[value id, block], ...]}``
* ``POST /peer/v1/txs`` ``{"txs": [raw, ...]}`` → ``{"accepted": n, "refused": m}``
* ``GET /peer/v1/status`` → ``{"height", "head", "round", "step"}``
* ``GET /peer/v1/blocks?from=H&limit=N`` → ``{"blocks": [value, ...]}``
* ``POST /peer/v1/app/<name>`` an app's message (:mod:`chain.peer_apps`): the
  handler registered under ``name`` answers it
* ``GET /ipfs/{cid}`` with ``Accept: application/vnd.ipld.raw`` (or
  ``?format=raw``): one block of this node's DAG store; with
  ``application/vnd.ipld.car`` (or ``?format=car``): the whole DAG under it as
  a CARv1 stream (depth first, no duplicates), and only when this node holds
  every block of it, so a partial object is never served. The conventions
  are the IPFS trustless gateway's; what the store holds is ciphertext
  (records, manifests, key bundles sealed to their readers), never a key or
  plaintext, and only authenticated consortium nodes are answered (a caller
  without node headers gets 401, one that is not a member 403).

Bad input (unknown node, bad signature, oversized, malformed) gets 4xx and is
counted; a peer sending more than its share is answered 429. The server is
threaded; whatever must be decided goes to the single consensus loop
through its inbox.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import queue
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.client import HTTPConnection, HTTPException, HTTPResponse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from chain.core import crypto, dagcbor
from chain.core.blockstore import BlockStore, StoreError, export_car
from chain.core.cid import CID
from chain.core.errors import CodecError, IntegrityError, NotFoundError
from chain.peer_apps import APP_PREFIX, peer_handler

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
RATE = 200.0  # requests per second per peer, sustained
BURST = 400.0
PREFIX = "/peer/v1/"
IPFS_PREFIX = "/ipfs/"
RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"


def request_signature_bytes(method: str, path: str, body: bytes) -> bytes:
    return b"yilian/peer/v1\x00" + method.encode() + b" " + path.encode() + b"\x00" + body


class _Bucket:
    def __init__(self) -> None:
        self.tokens = BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.at) * RATE)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class PeerServer(ThreadingHTTPServer):
    """Answers peers. ``keys()`` gives the authorities' public keys (it changes with membership)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        keys: Callable[[], dict[str, bytes]],
        on_messages: Callable[[str, Any], bool],
        on_txs: Callable[[str, list[bytes]], dict[str, int]],
        status: Callable[[], dict[str, Any]],
        blocks: Callable[[int, int], list[bytes]],
        dag: Callable[[], BlockStore] | None = None,
    ) -> None:
        super().__init__(address, _Handler)
        self.dag = dag
        self.keys = keys
        self.on_messages = on_messages
        self.on_txs = on_txs
        self.status = status
        self.blocks = blocks
        self.dropped: Counter[str] = Counter()
        self.last_heard: dict[str, float] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A peer that hung up or sent garbage costs a log line, not a traceback on stderr.
        self.count("connection error")
        logger.debug("peer connection from %s failed", client_address, exc_info=True)

    def admit(self, node: str) -> bool:
        with self._lock:
            bucket = self._buckets.setdefault(node, _Bucket())
            return bucket.take()

    def count(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1


class _Handler(BaseHTTPRequestHandler):
    server: PeerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("peer %s: " + format, self.client_address[0], *args)

    def _reply(self, status: int, value: Any = None) -> None:
        body = dagcbor.encode(value if value is not None else {})
        self.send_response(status)
        self.send_header("Content-Type", "application/cbor")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, reason: str) -> None:
        self.server.count(reason)
        self._reply(status, {"error": reason})

    def _authenticated(self, body: bytes) -> str | None:
        node = self.headers.get("X-Yilian-Node", "")
        if not node:
            self._refuse(401, "unauthenticated")
            return None
        key = self.server.keys().get(node)
        if key is None:
            self._refuse(403, "not a member")
            return None
        try:
            signature = base64.b64decode(self.headers.get("X-Yilian-Signature", ""), validate=True)
        except ValueError:
            signature = b""
        if not crypto.is_valid_signature(key, signature, request_signature_bytes(self.command, self.path, body)):
            self._refuse(401, "bad signature")
            return None
        if not self.server.admit(node):
            self._refuse(429, "rate limited")
            return None
        self.server.last_heard[node] = time.time()
        return node

    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._refuse(413, "oversized")
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        node = self._authenticated(body)
        if node is None:
            return
        try:
            value = dagcbor.decode(body)
            if not isinstance(value, dict):
                raise CodecError("a request body is a map")
        except CodecError:
            self._refuse(400, "malformed")
            return
        if self.path == PREFIX + "messages":
            if not self.server.on_messages(node, value):
                self._refuse(503, "inbox full")
                return
            self._reply(202)
        elif self.path.startswith(APP_PREFIX):
            self._app(node, self.path[len(APP_PREFIX) :], value)
        elif self.path == PREFIX + "txs":
            txs = value.get("txs")
            if not isinstance(txs, list) or not all(isinstance(t, bytes) for t in txs):
                self._refuse(400, "malformed")
                return
            self._reply(200, self.server.on_txs(node, txs))
        else:
            self._refuse(404, "no such endpoint")

    def do_HEAD(self) -> None:
        """Whether this node holds a DAG (``/ipfs/{cid}``), without its bytes."""
        if self._authenticated(b"") is None:
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith(IPFS_PREFIX) and self.server.dag is not None:
            self._ipfs(url, self.server.dag, head=True)
        else:
            self._refuse(404, "no such endpoint")

    def do_GET(self) -> None:
        if self._authenticated(b"") is None:
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path == PREFIX + "status":
            self._reply(200, self.server.status())
        elif url.path == PREFIX + "blocks":
            query = urllib.parse.parse_qs(url.query)
            try:
                start, limit = int(query["from"][0]), min(int(query.get("limit", ["50"])[0]), 200)
            except (KeyError, ValueError):
                self._refuse(400, "malformed")
                return
            self._reply(200, {"blocks": self.server.blocks(start, max(1, limit))})
        elif url.path.startswith(IPFS_PREFIX) and self.server.dag is not None:
            self._ipfs(url, self.server.dag)
        else:
            self._refuse(404, "no such endpoint")

    def _app(self, node: str, name: str, value: dict[str, Any]) -> None:
        handler = peer_handler(name)
        if handler is None:
            self._refuse(404, "no such endpoint")
            return
        from django.db import close_old_connections

        close_old_connections()
        try:
            status, answer = handler(node, value)
        except Exception:
            logger.exception("the %s handler failed on a message from %s", name, node)
            status, answer = 500, {"error": "failed"}
        finally:
            close_old_connections()
        self._reply(status, answer)

    # -- the trustless gateway ----------------------------------------------------------------------------
    def _ipfs(self, url: urllib.parse.SplitResult, dag: Callable[[], BlockStore], *, head: bool = False) -> None:
        try:
            cid = CID.decode(url.path[len(IPFS_PREFIX) :])
        except CodecError:
            self._refuse(400, "malformed")
            return
        wanted = urllib.parse.parse_qs(url.query).get("format", [""])[0]
        accept = self.headers.get("Accept", "")
        car = wanted == "car" or (not wanted and CAR_TYPE in accept)
        if not car and wanted != "raw" and RAW_TYPE not in accept:
            self._refuse(406, "no ipld format asked")  # a trustless gateway never answers a deserialised file
            return
        try:
            store = dag()
            store.catch_up()
            complete = store.has(cid) and (not car or not store.missing(cid))
        except StoreError as exc:
            logger.warning("the DAG store cannot answer a peer: %s", exc)
            self._reply(503, {"error": "store unavailable"})
            return
        if not complete:
            self._reply(404, {"error": "not held here"})
            return
        if head:
            self._send_head(200, CAR_TYPE if car else RAW_TYPE, length=0, cid=cid)
            return
        if not car:
            try:
                data = store.get(cid)
            except (StoreError, IntegrityError, NotFoundError) as exc:
                logger.error("block %s cannot be served: %s", cid, exc)  # a corrupt block is never served
                self._reply(404, {"error": "not held here"})
                return
            self._send_head(200, RAW_TYPE, length=len(data), cid=cid)
            self.wfile.write(data)
            return
        self._send_head(200, CAR_TYPE + "; version=1; order=dfs; dups=n", length=None, cid=cid)
        chunked = _Chunked(self.connection)
        try:
            export_car(store, chunked, [cid])
        except (StoreError, IntegrityError, NotFoundError) as exc:
            # Headers are gone: end without the last chunk, so the peer sees a truncated body, not a CAR.
            logger.error("a block of %s could not be served: %s", cid, exc)
            self.close_connection = True
            return
        chunked.close()

    def _send_head(self, status: int, content_type: str, *, length: int | None, cid: CID) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Ipfs-Roots", str(cid))
        self.send_header("Cache-Control", "public, max-age=29030400, immutable")
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()


class _Chunked:
    """Sends an HTTP/1.1 chunked body on a socket (the CAR is streamed, never held whole).

    Small writes (a section's prefix) wait in a buffer; a large one (a block) goes
    out with them as one chunk, gathered by ``sendmsg`` rather than copied together.
    """

    def __init__(self, sock: socket.socket, size: int = 256 * 1024) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._size = size

    def write(self, data: bytes) -> int:
        if len(data) >= self._size:
            self._send(self._buffer, data)
            self._buffer.clear()
        else:
            self._buffer += data
            if len(self._buffer) >= self._size:
                self._flush()
        return len(data)

    def _flush(self) -> None:
        if self._buffer:
            self._send(self._buffer)
            self._buffer.clear()

    def _send(self, *parts: bytes | bytearray) -> None:
        views = [memoryview(part) for part in (b"%x\r\n" % sum(map(len, parts)), *parts, b"\r\n") if part]
        while views:
            sent = self._sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views:
                views[0] = views[0][sent:]

    def close(self) -> None:
        self._flush()
        self._sock.sendall(b"0\r\n\r\n")


class PeerClient:
    """Sends to every peer from one thread per peer; a slow or dead peer delays nobody else."""

    def __init__(self, node_id: str, private_key: bytes, peers: dict[str, str]) -> None:
        self.node_id = node_id
        self._key = private_key
        self.peers = dict(peers)
        self.reachable: dict[str, bool] = dict.fromkeys(peers, False)
        self.heights: dict[str, int] = {}
        self._queues: dict[str, queue.Queue[tuple[str, bytes]]] = {}
        self._stop = threading.Event()
        self._started = False

    def start(self) -> None:
        self._started = True
        for peer in self.peers:
            self._open(peer)

    def _open(self, peer: str) -> None:
        self._queues[peer] = queue.Queue(maxsize=2000)
        threading.Thread(target=self._sender, args=(peer,), name=f"peer-{peer}", daemon=True).start()

    def set_peers(self, peers: dict[str, str]) -> None:
        """Follow a changed peer list (a node added to the consortium file): new peers get a sender."""
        for peer, url in peers.items():
            if peer not in self.peers:
                logger.info("new peer %s at %s", peer, url)
                self.peers[peer] = url
                self.reachable[peer] = False
                if self._started:
                    self._open(peer)
            self.peers[peer] = url
        for peer in [p for p in self.peers if p not in peers]:
            logger.info("peer %s left the consortium file", peer)
            del self.peers[peer]
            self._queues.pop(peer, None)

    def stop(self) -> None:
        self._stop.set()

    def broadcast(self, path: str, value: Any) -> None:
        body = dagcbor.encode(value)
        for peer, box in list(self._queues.items()):
            try:
                box.put_nowait((path, body))
            except queue.Full:
                logger.warning("the queue to %s is full; dropping a message (it is re-sent later)", peer)

    def _headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        signature = crypto.sign(self._key, request_signature_bytes(method, path, body))
        return {
            "X-Yilian-Node": self.node_id,
            "X-Yilian-Signature": base64.b64encode(signature).decode(),
            "Content-Type": "application/cbor",
        }

    def request(self, peer: str, method: str, path: str, body: bytes = b"", *, timeout: float = 5.0) -> Any:
        """One request to ``peer``; its decoded answer, or None when it failed."""
        url = urllib.parse.urlsplit(self.peers[peer])
        connection = HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=self._headers(method, path, body))
            response = connection.getresponse()
            data = response.read()
            self.reachable[peer] = True
            if response.status >= 400:
                logger.info("peer %s answered %s to %s %s", peer, response.status, method, path)
                return None
            return dagcbor.decode(data)
        except (OSError, HTTPException, CodecError) as exc:
            if self.reachable.get(peer):
                logger.warning("peer %s unreachable: %s", peer, exc)
            self.reachable[peer] = False
            return None
        finally:
            connection.close()

    def call(self, peer: str, path: str, value: Any, *, timeout: float = 5.0) -> tuple[int, Any]:
        """POST ``value`` to ``path`` on ``peer``: its status and decoded answer (status 0: unreachable)."""
        body = dagcbor.encode(value)
        url = urllib.parse.urlsplit(self.peers[peer])
        connection = HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)
        try:
            connection.request("POST", path, body=body, headers=self._headers("POST", path, body))
            response = connection.getresponse()
            data = response.read()
            try:
                answer = dagcbor.decode(data) if data else {}
            except CodecError:
                answer = {}
            return response.status, answer
        except (OSError, HTTPException) as exc:
            logger.warning("peer %s unreachable for %s: %s", peer, path, exc)
            return 0, {"error": "unreachable"}
        finally:
            connection.close()

    # -- DAG objects (the peer's trustless gateway) --------------------------------------------------------
    def holds(self, peer: str, cid: CID, *, timeout: float = 5.0) -> bool | None:
        """Whether ``peer`` holds the whole DAG under ``cid``; None when it cannot be asked."""
        path = f"{IPFS_PREFIX}{cid}?format=car"
        try:
            with self._open_ipfs(peer, "HEAD", path, timeout) as response:
                response.read()
                return response.status == 200
        except (OSError, HTTPException):
            return None

    def fetch_car(
        self, peer: str, cid: CID, out: BinaryIO, *, timeout: float = 30.0, max_bytes: int | None = None
    ) -> bool:
        """Stream the CAR of ``cid`` from ``peer`` into ``out`` (unverified: the importer checks every block).

        False when the peer does not serve it whole, or sends more than ``max_bytes``.
        """
        try:
            with self._open_ipfs(peer, "GET", f"{IPFS_PREFIX}{cid}?format=car", timeout) as response:
                if response.status != 200:
                    response.read()
                    return False
                received = 0
                buffer = bytearray(1 << 20)
                view = memoryview(buffer)
                while got := response.readinto(buffer):  # straight into one buffer: no copy per chunk
                    received += got
                    if max_bytes is not None and received > max_bytes:
                        logger.warning("peer %s sent more than %s bytes for %s; refused", peer, max_bytes, cid)
                        return False
                    out.write(view[:got])
                return True
        except (OSError, HTTPException) as exc:
            logger.warning("fetching %s from %s failed: %s", cid, peer, exc)
            return False

    @contextlib.contextmanager
    def _open_ipfs(self, peer: str, method: str, path: str, timeout: float) -> Iterator[HTTPResponse]:
        url = urllib.parse.urlsplit(self.peers[peer])
        connection = HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=timeout)
        try:
            headers = self._headers(method, path, b"") | {"Accept": CAR_TYPE}
            connection.request(method, path, headers=headers)
            yield connection.getresponse()
        finally:
            connection.close()

    def _sender(self, peer: str) -> None:
        box = self._queues[peer]
        while not self._stop.is_set() and self._queues.get(peer) is box:
            try:
                path, body = box.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.request(peer, "POST", path, body, timeout=3.0) is None and not self.reachable[peer]:
                time.sleep(0.2)  # do not spin on a dead peer; consensus re-sends what matters
