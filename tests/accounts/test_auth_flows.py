"""Sign-up, email verification, sign-in, MFA enrolment, lockout, idle timeout."""

from __future__ import annotations

import re

import pytest
from allauth.mfa.utils import is_mfa_enabled
from django.core import mail
from django.core.cache import cache
from django.db import connection
from django.urls import reverse

from accounts.middleware import SESSION_KEY
from accounts.models import User
from tests.factories import PASSWORD, totp_code

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    cache.clear()
    yield
    cache.clear()


def signup(client, **overrides):
    data = {
        "email": "newpatient@example.org",
        "password1": "a-Strong-passphrase-42",
        "password2": "a-Strong-passphrase-42",
        "name": "林小雨",
        "role": "patient",
    }
    data.update(overrides)
    return client.post(reverse("account_signup"), data)


def test_patient_signs_up_verifies_email_signs_in_and_out(client):
    response = signup(client)
    assert response.status_code == 302
    user = User.objects.get(email="newpatient@example.org")
    assert user.role == "patient" and user.has_keys
    # Unverified: sign-in is held at the verification page.
    client.logout()
    response = client.post(reverse("account_login"), {"login": user.email, "password": "a-Strong-passphrase-42"})
    assert response.status_code == 302
    assert response["Location"] == reverse("account_email_verification_sent")
    # The verification email carries a confirmation link.
    assert mail.outbox, "no verification email sent"
    body = mail.outbox[-1].body
    assert "Hello from testserver" not in body and "Yilian" in body  # greets as the site, not the host
    assert user.language  # emails to come are written in the language they signed up in
    link = re.search(r"http://testserver(/accounts/confirm-email/\S+/)", mail.outbox[-1].body).group(1)
    response = client.post(link)
    assert response.status_code == 302
    client.logout()
    response = client.post(reverse("account_login"), {"login": user.email, "password": "a-Strong-passphrase-42"})
    assert response.status_code == 302
    response = client.get(reverse("home"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("patient_home")
    client.post(reverse("account_logout"))
    assert client.get(reverse("patient_home")).status_code == 302


def test_signup_errors_are_shown_in_the_users_language(client):
    response = signup(client, password2="different", HTTP_ACCEPT_LANGUAGE="zh-hans")
    response = client.post(
        reverse("account_signup"),
        {
            "email": "x@example.org",
            "password1": "a-Strong-passphrase-42",
            "password2": "nope",
            "name": "x",
            "role": "patient",
        },
        HTTP_ACCEPT_LANGUAGE="zh-hans",
    )
    assert response.status_code == 200
    assert "两次输入的密码必须一致" in response.content.decode() or "密码" in response.content.decode()
    assert not User.objects.filter(email="x@example.org").exists()


def test_doctor_signup_requires_an_institution(client, hospital):
    response = signup(client, email="doc@example.org", role="clinician")
    assert response.status_code == 200
    assert not User.objects.filter(email="doc@example.org").exists()
    response = signup(client, email="doc@example.org", role="clinician", institution=hospital.pk)
    assert response.status_code == 302
    doctor = User.objects.get(email="doc@example.org")
    assert doctor.institution == hospital and not doctor.is_verified_staff


def test_researcher_must_choose_a_research_institute(client, hospital):
    response = signup(client, email="r@example.org", role="researcher", institution=hospital.pk)
    assert response.status_code == 200
    assert not User.objects.filter(email="r@example.org").exists()


def password_login(client, user):
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content


def test_patient_turns_on_totp_and_gets_recovery_codes(client, alice):
    password_login(client, alice)
    # Turning on 2FA is a sensitive action: allauth asks for the password again.
    page = client.get(reverse("mfa_activate_totp"))
    assert page["Location"].startswith(reverse("account_reauthenticate"))
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    secret = page.context["form"].secret
    response = client.post(reverse("mfa_activate_totp"), {"code": totp_code(secret)})
    assert response.status_code == 302
    assert is_mfa_enabled(alice)
    codes = client.get(reverse("mfa_view_recovery_codes"))
    assert codes.status_code == 200
    assert len(codes.context["unused_codes"]) == 10
    # Next sign-in asks for the second factor.
    client.logout()
    response = client.post(reverse("account_login"), {"login": alice.email, "password": PASSWORD})
    assert response["Location"] == reverse("mfa_authenticate")


def test_the_authenticator_page_shows_a_small_qr_code_and_a_primary_activate_button(client, alice):
    """Every doctor's first sign-in: the QR code filled the card and "激活" looked like a secondary button."""
    password_login(client, alice)
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert re.search(r'<img src="data:image/svg\+xml[^"]*" class="qr-code" width="200" height="200"', page)
    assert re.search(r'<button class="btn btn-primary" type="submit">\s*激活\s*</button>', page)


def test_allauth_pages_say_dianzi_youxiang_in_chinese_as_the_portals_do(client):
    """allauth's own catalogue says "确认Email地址" one page after our "电子邮箱"."""
    from django.utils import translation

    from accounts.allauth_wording import MESSAGES

    with translation.override("zh-hans"):
        for message in MESSAGES:
            chinese = translation.gettext(message)
            words = re.sub(r"%\(\w+\)s", "", chinese)
            assert chinese != message and not re.search(r"[Ee]-?mail", words), (message, chinese)
    signup(client, HTTP_ACCEPT_LANGUAGE="zh-hans")
    link = re.search(r"http://testserver(/accounts/confirm-email/\S+/)", mail.outbox[-1].body).group(1)
    page = client.get(link, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "确认电子邮箱" in page and "Email地址" not in page
    assert re.search(r'<button class="btn btn-primary" type="submit">\s*确认\s*</button>', page)


def test_the_two_factor_pages_say_shuangchong_yanzheng_and_zhanghao_as_the_portals_do(client, alice):
    """allauth says "双因素身份认证", "两步验证", "帐户" and "认证器代码" on the first page a clinician meets."""
    from django.utils import translation

    from accounts.allauth_wording import TWO_FACTOR_MESSAGES

    allauth_words = r"双因素|两步验证|帐户|帐号|认证器"
    with translation.override("zh-hans"):
        for message in TWO_FACTOR_MESSAGES:
            chinese = translation.gettext(message)
            assert chinese != message and not re.search(allauth_words, chinese), (message, chinese)
    password_login(client, alice)
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "要用双重验证保护您的账号" in page and "动态码" in page
    assert not re.search(allauth_words, page)
    with translation.override("zh-hans"):
        assert translation.gettext("Code") == "验证码"
    # The recovery codes, shown once 2FA is on: "在 10个恢复码中，有 10 个可用" and "下载代码" before.
    secret = client.get(reverse("mfa_activate_totp")).context["form"].secret
    client.post(reverse("mfa_activate_totp"), {"code": totp_code(secret)})
    page = client.get(reverse("mfa_view_recovery_codes"), HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "共 10 个恢复代码，其中 10 个可用。" in page and "下载恢复代码" in page and "生成新的恢复代码" in page
    assert not re.search(allauth_words + r"|恢复码|[^复]代码", page)


def test_wrong_totp_code_is_rejected_with_a_message(client, alice):
    password_login(client, alice)
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    client.get(reverse("mfa_activate_totp"))
    response = client.post(reverse("mfa_activate_totp"), {"code": "000000"})
    assert response.status_code == 200
    assert response.context["form"].errors
    assert not is_mfa_enabled(alice)


def test_lockout_after_repeated_failed_sign_ins(client, alice, settings):
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        response = client.post(reverse("account_login"), {"login": alice.email, "password": "wrong-password"})
        assert response.status_code == 200
    # Even the right password is refused while locked out.
    response = client.post(reverse("account_login"), {"login": alice.email, "password": PASSWORD})
    assert response.status_code in (200, 429)
    assert "_auth_user_id" not in client.session
    body = response.content.decode()
    assert "Too many failed login attempts" in body or "登录失败次数过多" in body or response.status_code == 429


def test_idle_staff_session_times_out(client, carol, settings):
    client.force_login(carol)
    assert client.get(reverse("clinic_home")).status_code == 200
    session = client.session
    session[SESSION_KEY] = session[SESSION_KEY] - settings.SESSION_IDLE_TIMEOUT_STAFF - 5
    session.save()
    response = client.get(reverse("clinic_home"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert "_auth_user_id" not in client.session


def test_patient_idle_limit_is_longer_than_staff(client, alice, settings):
    client.force_login(alice)
    client.get(reverse("patient_home"))
    session = client.session
    session[SESSION_KEY] = session[SESSION_KEY] - settings.SESSION_IDLE_TIMEOUT_STAFF - 5
    session.save()
    assert client.get(reverse("patient_home")).status_code == 200


@pytest.mark.django_db
def test_the_reauthentication_alternatives_are_readable(client, carol):
    """allauth's "primary, outline" buttons were white text on a white card."""
    client.force_login(carol)
    page = client.get(reverse("account_reauthenticate"), HTTP_ACCEPT_LANGUAGE="en").content.decode()
    alternatives = page.split("Alternative options", 1)[1] if "Alternative options" in page else ""
    assert alternatives, "no alternatives offered"
    assert "btn-outline" in alternatives and "btn-primary" not in alternatives


def test_activity_is_written_to_the_session_once_a_minute_not_on_every_page(client, carol, settings):
    client.force_login(carol)
    assert client.get(reverse("clinic_home")).status_code == 200
    first = client.session[SESSION_KEY]
    statements = []
    with connection.execute_wrapper(lambda execute, sql, *rest: statements.append(sql) or execute(sql, *rest)):
        assert client.get(reverse("clinic_home")).status_code == 200
    assert not [sql for sql in statements if sql.startswith("UPDATE") and "django_session" in sql]
    assert client.session[SESSION_KEY] == first
    session = client.session
    session[SESSION_KEY] = first - 61  # a minute and a second ago: written again
    session.save()
    assert client.get(reverse("clinic_home")).status_code == 200
    assert client.session[SESSION_KEY] > first - 1
