"""Date formats, one per language and the same on every page (``FORMAT_MODULE_PATH``).

Django's defaults mix "Dec. 4, 2026, 9:41 a.m." with "12/04/2026" on one English page, and an
American month-first date is ambiguous to most readers: English pages use ISO 8601 dates, as
Chinese hospital systems do, in both languages; only a chart's day ticks (``MONTH_DAY_FORMAT``)
differ: "6 Sep", "9月6日".
"""
