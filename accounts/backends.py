"""Permissions that follow from a person's role (``chain`` asks Django, not our roles)."""

from __future__ import annotations

from django.contrib.auth.backends import BaseBackend

from accounts.models import Role

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    Role.OPERATOR: frozenset({"chain.operate_node", "chain.browse_chain"}),
    Role.INSTITUTION_ADMIN: frozenset({"chain.browse_chain"}),
}


class RolePermissionsBackend(BaseBackend):
    """Grants what a role implies; authenticates nobody (the other backends do)."""

    def has_perm(self, user_obj, perm, obj=None) -> bool:
        if not user_obj.is_active or not user_obj.is_authenticated:
            return False
        return perm in ROLE_PERMISSIONS.get(getattr(user_obj, "role", ""), frozenset())
