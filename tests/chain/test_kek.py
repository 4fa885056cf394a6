"""The node KEK file: made 0600 at first start, refused when too open, malformed or missing in production."""

from __future__ import annotations

import pytest

from chain.kek import KekError, load_kek


def test_kek_file_is_created_0600_at_first_start(tmp_path):
    path = tmp_path / "node.kek"
    kek = load_kek(path)
    assert len(kek) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_kek(path) == kek


def test_kek_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "node.kek"
    load_kek(path)
    path.chmod(0o644)
    with pytest.raises(KekError, match="0600"):
        load_kek(path)


def test_malformed_kek_file_is_refused(tmp_path):
    path = tmp_path / "node.kek"
    path.write_text("not a key")
    path.chmod(0o600)
    with pytest.raises(KekError):
        load_kek(path)


def test_production_does_not_invent_a_missing_kek(tmp_path, settings):
    settings.PRODUCTION = True
    with pytest.raises(KekError, match="does not exist"):
        load_kek(tmp_path / "missing.kek")
