"""``get_FOO_display`` from a table made once per field.

Django's own builds a dictionary of the field's every choice on each call (and hashes each
lazily translated label to do it): a footprint page of 50 entries, each naming its action
and its record's kind, spent a sixth of its rendering there. The labels stay lazy, so each
call still answers in the language of the request.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db.models import Field
from django.utils.encoding import force_str


class ChoiceLabels:
    """Mixed into a model (before ``models.Model``) whose choice fields are shown in lists."""

    def _get_FIELD_display(self, field: Field) -> Any:
        value = getattr(self, field.attname)
        try:
            label = _labels(field).get(value, value)
        except TypeError:  # an unhashable value: shown as it is, as Django shows a value outside the choices
            label = value
        return force_str(label, strings_only=True)


@functools.cache
def _labels(field: Field) -> dict[Any, Any]:
    return dict(field.flatchoices)
