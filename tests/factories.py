"""factory_boy factories that go through the real services (so keys exist)."""

from __future__ import annotations

import factory
from allauth.account.models import EmailAddress
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from django.utils import timezone

from accounts.demo import DEMO_PASSWORD
from accounts.models import Institution, User
from accounts.services import institution_create, user_create

PASSWORD = DEMO_PASSWORD


class InstitutionFactory(factory.Factory):
    class Meta:
        model = Institution

    code = factory.Sequence(lambda n: f"inst{n}")
    kind = "hospital"
    name = factory.Sequence(lambda n: f"医院{n}")
    name_en = factory.Sequence(lambda n: f"Hospital {n}")

    @classmethod
    def _create(cls, model_class, **kwargs):
        return institution_create(**kwargs)


class UserFactory(factory.Factory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"user{n}@example.org")
    role = "patient"
    name = factory.Faker("name", locale="zh_CN")

    @classmethod
    def _create(cls, model_class, *, verified=False, is_superuser=False, password=PASSWORD, **kwargs):
        user = user_create(password=password, **kwargs)
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
        fields = []
        if verified:
            user.verified_at = timezone.now()
            fields.append("verified_at")
        if is_superuser:
            user.is_superuser = True
            fields.append("is_superuser")
        if fields:
            user.save(update_fields=fields)
        return user


def enable_totp(user: User) -> str:
    """Turn on TOTP for ``user``; returns the secret so a test can make codes."""
    secret = generate_totp_secret()
    TOTP.activate(user, secret)
    return secret


def totp_code(secret: str) -> str:
    """The current code; near the end of a period, waits for the next one so the server
    (which accepts only the current period) does not see the code expire in transit."""
    import time

    from allauth.mfa import app_settings
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    left = app_settings.TOTP_PERIOD - time.time() % app_settings.TOTP_PERIOD
    if left < 3:
        time.sleep(left + 0.05)
    counter = next(iter(yield_hotp_counters_from_time()))
    return format_hotp_value(hotp_value(secret, counter))


def mfa_login(client, user: User) -> None:
    """Sign a staff user in with the MFA stage already satisfied."""
    client.force_login(user)
