"""Both languages are complete: every message has a Chinese translation."""

from __future__ import annotations

import re
from pathlib import Path

PO = Path(__file__).resolve().parents[2] / "locale" / "zh_Hans" / "LC_MESSAGES" / "django.po"


def entries(text: str):
    for block in text.split("\n\n"):
        if "msgid" not in block:
            continue
        yield block


def _value(block: str, key: str) -> str:
    match = re.search(rf'^{re.escape(key)} ((?:".*"\n?)+)', block + "\n", re.M)
    if not match:
        return ""
    return "".join(re.findall(r'"(.*)"', match.group(1)))


def test_catalogue_is_complete_and_compiled():
    text = PO.read_text(encoding="utf-8")
    missing, fuzzy = [], []
    for block in entries(text):
        msgid = _value(block, "msgid")
        if not msgid:
            continue  # the header
        if "#, fuzzy" in block:
            fuzzy.append(msgid)
        translated = _value(block, "msgstr") or _value(block, "msgstr[0]")
        if not translated:
            missing.append(msgid)
    assert not missing, f"untranslated: {missing[:10]}"
    assert not fuzzy, f"fuzzy: {fuzzy[:10]}"
    mo = PO.with_suffix(".mo")
    assert mo.exists() and mo.stat().st_mtime >= PO.stat().st_mtime - 1, "run `make messages`"
