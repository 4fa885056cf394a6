"""Roles grant the node's permissions from above: chain asks Django, never our roles."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("who", "operate", "browse"),
    [
        ("operator", True, True),
        ("hospital_admin", False, True),
        ("carol", False, False),
        ("alice", False, False),
        ("erin", False, False),
    ],
)
def test_what_each_role_may_see_of_the_node(client, request, who, operate, browse):
    user = request.getfixturevalue(who)
    assert user.has_perm("chain.operate_node") is operate
    assert user.has_perm("chain.browse_chain") is browse
    client.force_login(user)
    assert (client.get(reverse("ops_home")).status_code == 200) is operate


def test_an_inactive_operator_holds_nothing(operator):
    operator.is_active = False
    operator.is_superuser = False
    assert not operator.has_perm("chain.operate_node")
