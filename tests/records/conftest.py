"""Fixtures for records: a node with its own stores, a visit, records, uploads."""

from __future__ import annotations

import io
import struct

import pytest
from django.test import Client

from tests.factories import enable_totp

SENTINEL = "SENTINEL-7f3a91c2-PLAINTEXT"


@pytest.fixture
def visit(node, carol, alice):
    from records.clinical.services import visit_open

    return visit_open(clinician=carol, patient=alice)


def login(client: Client, user) -> Client:
    client.force_login(user)
    return client


def png_bytes(extra: bytes = b"") -> bytes:
    """A tiny valid PNG (1x1) followed by ``extra`` in a trailing chunk-like tail."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"\x00\xff\x00\x00"
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"tEXt", b"Comment\x00" + extra)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def pdf_bytes(text: str = "hello") -> bytes:
    return b"%PDF-1.4\n% " + text.encode() + b"\n" + b"x" * 200 + b"\n%%EOF\n"


def dicom_bytes(rows: int = 16, cols: int = 16, *, preamble: bytes = b"\0" * 128, pixels: bool = True) -> bytes:
    """A small uncompressed DICOM file made with pydicom (``pixels=False``: a report without an image)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=preamble)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.StudyDescription = "BRAIN WO CONTRAST"
    ds.BodyPartExamined = "HEAD"
    if pixels:
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) * 10).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def upload_file(name: str, data: bytes, content_type: str = "application/octet-stream"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type=content_type)


@pytest.fixture
def carol_client(client, carol):
    return login(client, carol)


__all__ = ["SENTINEL", "dicom_bytes", "enable_totp", "login", "pdf_bytes", "png_bytes", "upload_file"]


@pytest.fixture
def colleague(hospital):
    """A verified doctor at the same hospital who is not the author."""
    from tests.factories import UserFactory, enable_totp

    user = UserFactory(email="frank@example.org", role="clinician", institution=hospital, verified=True)
    enable_totp(user)
    return user
