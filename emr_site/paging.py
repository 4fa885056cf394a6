"""Pages of long lists for the portals: the page's keys first, then its rows.

Paginating a queryset that joins its related rows asks the database to order the joined
rows. MariaDB then copies every matching row, with the joined tables' columns (encrypted
contents included), into a temporary table and sorts it, to keep 50: 7 ms for a patient
with 1,000 records, where ordering the keys alone takes a fraction of a millisecond. So
the page is chosen over the keys, and only its rows are fetched and joined.
"""

from __future__ import annotations

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet


def page_of(queryset: QuerySet, number: str | int | None, *, per_page: int, related: tuple[str, ...] = ()) -> Page:
    """Page ``number`` of the ordered ``queryset``, its rows joined with ``related`` (or as it says); three queries.

    The rows are fetched again through ``queryset``, so a row that no longer matches between
    the two queries (deleted, or no longer visible) is left out rather than shown.
    """
    page = Paginator(queryset.values_list("pk", flat=True), per_page).get_page(number)
    keys = list(page.object_list)
    if related:  # with no names, select_related would follow every foreign key
        queryset = queryset.select_related(*related)
    rows = queryset.order_by().in_bulk(keys) if keys else {}
    page.object_list = [rows[key] for key in keys if key in rows]
    return page
