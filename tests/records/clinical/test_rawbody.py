"""Reading a raw upload body straight from gunicorn's socket: every byte, never one past the body."""

from __future__ import annotations

import os
import socket
import threading

import pytest
from django.core.handlers.wsgi import WSGIRequest
from django.http import UnreadablePostError
from gunicorn import http as gunicorn_http
from gunicorn.config import Config
from gunicorn.http import wsgi as gunicorn_wsgi

from records.clinical.rawbody import _gunicorn_body, raw_body_chunks

pytestmark = pytest.mark.django_db(databases=[])


def _request(head_and_start: bytes, rest: bytes = b"", *, close: bool = True):
    """A Django request built by gunicorn's own parser from bytes sent over a real socket pair.

    ``head_and_start`` goes out first (gunicorn reads ahead into the body with
    the headers); ``rest`` is sent by a thread while the body is read.
    """
    server, client = socket.socketpair()
    client.sendall(head_and_start)

    def send_rest() -> None:
        client.sendall(rest)
        if close:
            client.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_rest)
    sender.start()
    cfg = Config()
    parser = gunicorn_http.get_parser(cfg, server, ("127.0.0.1", 40000))
    req = next(parser)
    _resp, environ = gunicorn_wsgi.create(req, server, ("127.0.0.1", 40000), ("127.0.0.1", 8000), cfg)
    return WSGIRequest(environ), req, parser, sender, (server, client)


def _head(length: int) -> bytes:
    return (
        f"POST /records/upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_every_byte_arrives_in_whole_chunks_and_the_next_request_stays_on_the_connection():
    body = os.urandom(3 * 65536 + 777)
    following = b"GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n"
    # 5,000 bytes of the body arrive with the headers; the rest, and a pipelined request, later.
    request, req, parser, sender, sockets = _request(_head(len(body)) + body[:5000], body[5000:] + following)
    try:
        assert _gunicorn_body(request) is not None  # the direct path, not request.read()
        pieces = [bytes(chunk) for chunk in raw_body_chunks(request, 65536)]
        sender.join()
        assert b"".join(pieces) == body
        assert [len(p) for p in pieces] == [65536, 65536, 65536, 777]
        assert req.body.read() == b""  # gunicorn has nothing left to drain
        assert not req.body.failed
        following_request = next(parser)  # what came after the body is where gunicorn looks for it
        assert following_request.path == "/next"
    finally:
        for sock in sockets:
            sock.close()


def test_a_body_that_arrived_whole_with_the_headers():
    body = b"%PDF-1.7 small"
    request, req, _parser, sender, sockets = _request(_head(len(body)) + body)
    try:
        assert b"".join(bytes(c) for c in raw_body_chunks(request, 65536)) == body
        sender.join()
        assert req.body.read() == b""
    finally:
        for sock in sockets:
            sock.close()


def test_a_client_that_goes_away_early_is_an_unreadable_body_and_the_connection_is_not_reused():
    body = os.urandom(100_000)
    request, req, _parser, sender, sockets = _request(_head(len(body) + 50_000) + body[:1000], body[1000:])
    try:
        with pytest.raises(UnreadablePostError):
            for _chunk in raw_body_chunks(request, 65536):
                pass
        sender.join()
        assert req.body.failed
    finally:
        for sock in sockets:
            sock.close()


def test_a_body_read_already_or_another_server_goes_through_request_read(rf):
    request = rf.post("/upload", data=b"abcdef" * 1000, content_type="application/octet-stream")
    assert b"".join(bytes(c) for c in raw_body_chunks(request, 4096)) == b"abcdef" * 1000

    body = os.urandom(10_000)
    request, _req, _parser, sender, sockets = _request(_head(len(body)) + body)
    try:
        first = request.read(10)  # someone read it through Django: the rest must come the same way
        assert _gunicorn_body(request) is None
        rest = b"".join(bytes(c) for c in raw_body_chunks(request, 4096))
        sender.join()
        assert first + rest == body
    finally:
        for sock in sockets:
            sock.close()
