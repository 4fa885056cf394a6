"""The operator's side of re-keying: a failed job is run again from the node health page."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from chain.access import OPERATE_NODE, permission_page
from records.models import RekeyJob
from records.sharing.grants import rekey_job_retry


@require_POST
@permission_page(OPERATE_NODE)
def ops_rekey_retry(request, job_id):
    try:
        job = rekey_job_retry(job_id)
    except RekeyJob.DoesNotExist:
        raise Http404(_("No such re-keying job.")) from None
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            _("Re-keying job %(job)s runs again: %(left)d of %(total)d records are left.")
            % {"job": str(job.public_id)[:8], "left": job.total - job.done_count, "total": job.total},
        )
    return redirect("ops_home")
