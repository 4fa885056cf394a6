"""Fixtures for the chart's tests: a draft to attach files to."""

from __future__ import annotations

import pytest


@pytest.fixture
def draft(carol, alice, visit):
    """An imaging study in draft: where a doctor attaches files."""
    from records.clinical.services import record_create

    return record_create(
        patient=alice,
        author=carol,
        kind="imaging",
        content={"title": "MRI", "modality": "MR", "body_site": "Head", "findings": "-"},
        visit=visit,
    )
