"""Who may see the node's pages: Django permissions, so ``chain`` knows no account roles.

``chain.operate_node``: the node's health, processes and paths. ``chain.browse_chain``: the
explorer. Which people hold them is decided above, in ``accounts.backends`` (by role).
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.utils.translation import gettext as _

OPERATE_NODE = "chain.operate_node"
BROWSE_CHAIN = "chain.browse_chain"


def may(user, permission: str) -> bool:
    return bool(user.is_authenticated and user.has_perm(permission))


def permission_page(permission: str):
    """Signed-in people holding ``permission``; others get the portal's 403 page."""

    def decorator(view):
        @login_required
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not request.user.has_perm(permission):
                context = {"message": _("This page is not part of your portal.")}
                return render(request, "403.html", context, status=403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator
