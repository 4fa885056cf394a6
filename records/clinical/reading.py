"""Reading records back: decrypted content, file streams, DICOM metadata and previews.

Everything here is called only with a ``RecordAccess`` the access helper
granted; plaintext exists only in memory for the response being built.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.keys import encryption_private_key
from accounts.models import Institution, User
from chain.core import stream
from chain.core.cid import CID
from chain.core.crypto import EnvelopeOpener
from chain.core.errors import CryptoError
from chain.core.streamio import read_ahead
from records.keys import decrypt_content, open_dek_with, unwrap_file_key
from records.models import RecordFile, RecordVersion, WrappedKey
from records.policy import RecordAccess

PREVIEW_MAX_BYTES = 64 << 20
PREVIEW_MAX_PIXELS = 16 << 20
# Study metadata shown next to a DICOM preview; patient-identifying tags are never shown.
DICOM_FIELDS = {
    "Modality": _("Modality"),
    "StudyDescription": _("Study"),
    "SeriesDescription": _("Series"),
    "BodyPartExamined": _("Body part"),
    "StudyDate": _("Study date"),
    "Rows": _("Rows"),
    "Columns": _("Columns"),
    "NumberOfFrames": _("Frames"),
    "SliceThickness": _("Slice thickness (mm)"),
    "Manufacturer": _("Manufacturer"),
}
DICOM_HEADER_BYTES = 4 << 20

logger = logging.getLogger(__name__)


def _dag():
    from chain.stores import dag_reader

    return dag_reader()


def content_of(access: RecordAccess) -> dict:
    return decrypt_content(access.dek, access.version)


@dataclass
class FileView:
    record_file: RecordFile
    name: str
    dicom: dict | None = None
    here: bool = True
    """Whether a stored file's ciphertext is in this node's store yet (see :func:`files_here`)."""

    @property
    def is_image(self) -> bool:
        return self.record_file.media_type.startswith("image/")

    @property
    def is_pdf(self) -> bool:
        return self.record_file.media_type == "application/pdf"

    @property
    def is_dicom(self) -> bool:
        return self.record_file.media_type == "application/dicom"


def files_of(access: RecordAccess, content: dict) -> list[FileView]:
    names = {f["id"]: f["name"] for f in content.get("files", [])}
    return [FileView(f, names.get(str(f.public_id), "file")) for f in access.version.files.all()]


def files_here(files: list[FileView]) -> list[FileView]:
    """Mark the stored files whose ciphertext has not reached this node's store yet.

    A record written at another node arrives here (its rows, its encrypted
    content, its keys) a few seconds before its files, which the reconciler
    then fetches from the nodes that hold them. A file is here once its root
    block is: a fetched DAG enters the store whole, in one ingestion.
    """
    for f in files:
        f.here = file_here(f.record_file)
    return files


def file_here(record_file: RecordFile) -> bool:
    """False for a stored file whose ciphertext has not reached this node yet (see :func:`files_here`)."""
    return record_file.status != RecordFile.Status.STORED or file_present(record_file)


def file_for(access: RecordAccess, file_id) -> tuple[RecordFile, str]:
    record_file = access.version.files.filter(public_id=file_id).first()
    if record_file is None:
        return None, ""
    names = {f["id"]: f["name"] for f in content_of(access).get("files", [])}
    return record_file, names.get(str(record_file.public_id), "file")


def file_present(record_file: RecordFile) -> bool:
    """Whether the file's ciphertext is (still) in the DAG store."""
    return bool(record_file.root_cid) and _dag().has(CID.decode(record_file.root_cid))


def file_after_rekeying(access: RecordAccess, file_id) -> RecordFile | None:
    """The file of ``access.version`` holding the same bytes as ``file_id`` of an older version.

    Only when every version since was a re-encryption (which keeps files and their order);
    after an amendment the files may differ, and the old id is simply not found.
    """
    old = RecordFile.objects.filter(public_id=file_id, version__record_id=access.record.pk).select_related("version")
    old = old.first()
    if old is None or old.version.number >= access.version.number:
        return None
    since = RecordVersion.objects.filter(
        record_id=access.record.pk, number__gt=old.version.number, number__lte=access.version.number
    )
    if since.exclude(origin=RecordVersion.Origin.REKEY).exists():
        return None
    return access.version.files.filter(position=old.position).first()


READ_AHEAD = 4
"""Blocks a file's stream reads ahead of its reader (1 MiB each with the default chunking)."""


class SequentialReader:
    """``read_at(pos, n)`` over a DAG file that keeps one open stream.

    ``decrypt_range`` reads the header, then consecutive segments. Reading each
    segment with its own ``cat`` would walk the tree and re-hash the same 1 MiB
    block once per 64 KiB segment; one stream re-hashes each block once, and a
    jump (the header, then a range) simply restarts it. The stream runs
    :data:`READ_AHEAD` blocks ahead on a thread of its own: RocksDB reads and
    SHA-256 there, decryption here, on two cores.
    """

    def __init__(self, root: CID) -> None:
        self.store = _dag()
        self.root = root
        self.position = -1
        self.buffer = b""
        self.offset = 0  # how much of ``buffer`` was already handed out
        self.chunks: Iterator[bytes] = iter(())

    def __call__(self, position: int, size: int) -> bytes:
        if position != self.position:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()  # stops the previous stream's reading thread
            # Blocks are read and re-hashed on a thread of their own while this one decrypts.
            self.chunks = read_ahead(self.store.cat(self.root, position), READ_AHEAD)
            self.position = position
            self.buffer, self.offset = b"", 0
        parts = []
        wanted = size
        while wanted:
            if self.offset >= len(self.buffer):
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.buffer, self.offset = chunk, 0
            piece = self.buffer[self.offset : self.offset + wanted]
            self.offset += len(piece)
            wanted -= len(piece)
            parts.append(piece)
        data = b"".join(parts)
        self.position += len(data)
        return data


def _read_at(root: CID):
    return SequentialReader(root)


def file_chunks(
    access: RecordAccess, record_file: RecordFile, offset: int = 0, length: int | None = None
) -> Iterator[bytes]:
    """Plaintext of ``record_file`` (or a byte range), decrypted segment by segment."""
    key = unwrap_file_key(access.dek, record_file)
    if length is None:
        length = record_file.size - offset
    if length <= 0:
        return iter(())
    return stream.decrypt_range(
        key,
        _read_at(CID.decode(record_file.root_cid)),
        associated_data=record_file.stream_associated_data(),
        ciphertext_total=record_file.ciphertext_size,
        offset=offset,
        length=length,
    )


def file_bytes(access: RecordAccess, record_file: RecordFile, limit: int) -> bytes:
    return b"".join(file_chunks(access, record_file, 0, min(limit, record_file.size)))


def dicom_summary(access: RecordAccess, record_file: RecordFile) -> dict:
    """Study metadata from the DICOM header (patient-identifying tags left out), and
    whether a preview can be drawn, so the page asks for one only when it exists.

    ``{"fields": {label: value}, "previewable": bool}``.
    """
    import pydicom

    head = file_bytes(access, record_file, DICOM_HEADER_BYTES)
    try:
        dataset = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
    except Exception:  # pydicom raises many kinds for a damaged header
        return {"fields": {}, "previewable": False}
    fields = {}
    for tag, label in DICOM_FIELDS.items():
        value = dataset.get(tag)
        if value not in (None, ""):
            fields[str(label)] = str(value)
    return {"fields": fields, "previewable": _previewable(dataset, head, record_file.size)}


# Transfer syntaxes pydicom decodes with no extra package (no JPEG/JPEG 2000 decoder is installed).
_DECODABLE = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian
    "1.2.840.10008.1.2.5",  # RLE lossless
}
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")


def _previewable(dataset, head: bytes, size: int) -> bool:
    if size > PREVIEW_MAX_BYTES or not any(tag in head for tag in _PIXEL_DATA_TAGS):
        return False
    meta = getattr(dataset, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    try:
        pixels = int(dataset.Rows) * int(dataset.Columns) * int(getattr(dataset, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return False
    return syntax in _DECODABLE and 0 < pixels <= PREVIEW_MAX_PIXELS


def dicom_preview_png(access: RecordAccess, record_file: RecordFile, *, size: int = 512) -> bytes | None:
    """A PNG of the first frame, windowed to 8 bits; None when it cannot be made."""
    if record_file.size > PREVIEW_MAX_BYTES:
        return None
    import numpy as np
    import pydicom
    from PIL import Image

    data = file_bytes(access, record_file, PREVIEW_MAX_BYTES)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        if int(dataset.Rows) * int(dataset.Columns) * frames > PREVIEW_MAX_PIXELS:
            return None  # a crafted or huge series must not exhaust the web worker
        pixels = dataset.pixel_array
    except Exception:  # compressed syntaxes without a decoder, damaged data
        return None
    frame = pixels[0] if pixels.ndim == 3 and getattr(dataset, "NumberOfFrames", 1) not in (None, 1) else pixels
    if frame.ndim == 3:  # colour
        image = Image.fromarray(frame.astype("uint8"))
    else:
        frame = frame.astype("float64")
        slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
        intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
        frame = frame * slope + intercept
        low, high = np.percentile(frame, [0.5, 99.5])
        if high <= low:
            high = low + 1
        scaled = np.clip((frame - low) / (high - low) * 255.0, 0, 255).astype("uint8")
        if str(getattr(dataset, "PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255 - scaled
        image = Image.fromarray(scaled, mode="L")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def titles_for(
    user, versions: list[RecordVersion], *, institution_ids=(), on_behalf_of: int | None = None
) -> dict[int, str]:
    """Decrypted titles of many versions in a constant number of queries.

    Opens the reader's own envelope of each version; failing that, an envelope of one of
    ``institution_ids`` (the reader's care team, institutions granted access); failing that,
    under a break-glass session, the patient's own (``on_behalf_of``). Callers pass only
    versions of records the reader may open: this lists, it does not decide.
    """
    if not versions:
        return {}
    holders = Q(user=user) | Q(institution_id__in=[i for i in institution_ids if i])
    if on_behalf_of is not None:
        holders |= Q(user_id=on_behalf_of)
    # The best envelope of each version, as plain rows: no model instances on the lists' hot path.
    best: dict[int, tuple[int, int | None, int | None, bytes]] = {}
    rows = WrappedKey.objects.filter(holders, version_id__in=[v.pk for v in versions]).values_list(
        "version_id", "user_id", "institution_id", "envelope"
    )
    for version_id, user_id, institution_id, envelope in rows:
        rank = _envelope_rank(user_id, institution_id, user)
        if version_id not in best or rank < best[version_id][0]:
            best[version_id] = (rank, user_id, institution_id, envelope)
    keys = _holder_keys({(holder_user, holder_institution) for _, holder_user, holder_institution, _ in best.values()})
    titles = {}
    for version in versions:
        if version.pk not in best:
            continue
        _, user_id, institution_id, envelope = best[version.pk]
        try:
            dek = open_dek_with(keys[(user_id, institution_id)], version, bytes(envelope))
            titles[version.pk] = decrypt_content(dek, version).get("title", "")
        except Exception:  # a damaged version or key must not take the timeline down
            titles[version.pk] = ""
    return titles


def _envelope_rank(user_id: int | None, institution_id: int | None, reader) -> int:
    """The reader's own envelope first, then an institution's, then the patient's (break-glass)."""
    if user_id == reader.pk:
        return 0
    return 1 if institution_id else 2


def _holder_keys(
    holders: set[tuple[int | None, int | None]],
) -> dict[tuple[int | None, int | None], EnvelopeOpener]:
    """The private key of each ``(user id, institution id)`` holder, unwrapped and loaded once; two queries at most."""
    users = [user_id for user_id, _ in holders if user_id]
    institutions = [institution_id for user_id, institution_id in holders if not user_id and institution_id]
    found: dict[tuple[int | None, int | None], User | Institution] = {}
    if users:
        for person in User.objects.filter(pk__in=users).only("public_id", "enc_private_wrapped"):
            found[(person.pk, None)] = person
    if institutions:
        for institution in Institution.objects.filter(pk__in=institutions).only("public_id", "enc_private_wrapped"):
            found[(None, institution.pk)] = institution
    keys = {}
    for holder, row in found.items():
        try:
            keys[holder] = EnvelopeOpener(encryption_private_key(row))
        except CryptoError:  # its versions are listed without a title
            logger.error("the private key of %s does not unwrap", row.key_owner())
    return keys
