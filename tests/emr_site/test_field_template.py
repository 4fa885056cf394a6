"""The shared form field template lays out each kind of widget as people expect to read it."""

from __future__ import annotations

import re

import pytest
from django.template.loader import render_to_string
from django.utils import translation

from records.models import RecordKind
from records.sharing.forms import AccessRequestForm, GrantForm


@pytest.fixture(autouse=True)
def _english():
    with translation.override("en"):
        yield


def render(field) -> str:
    return render_to_string("includes/field.html", {"field": field})


def test_a_list_of_checkboxes_is_a_fieldset_with_one_label_per_choice():
    html = render(AccessRequestForm()["kinds"])
    assert re.search(r"<fieldset><legend>Kinds of record\s*</legend>", html)
    choices = re.findall(r'<label class="choice"><input type="checkbox" name="kinds" value="([a-z_]+)"', html)
    assert choices == list(RecordKind.values)
    assert "field-check" not in html  # not laid out as one tick box with every choice inside its label


def test_a_single_checkbox_sits_inside_its_label():
    html = render(GrantForm(patient=None, record_titles=[])["include_sensitive"])
    assert 'class="field field-check"' in html
    assert re.search(r'<label><input type="checkbox" name="include_sensitive"[^>]*> Also share records', html)
    assert "<fieldset>" not in html


def test_radio_buttons_stay_a_fieldset():
    html = render(AccessRequestForm()["scope"])
    assert re.search(r"<fieldset><legend>What you ask to see", html)
    assert len(re.findall(r'<label class="choice"><input type="radio" name="scope"', html)) == 2
