"""get_FOO_display answers as Django's own does, in the language of the moment."""

from __future__ import annotations

import pytest
from django.db.models import Model
from django.utils import translation

from records.models import AccessEvent, MedicalRecord, RecordKind


@pytest.mark.parametrize("language", ["en", "zh-hans"])
@pytest.mark.parametrize("value", [*RecordKind.values, "not-a-kind", ""])
def test_labels_match_djangos_in_each_language(language, value):
    record = MedicalRecord(kind=value)
    with translation.override(language):
        assert record.get_kind_display() == Model._get_FIELD_display(record, MedicalRecord._meta.get_field("kind"))


def test_a_label_follows_the_language_after_the_table_is_made():
    event = AccessEvent(action=AccessEvent.Action.DOWNLOAD)
    with translation.override("en"):
        english = event.get_action_display()
    with translation.override("zh-hans"):
        chinese = event.get_action_display()
    assert english != chinese and isinstance(english, str) and isinstance(chinese, str)
