"""Sending a record's file: streamed and decrypted on the way, with ``Range`` (RFC 9110), to the portal and the API."""

from __future__ import annotations

import re
from urllib.parse import quote

from django.http import HttpResponse, StreamingHttpResponse
from django.utils.translation import gettext as _

from records.clinical import reading
from records.models import RecordVersion

_RANGE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")


def rekeyed_away(version: RecordVersion) -> bool:
    """Whether a later version re-encrypted this one, whose file ciphertext is then (soon) collected."""
    return RecordVersion.objects.filter(
        record_id=version.record_id, number=version.number + 1, origin=RecordVersion.Origin.REKEY
    ).exists()


def content_disposition(kind: str, name: str) -> str:
    ascii_name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "file"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def file_unavailable(access, record_file) -> HttpResponse | None:
    """409 while the file is still being stored, or still being copied to this node from another;
    410 for the old copy of a re-encrypted file once deleted."""
    if record_file.status != "stored":
        return HttpResponse(
            _("This file is still being processed."), status=409, content_type="text/plain; charset=utf-8"
        )
    if reading.file_present(record_file):
        return None
    if rekeyed_away(access.version):
        message = _(
            "This copy of the file was re-encrypted with new keys after access was revoked, and the old copy "
            "was deleted. Open the current version of the record to get the same file."
        )
        return HttpResponse(message, status=410, content_type="text/plain; charset=utf-8")
    response = HttpResponse(
        _("This file is still being copied to this node from the institution that holds it. Try again in a moment."),
        status=409,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = "5"
    return response


def byte_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """(first, last, partial) for a ``Range`` header; None when the range cannot be satisfied (416).

    RFC 9110 section 14.2: a server may ignore a Range it cannot parse, or one
    asking for several ranges, and answer 200 with the whole file, which is
    what clients expect.
    """
    match = _RANGE.match(header.strip()) if header and size else None
    if match and match.group(1) and match.group(2) and int(match.group(2)) < int(match.group(1)):
        match = None  # "last < first" is not a valid range: ignored like any other
    if not (match and (match.group(1) or match.group(2))):
        return 0, size - 1, False
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:
        start, end = max(0, size - int(match.group(2))), size - 1
    if start > end or start >= size:
        return None
    return start, end, True


def file_response(request, access, record_file, name: str, *, download: bool) -> HttpResponse:
    """The file's bytes (or the part ``Range`` asks for), or why they cannot be sent (409, 410, 416)."""
    unavailable = file_unavailable(access, record_file)
    if unavailable is not None:
        return unavailable
    size = record_file.size
    span = byte_range(request.headers.get("Range"), size)
    if span is None:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    start, end, partial = span
    length = end - start + 1 if size else 0
    response = StreamingHttpResponse(
        reading.file_chunks(access, record_file, start, length),
        status=206 if partial else 200,
        content_type=record_file.media_type,
    )
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, no-store"
    inline = not download and (
        record_file.media_type.startswith("image/") or record_file.media_type == "application/pdf"
    )
    response["Content-Disposition"] = content_disposition("inline" if inline else "attachment", name)
    if partial:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    if record_file.media_type.startswith("image/"):
        response["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'"
    return response
