"""De-identification for research datasets: pure functions, no Django import.

Three parts, each with its argument:

* **k-anonymity** (:func:`k_anonymise`). The quasi-identifiers released are an
  age band and sex, one combination per subject (the age at the subject's
  first record in the dataset, so the band never changes between a subject's
  rows). Subjects are grouped by (5-year band, sex); a group of fewer than
  ``k`` subjects is generalised to 20-year bands (grouped again among the
  generalised only, so a released string means one thing); a group still
  under ``k`` is suppressed: all of its subjects' rows are left out. After
  it, every released (age band, sex) combination matches at least ``k``
  distinct subjects (tested as a property).
* **Dates** (:func:`day_offsets`). No exact date is released: each row has the
  record's year and the days since the subject's first record in the dataset,
  which keeps intervals within a subject and removes the calendar.
* **Free text** (:func:`scrub`). Whatever a clinician typed can hold a name, a
  resident ID, a phone number, an address on the web, a date or a medical
  record number; each is replaced by ``[REMOVED]``. The patterns err towards
  removing too much: a lost number is cheaper than a re-identified patient.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

K = 5
REMOVED = "[REMOVED]"
UNKNOWN = "unknown"
SEXES = ("female", "male", "other")
OLDEST = 90  # ages from here on are one band, "90+"


# -- quasi-identifiers -----------------------------------------------------------------------
def age_on(birth_date: date | None, day: date) -> int | None:
    if birth_date is None:
        return None
    return max(0, day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day)))


def age_band(age: int | None, *, width: int = 5) -> str:
    """``"40-44"`` (5-year) or ``"40-59"`` (20-year); ``"90+"`` / ``"80+"`` at the top; ``"unknown"``."""
    if age is None:
        return UNKNOWN
    top = OLDEST if width <= 5 else 80
    if age >= top:
        return f"{top}+"
    low = age // width * width
    return f"{low}-{low + width - 1}"


def sex_of(value: str | None) -> str:
    return value if value in SEXES else UNKNOWN


@dataclass
class Release:
    """What :func:`k_anonymise` decided: each released subject's (band, sex), and who was left out."""

    released: dict[str, tuple[str, str]] = field(default_factory=dict)
    suppressed: set[str] = field(default_factory=set)
    generalised: set[str] = field(default_factory=set)

    def groups(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for combination in self.released.values():
            counts[combination] += 1
        return dict(counts)


def k_anonymise(subjects: Mapping[str, Mapping], *, k: int = K) -> Release:
    """Age bands and sexes to release for ``subjects`` so each combination covers ≥ ``k`` of them.

    ``subjects`` maps a subject key to ``{"age": int | None, "sex": str}``
    (the age at the subject's first record). Deterministic; no database.
    """
    release = Release()
    fine: dict[tuple[str, str], list[str]] = defaultdict(list)
    for key, qi in subjects.items():
        fine[(age_band(qi.get("age")), sex_of(qi.get("sex")))].append(key)
    leftovers: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (band, sex), keys in fine.items():
        if len(keys) >= k:
            release.released.update({key: (band, sex) for key in keys})
            continue
        for key in keys:
            leftovers[(age_band(subjects[key].get("age"), width=20), sex)].append(key)
    for combination, keys in leftovers.items():
        if len(keys) >= k:
            release.released.update({key: combination for key in keys})
            release.generalised.update(keys)
        else:
            release.suppressed.update(keys)
    return release


# -- dates ---------------------------------------------------------------------------------
def day_offsets(days: Iterable[tuple[str, date]]) -> dict[str, date]:
    """Each subject's first day, from ``(subject, day)`` pairs: the origin of their day offsets."""
    first: dict[str, date] = {}
    for subject, day in days:
        if subject not in first or day < first[subject]:
            first[subject] = day
    return first


# -- free text -----------------------------------------------------------------------------
_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_PATTERNS = [
    # Addresses on the web and e-mail first: they contain digits and dots the others would split.
    re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"']+", re.IGNORECASE),
    re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE),
    # Resident ID: 17 digits and a check digit or X.
    re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])"),
    # Dates (one separator throughout, so 3.50-9.50 stays): 2026-03-05, 2026/3/5, 2026年3月5日, 3/5/2026.
    re.compile(r"(?<!\d)\d{4}\s*(?:([-/.])\s*\d{1,2}\s*\1\s*\d{1,2}|年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*[日号])?)(?!\d)"),
    re.compile(r"(?<!\d)\d{1,2}\s*月\s*\d{1,2}\s*[日号]"),
    re.compile(r"(?<![\d.])\d{1,2}\s*([-/.])\s*\d{1,2}\s*\1\s*(?:\d{4}|\d{2})(?![\d.])"),
    # March 5, 2026 · Mar 5 · 5 March 2026 · March 2026.
    re.compile(rf"\b{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:\s*,?\s*\d{{4}})?(?!\d)", re.IGNORECASE),
    re.compile(rf"(?<!\d)\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}\.?(?:\s*,?\s*\d{{4}})?(?!\d)", re.IGNORECASE),
    re.compile(rf"\b{_MONTHS}\.?\s*,?\s+\d{{4}}(?!\d)", re.IGNORECASE),
    # Mobile numbers (with or without +86), then landlines with an area code.
    re.compile(r"(?<!\d)(?:\+?86[\s-]?)?1[3-9]\d(?:[\s-]?\d{4}){2}(?!\d)"),
    re.compile(r"(?<!\d)(?:\+?86[\s-]?)?\(?0\d{2,3}\)?[\s-]?\d{7,8}(?:[\s-]?(?:ext\.?|转)\s?\d{1,5})?(?!\d)"),
    re.compile(r"(?<!\d)\d{3,4}[\s-]\d{4}(?!\d)"),
    # Anything else with six or more digits in a row: record numbers, IDs, years run together.
    re.compile(r"\d{6,}"),
]
_CJK = re.compile(r"[\u3400-\u9fff]")


def name_variants(*names: str) -> list[str]:
    """The strings to remove for a person: each full name, each word of 2+ characters, a Chinese given name."""
    variants: set[str] = set()
    for name in names:
        name = (name or "").strip()
        if len(name) < 2:
            continue
        variants.add(name)
        for part in re.split(r"[\s,.·•]+", name):
            if len(part) >= 2:
                variants.add(part)
        compact = re.sub(r"\s+", "", name)
        if _CJK.match(compact) and len(compact) >= 3:
            variants.add(compact)
            variants.add(compact[1:])  # the given name, as people are often called
    return sorted(variants, key=len, reverse=True)


def _name_pattern(variants: list[str]) -> re.Pattern | None:
    if not variants:
        return None
    parts = []
    for variant in variants:
        escaped = re.escape(variant)
        # Latin words match whole words only ("Li" must not eat "Lipid"); Chinese has no word breaks.
        parts.append(escaped if _CJK.search(variant) else rf"(?<![A-Za-z]){escaped}(?![A-Za-z])")
    return re.compile("|".join(parts), re.IGNORECASE)


def scrub(text, *, names: Iterable[str] = ()) -> str:
    """``text`` with names, IDs, phone numbers, e-mail, web addresses, dates and long numbers removed."""
    if text is None:
        return ""
    text = str(text)
    if not text:
        return text
    pattern = _name_pattern(name_variants(*names))
    if pattern is not None:
        text = pattern.sub(REMOVED, text)
    for rx in _PATTERNS:
        text = rx.sub(REMOVED, text)
    return text
