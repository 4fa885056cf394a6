"""Streaming uploads: encrypted on the fly into the spool, never plaintext on disk.

``EncryptingUploadHandler`` replaces Django's upload handlers for upload
views. Each chunk of the request body is encrypted with a fresh file key (the
streaming AEAD of ``chain.core.stream``) and appended to a spool file, so the
web process holds at most one chunk and the spool holds ciphertext only. The
first bytes are kept (in memory) just long enough to check the file's type by
its content; a disallowed type or an oversize body stops the upload and
removes the partial spool file. The store worker later ingests the spool file
into the DAG (``records.clinical.tasks.ingest_file``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload
from django.http import QueryDict
from django.http.multipartparser import MultiPartParserError
from django.utils.http import parse_header_parameters
from django.utils.translation import gettext as _

from chain.core import stream
from chain.core.blockstore import HELPER_MIN_BYTES
from chain.core.streamio import finish_growing
from records.clinical.rawbody import raw_body_chunks

log = logging.getLogger(__name__)

SNIFF_BYTES = 132  # DICOM's "DICM" magic sits at offset 128


def sniff_media_type(head: bytes) -> str | None:
    """The media type of an allowed file, judged by its first bytes; else None.

    DICOM first: ``DICM`` at offset 128 decides, whatever the 128-byte preamble holds
    (pydicom's own test files start it with a TIFF header, ``II*\\0``).
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "application/dicom"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def sanitize_filename(name: str) -> str:
    """A display-safe file name: no path, no control characters, bounded length."""
    name = unicodedata.normalize("NFC", os.path.basename(name.replace("\\", "/")))
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip().lstrip(".")
    if not name:
        name = "file"
    if len(name) > 150:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 150 - len(ext) - 1] + "." + ext) if dot and len(ext) <= 10 else name[:150]
    return name


def stream_associated_data(stream_id: uuid.UUID) -> bytes:
    # Must equal RecordFile.stream_associated_data() for the same stream id.
    return f"yilian/record-file/v1/{stream_id}".encode()


@dataclass
class SpooledUpload:
    """What the handler leaves in ``request.FILES``: an encrypted spool file."""

    stream_id: uuid.UUID
    name: str
    media_type: str
    size: int
    ciphertext_size: int
    path: str
    file_key: bytes = field(repr=False)
    claimed: bool = False  # a RecordFile row now owns the spool file

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class UploadRejected(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @classmethod
    def too_large(cls, limit: int) -> UploadRejected:
        return cls(_("The file is larger than the limit of %(limit)s.") % {"limit": human_size(limit)}, 413)


class EncryptingUploadHandler(FileUploadHandler):
    chunk_size = 1 << 20

    def __init__(self, request=None, *, max_bytes: int | None = None) -> None:
        super().__init__(request)
        self.max_bytes = max_bytes or settings.UPLOAD_MAX_BYTES
        self.error: UploadRejected | None = None
        self.uploads: list[SpooledUpload] = []
        self._reset()

    def _reset(self) -> None:
        self._growing = False  # the store worker was asked to add the spool file as it grows
        self._encryptor = None
        self._out = None
        self._head = b""
        self._media_type = None
        self._size = 0
        self._written = 0
        self._path = None
        self._part = None

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        if content_length and content_length > self.max_bytes + 64 * 1024:
            self.error = UploadRejected.too_large(self.max_bytes)
            raise StopUpload(connection_reset=True)
        return None

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        self._reset()
        self._stream_id = uuid.uuid4()
        self._file_key = stream.new_data_key()
        os.makedirs(settings.SPOOL_DIR, exist_ok=True)
        self._path = os.path.join(settings.SPOOL_DIR, f"{self._stream_id}.enc")
        self._part = self._path + ".part"
        self._out = open(self._part, "xb")  # noqa: SIM115 - closed in file_complete / upload_interrupted
        self._encryptor = stream.Encryptor(self._file_key, associated_data=stream_associated_data(self._stream_id))
        self._write(self._encryptor.header)

    def _write(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._written += len(data)
            if not self._growing and self._written >= EARLY_INGEST_BYTES and self._media_type is not None:
                self._out.flush()
                self._growing = _ask_early_ingest(self._stream_id)

    def _fail(self, message: str, status: int):
        self.error = UploadRejected(message, status)
        self._abort()
        raise StopUpload(connection_reset=False)

    def receive_data_chunk(self, raw_data, start):
        self._size += len(raw_data)
        if self._size > self.max_bytes:
            too_large = UploadRejected.too_large(self.max_bytes)
            self._fail(too_large.message, too_large.status)
        if self._media_type is None:
            self._head += bytes(raw_data[: SNIFF_BYTES - len(self._head)])
            if len(self._head) >= SNIFF_BYTES:
                self._decide_type()
        self._write(self._encryptor.update(raw_data))
        return None

    def _decide_type(self) -> None:
        self._media_type = sniff_media_type(self._head)
        if self._media_type is None and not self._size:
            self._fail(_("The file is empty. Choose the file again; it may not have finished saving."), 400)
        if self._media_type is None:
            self._fail(
                _("This kind of file is not accepted. Upload a PDF, an image (PNG, JPEG, WebP, TIFF) or a DICOM file."),
                415,
            )
        self._head = b""

    def file_complete(self, file_size):
        if self._media_type is None:
            self._decide_type()
        self._write(self._encryptor.finalize())
        self._out.flush()
        if self._growing:
            # Marked before the rename: the marker goes by this name.
            finish_growing(self._part, complete=True)
        if not (self._growing and early_add_durable(self._out.fileno(), self._stream_id, self._written)):
            os.fsync(self._out.fileno())
        self._out.close()
        os.replace(self._part, self._path)
        upload = SpooledUpload(
            stream_id=self._stream_id,
            name=sanitize_filename(self.file_name or "file"),
            media_type=self._media_type,
            size=self._size,
            ciphertext_size=self._written,
            path=self._path,
            file_key=self._file_key,
        )
        self.uploads.append(upload)
        self._reset()
        return upload

    def spool_raw_body(self, request, file_name: str) -> SpooledUpload | None:
        """Stream a raw request body (``application/octet-stream``) through the same path.

        The browser sends one file per request this way, which skips multipart
        parsing entirely. Returns ``None`` when the file was refused (see
        ``self.error``); a body shorter than its ``Content-Length`` (the client
        went away) removes the partial spool file and raises.
        """
        from django.http import UnreadablePostError

        expected = int(request.META.get("CONTENT_LENGTH") or 0)
        self.new_file("file", file_name, "application/octet-stream", expected)
        received = 0
        try:
            for chunk in raw_body_chunks(request, self.chunk_size):
                self.receive_data_chunk(chunk, received)
                received += len(chunk)
            if expected and received < expected:
                raise UnreadablePostError("the request body ended before its Content-Length")
            return self.file_complete(received)
        except StopUpload:
            return None
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        if self._out is not None and not self._out.closed:
            self._out.close()
        if self._growing and self._part:
            finish_growing(self._part, complete=False)  # the early add stops now, not after a minute's silence
            self._growing = False
        for path in (self._part, self._path):
            if path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def upload_interrupted(self):
        self._abort()

    def discard_unclaimed(self) -> None:
        """Remove every spool file of this request that no record took (refused, failed)."""
        self._abort()
        for upload in self.uploads:
            if not upload.claimed:
                upload.discard()

    discard_all = discard_unclaimed


EARLY_INGEST_BYTES = HELPER_MIN_BYTES
"""An upload this large asks the store worker to add it while it arrives (``store.records_ingest_upload``)."""


EARLY_ADD_WAIT = 10.0
"""How long a finished upload waits for the store worker's early add before it makes its spool durable itself."""


def early_add_durable(fd: int, stream_id: uuid.UUID, ciphertext_size: int) -> bool:
    """Whether the store worker's early add has stored this upload durably, waiting for it to end.

    The early add holds the spool file's lock from its first byte to its
    :class:`~records.models.EarlyIngest` row, and it follows the upload
    closely, so it ends a moment after the upload does. Its blocks are then
    in SST files it fsynced and the store ingested, and its pin is on disk
    too: the spool file, deleted once a record file takes that pin, need not
    reach the disk at all. Taking the lock while no early add holds it (not
    started yet, or already ended) keeps one from starting on this file; the
    row then says whether it stored it. False: the caller fsyncs the spool.
    """
    from django.db import DatabaseError

    from records.models import EarlyIngest

    if not lock_spool(fd, wait=EARLY_ADD_WAIT):
        return False
    try:
        return EarlyIngest.objects.filter(stream_id=stream_id, ciphertext_size=ciphertext_size).exists()
    except DatabaseError:  # the database cannot say: the spool file is made durable instead
        log.warning("could not look up the early add of upload %s", stream_id, exc_info=True)
        return False


def lock_spool(fd: int, *, wait: float) -> bool:
    """Take the spool file's lock (one for every name of the file), waiting up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    pause = 0.002  # the early add ends a moment after its upload: look again soon, then less often
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the descriptor closes
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.01)


def _ask_early_ingest(stream_id: uuid.UUID) -> bool:
    """Ask the store worker to add this upload's spool file while it grows; whether it was asked.

    Looked up by the task's name: the task module sits above this one. Not when
    tasks run inline (tests), where it would wait on the bytes this very
    request has yet to write. The message names the stream only. Sent before
    any transaction of the request commits, unlike other tasks: the point is
    to start now, and the task reads a file, not rows (a file that never gets
    its record is let go by the re-drive).
    """
    from celery import current_app

    task = current_app.tasks["store.records_ingest_upload"]
    if task.app.conf.task_always_eager:
        return False
    try:
        task.apply_async(args=[str(stream_id)])
    except Exception:  # the broker is away: the file is added after the upload instead
        log.warning("could not ask for an early add of upload %s", stream_id, exc_info=True)
        return False
    return True


RAW_UPLOAD = "application/octet-stream"


def _raw_fields(request) -> QueryDict:
    """Form fields of a raw upload, sent JSON-encoded in a header (never in the URL, which is logged)."""
    fields = QueryDict(mutable=True)
    try:
        data = json.loads(unquote(request.headers.get("X-Upload-Fields") or "{}"))
    except ValueError:
        data = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and isinstance(value, str):
                fields[key] = value
    return fields


def _raw_name(request) -> str:
    """A raw upload's file name: ``X-Upload-Name`` (URL-encoded), else ``Content-Disposition``'s ``filename``."""
    name = request.headers.get("X-Upload-Name")
    if name:
        return unquote(name)
    _value, params = parse_header_parameters(request.headers.get("Content-Disposition") or "")
    return params.get("filename") or "file"


def upload_fields(request) -> QueryDict:
    """The form fields that came with an upload parsed by :func:`parse_upload`."""
    return getattr(request, "_raw_upload_fields", None) or request.POST


def uploaded_files(request, handler: EncryptingUploadHandler) -> list[SpooledUpload]:
    """The files :func:`parse_upload` spooled: a raw body's one file, or a form's ``file`` parts."""
    if request.content_type == RAW_UPLOAD:
        return list(handler.uploads)
    return request.FILES.getlist("file")


def parse_upload(request, handler: EncryptingUploadHandler) -> UploadRejected | None:
    """Read an upload's body through ``handler`` (already in ``request.upload_handlers``): the refusal, or None.

    A form (``multipart/form-data``) or a raw body (``application/octet-stream``, the
    file name in ``X-Upload-Name`` or ``Content-Disposition``, form fields in
    ``X-Upload-Fields``). A body larger than the limit is refused before it is read;
    whatever is refused leaves no spool file.
    """
    length = int(request.META.get("CONTENT_LENGTH") or 0)
    if length > handler.max_bytes + 64 * 1024:
        return UploadRejected.too_large(handler.max_bytes)
    try:
        if request.content_type == RAW_UPLOAD:
            request._raw_upload_fields = _raw_fields(request)
            handler.spool_raw_body(request, _raw_name(request))
        else:
            request.POST  # noqa: B018 - parses the body through the encrypting handler
    except MultiPartParserError as exc:
        handler.discard_all()
        if "header size" in str(exc):  # Django reads at most 1 KiB of a part's headers: the file name
            message = _("The file name is too long. Rename the file to something shorter and upload it again.")
        else:
            message = _("The upload could not be read. Nothing was stored; please try again.")
        return UploadRejected(message, 400)
    except Exception:  # client went away: nothing half-stored
        handler.discard_all()
        return UploadRejected(_("The upload was interrupted. Nothing was stored; please try again."), 400)
    if handler.error is not None:
        handler.discard_all()
        return handler.error
    return None


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}".replace(".0 ", " ")
        size /= 1024
    return f"{size} B"


def spool_path(stream_id) -> str:
    return os.path.join(settings.SPOOL_DIR, f"{stream_id}.enc")


def spool_bytes(name: str, data: bytes, *, max_bytes: int | None = None) -> SpooledUpload:
    """Encrypt bytes already in memory (a FHIR attachment) into the spool, as an upload would be.

    :class:`UploadRejected` for what an upload would refuse (too large, empty, a type not accepted).
    """
    handler = EncryptingUploadHandler(max_bytes=max_bytes)
    try:
        handler.new_file("file", name, "application/octet-stream", len(data))
        for start in range(0, len(data), handler.chunk_size):
            handler.receive_data_chunk(data[start : start + handler.chunk_size], start)
        return handler.file_complete(len(data))
    except StopUpload:
        raise handler.error or UploadRejected(_("The file could not be stored."), 400) from None
