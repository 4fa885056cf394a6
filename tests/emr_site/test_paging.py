"""Portal pages choose their rows over the keys, then fetch and join only those rows."""

from __future__ import annotations

import pytest
from django.db import connection

from accounts.models import Institution
from emr_site.paging import page_of
from tests.factories import InstitutionFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def institutions():
    return [InstitutionFactory(code=f"h{n:02}", name=f"院{n}", name_en=f"Hospital {n}") for n in range(7)]


def test_each_page_holds_the_rows_slicing_would_in_their_order(institutions, django_assert_num_queries):
    ordered = Institution.objects.filter(code__startswith="h").order_by("-code")
    for number in (1, 2, 3):
        with django_assert_num_queries(3):  # the count, the page's keys, its rows
            page = page_of(ordered, number, per_page=3)
        assert [i.code for i in page.object_list] == [i.code for i in ordered[(number - 1) * 3 : number * 3]]
    assert page_of(ordered, 9, per_page=3).number == 3  # past the end: the last page, as Paginator.get_page does
    assert page_of(ordered, "not a number", per_page=3).number == 1


def test_related_rows_come_joined(hospital):
    for n in range(3):
        UserFactory(email=f"doc{n}@example.org", role="clinician", institution=hospital)
    from accounts.models import User

    page = page_of(User.objects.filter(role="clinician").order_by("email"), 1, per_page=2, related=("institution",))
    with connection.execute_wrapper(_refuse):
        assert [u.institution.code for u in page.object_list] == ["north", "north"]


def test_a_row_gone_between_the_two_queries_is_left_out(institutions):
    ordered = Institution.objects.filter(code__startswith="h").order_by("code")
    gone = institutions[1]
    deleted = []

    def delete_before_the_rows_are_read(execute, sql, params, many, context):
        if " IN (" in sql and not deleted:
            deleted.append(gone.pk)
            Institution.objects.filter(pk=gone.pk).delete()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(delete_before_the_rows_are_read):
        page = page_of(ordered, 1, per_page=3)
    assert [i.code for i in page.object_list] == ["h00", "h02"]


def test_an_empty_list_is_one_empty_page(db):
    page = page_of(Institution.objects.none(), 1, per_page=5)
    assert list(page.object_list) == [] and page.number == 1 and not page.has_other_pages()


def _refuse(execute, sql, params, many, context):
    raise AssertionError(f"a query where the rows should have come joined: {sql}")
