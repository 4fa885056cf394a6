"""Notifications: a notice in the portal and an email, never clinical, in the reader's language.

A notice stores who and where by id (``person``: a user's public id, ``institution``: a code),
not by name: names are put in when the notice is shown, in the language of the page, so a
Chinese sentence never carries an English name frozen at sending time. The email is written
at once, in the language the recipient last used the portal in (``User.language``), with an
absolute link (``SITE_URL``).
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import translation
from django.utils.translation import gettext as _

from accounts.models import Institution, User
from records.models import Notification

Kind = Notification.Kind


def site_link(path: str) -> str:
    return f"{settings.SITE_URL}{path}" if settings.SITE_URL else path


def notify(*, user: User, kind: str, person: User, link: str, institution=None, extra=None) -> Notification:
    """Tell ``user`` that ``person`` (of ``institution``) did ``kind``: a notice now, an email on commit."""
    params = {"person": str(person.public_id), **(extra or {})}
    if institution is not None:
        params["institution"] = institution.code
    notice = Notification.objects.create(user=user, kind=kind, params=params, link=link)
    with translation.override(user.language or settings.LANGUAGE_CODE):
        names = {"name": person.display_name, "institution": institution.display_name if institution else ""}
        subject, body = email_text(kind, {**names, "link": site_link(link)})
    address = user.email
    transaction.on_commit(lambda: send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address], fail_silently=True))
    return notice


def email_text(kind: str, values: dict) -> tuple[str, str]:
    """Subject and body of the email for ``kind`` in the active language."""
    if kind == Kind.REQUEST_RECEIVED:
        subject = _("%(name)s asks to see your records")
        body = _(
            "%(name)s at %(institution)s asks to see your records.\n\n"
            "Open Yilian to read the request and decide: %(link)s\n\n"
            "Nothing is shared until you approve."
        )
    elif kind == Kind.REQUEST_APPROVED:
        subject = _("Your access request was approved")
        body = _("%(name)s approved your access request. Open Yilian to see the records shared with you: %(link)s")
    elif kind == Kind.REQUEST_DECLINED:
        subject = _("Your access request was declined")
        body = _("%(name)s declined your access request. Open Yilian for details: %(link)s")
    elif kind == Kind.BREAK_GLASS:
        subject = _("Emergency access to your records")
        body = _(
            "%(name)s at %(institution)s opened your records in an emergency (break-glass).\n\n"
            "The access ends by itself and is reviewed by the institution. Every record they open "
            "appears in your footprint: %(link)s"
        )
    elif kind == Kind.BREAK_GLASS_REVIEW:
        subject = _("Emergency access to review")
        body = _(
            "%(name)s used emergency (break-glass) access to a patient's records.\n\n"
            "Review it and record whether it was justified: %(link)s"
        )
    elif kind == Kind.CARD_RELEASED:
        subject = _("Your health card was given to %(institution)s")
        body = _(
            "With the one-time code you showed, %(name)s at %(institution)s received your health card "
            "(your name, date of birth, sex and Yilian ID) to open a visit for you.\n\n"
            "If this was not you, tell us at once. See who has your card: %(link)s"
        )
    elif kind == Kind.RECORD_ARRIVED:
        subject = _("A new record from %(institution)s")
        body = _(
            "%(name)s at %(institution)s wrote a record for you. It is on your timeline, "
            "readable by you, its author and their institution only: %(link)s"
        )
    else:
        raise ValueError(f"unknown notification kind {kind!r}")
    return subject % values, body % values


def notice_text(kind: str, names: dict) -> str:
    """The notice's sentence in the active language (names only, never clinical content)."""
    if kind == Kind.REQUEST_RECEIVED:
        return _("%(name)s at %(institution)s asks to see your records.") % names
    if kind == Kind.REQUEST_APPROVED:
        return _("%(name)s approved your access request.") % names
    if kind == Kind.REQUEST_DECLINED:
        return _("%(name)s declined your access request.") % names
    if kind == Kind.BREAK_GLASS:
        return _("%(name)s at %(institution)s opened your records in an emergency.") % names
    if kind == Kind.BREAK_GLASS_REVIEW:
        return _("%(name)s used emergency access. Review it.") % names
    if kind == Kind.CARD_RELEASED:
        return _("%(name)s at %(institution)s received your health card with your one-time code.") % names
    if kind == Kind.RECORD_ARRIVED:
        return _("%(name)s at %(institution)s wrote a record for you.") % names
    return _("You have a new notification.")


def with_texts(notices: list[Notification]) -> list[Notification]:
    """Put each notice's sentence on it (``notice.text``), names in the page's language; two queries."""
    ids = {n.params["person"] for n in notices if n.params.get("person")}
    people = {str(u.public_id): u for u in User.objects.filter(public_id__in=ids)}
    places = {i.code: i for i in Institution.objects.filter(code__in={n.params.get("institution") for n in notices})}
    for notice in notices:
        person, place = people.get(notice.params.get("person")), places.get(notice.params.get("institution"))
        names = {
            # Notices written before names were resolved at display time carry the name itself.
            "name": person.display_name if person else notice.params.get("name", ""),
            "institution": place.display_name if place else notice.params.get("institution", ""),
        }
        notice.text = notice_text(notice.kind, names)
    return notices
