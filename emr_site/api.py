"""What every endpoint of the REST API shares: errors as problem details, cursor pages, documented refusals.

Errors follow RFC 9457 (``application/problem+json``): ``type`` names the
kind of problem (a stable URI under ``/api/v1/problems/``), ``title`` says it
in the caller's language (``Accept-Language``, as the portals), ``status`` is
the HTTP status, ``detail`` what happened here, and for invalid input
``errors`` maps each field to its messages. Django's own refusals
(``Http404``, ``PermissionDenied``, ``ValidationError``) raised by the
services and access helpers come out the same way.
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

PROBLEM_TYPE = "application/problem+json"

# status → (slug of its type URI, title); titles are translated when a response is made.
PROBLEMS = {
    400: ("invalid", gettext_lazy("The request is not valid.")),
    401: ("unauthenticated", gettext_lazy("Sign in or send a valid access token.")),
    403: ("forbidden", gettext_lazy("You may not do this. The attempt has been recorded.")),
    404: ("not-found", gettext_lazy("There is nothing here, or nothing you may see.")),
    405: ("method-not-allowed", gettext_lazy("This method is not allowed here.")),
    406: ("not-acceptable", gettext_lazy("This format is not available.")),
    409: ("conflict", gettext_lazy("The request conflicts with the current state.")),
    412: ("stale", gettext_lazy("The resource changed since you read it.")),
    413: ("too-large", gettext_lazy("The request is too large.")),
    415: ("unsupported-media-type", gettext_lazy("This content type is not accepted.")),
    428: ("precondition-required", gettext_lazy("This change needs a precondition (If-Match).")),
    429: ("throttled", gettext_lazy("Too many requests. Wait, then try again.")),
    503: ("unavailable", gettext_lazy("The chain cannot record this yet. Try again in a minute.")),
}


def problem_title(code: int) -> str:
    return str(PROBLEMS[code][1]) if code in PROBLEMS else _("The request failed.")


def problem(code: int, detail: str = "", *, errors: dict | None = None, instance: str = "") -> Response:
    """A problem-details response (RFC 9457)."""
    slug = PROBLEMS.get(code, ("error", ""))[0]
    body: dict = {"type": f"/api/v1/problems/{slug}", "title": problem_title(code), "status": code}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(body, status=code, content_type=PROBLEM_TYPE)


def problem_exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF's exception handler, answering every error as problem details."""
    from chain.ledger_services import TxRejected

    if isinstance(exc, TxRejected):  # the ledger refused the transaction the service made: nothing was written
        request = context.get("request")
        answer = problem(503, problem_title(503), instance=request.path if request else "")
        answer["Retry-After"] = "60"
        return answer
    if isinstance(exc, DjangoValidationError) and getattr(exc, "http_status", 400) != 400:
        request = context.get("request")
        return problem(exc.http_status, " ".join(exc.messages), instance=request.path if request else "")
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_messages(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None  # a bug: Django's 500 page, logged
    request = context.get("request")
    instance = request.path if request is not None else ""
    if isinstance(exc, exceptions.ValidationError):
        data = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        errors = {field: [str(m) for m in (msgs if isinstance(msgs, list) else [msgs])] for field, msgs in data.items()}
        first = next(iter(errors.values()), [""])[0]
        answer = problem(400, first, errors=errors, instance=instance)
    else:
        code = response.status_code
        detail = exc.detail if isinstance(exc, exceptions.APIException) else ""
        answer = problem(code, _detail_text(code, detail), instance=instance)
    for header in ("WWW-Authenticate", "Retry-After", "Allow"):
        if header in response:
            answer[header] = response[header]
    return answer


def _detail_text(code: int, detail: object) -> str:
    text = str(detail) if detail else ""
    # DRF's stock sentences say the same as the title; only a service's own reason adds something.
    stock = {
        str(exceptions.NotFound.default_detail),
        str(exceptions.PermissionDenied.default_detail),
        str(exceptions.NotAuthenticated.default_detail),
    }
    return "" if text in stock else text


def _django_messages(exc: DjangoValidationError) -> dict | list:
    if hasattr(exc, "error_dict"):
        return {field: [str(m) for e in errors for m in e.messages] for field, errors in exc.error_dict.items()}
    return list(exc.messages)


class Problem(serializers.Serializer):
    """RFC 9457 problem details."""

    type = serializers.CharField(help_text="A URI naming the kind of problem.")
    title = serializers.CharField(help_text="The kind of problem, in the caller's language.")
    status = serializers.IntegerField()
    detail = serializers.CharField(required=False, help_text="What went wrong with this request.")
    instance = serializers.CharField(required=False, help_text="The path that was asked for.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="For invalid input: each field's messages.",
    )


def refusals(*codes: int) -> dict[tuple[int, str], OpenApiResponse]:
    """The problem responses an endpoint documents, beside the ones every endpoint may give."""
    every = (401, 429)
    return {
        (code, PROBLEM_TYPE): OpenApiResponse(Problem, description=str(PROBLEMS[code][1]))
        for code in sorted(set(codes) | set(every))
    }


class ApiBaseView(APIView):
    """What every endpoint does: a wrong method is 405 before who is asking is looked at; cursor pages."""

    def initial(self, request: Request, *args, **kwargs) -> None:
        if not hasattr(self, request.method.lower()) or request.method.lower() not in self.http_method_names:
            raise exceptions.MethodNotAllowed(request.method)  # the method is wrong for everyone
        super().initial(request, *args, **kwargs)

    def paginate(self, request: Request, rows, serializer, *, ordering=None, context=None) -> Response:
        pager = Page()
        if ordering is not None:
            pager.ordering = ordering
        page = pager.paginate_queryset(rows, request, view=self)
        return pager.get_paginated_response(serializer(page, many=True, context=context or {}).data)


class Page(CursorPagination):
    """Cursor pages: stable while rows are added, with no count query. A ``page_size`` that is not a
    whole number from 1 to 200 is refused (400), not silently replaced."""

    page_size = 50
    max_page_size = 200
    page_size_query_param = "page_size"
    ordering = "-created_at"

    def get_page_size(self, request) -> int:
        given = request.query_params.getlist(self.page_size_query_param)
        if not given:
            return self.page_size
        if len(given) > 1 or not given[0].isdigit() or not 1 <= int(given[0]) <= self.max_page_size:
            message = _("page_size is a whole number from 1 to %(most)s.") % {"most": self.max_page_size}
            raise exceptions.ValidationError({self.page_size_query_param: [message]})
        return int(given[0])

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(
                {self.cursor_query_param: [_("This cursor is not one this API gave.")]}
            ) from None


PAGE_PARAMETERS = [
    OpenApiParameter("cursor", str, description="The page after this cursor (from next or previous)."),
    OpenApiParameter(
        "page_size",
        {"type": "integer", "minimum": 1, "maximum": Page.max_page_size},
        description="Rows per page (50 unless given).",
    ),
]


def paged(item: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of a cursor page of ``item``: what :class:`Page` answers."""
    return inline_serializer(
        name=f"Paged{item.__name__}",
        fields={
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null."),
            "results": item(many=True),
        },
    )
