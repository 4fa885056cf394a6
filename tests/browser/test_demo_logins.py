"""The demo patient and the demo doctor sign in and reach their home pages,
in Chinese and in English, in a real browser. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest
from django.core.management import call_command

from accounts.demo import DEMO_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CASES = [
    ("patient@demo.yilian", "/patient/", {"zh-CN": "您好", "en-US": "Hello"}),
    ("doctor@demo.yilian", "/clinic/", {"zh-CN": "医生工作台", "en-US": "Clinic dashboard"}),
    ("researcher@demo.yilian", "/research/", {"zh-CN": "科研门户", "en-US": "Research portal"}),
    (
        "admin@demo.yilian",
        "/accounts/institution/",
        {"zh-CN": "华康第一人民医院", "en-US": "Huakang First People's Hospital"},
    ),
]


@pytest.fixture
def demo(chromium_available, live_server):
    call_command("seed_demo", quiet_logins=True)
    return live_server.url


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
@pytest.mark.parametrize(("email", "home", "expected"), CASES)
def test_demo_user_signs_in_and_lands_home(browser, demo, artifacts_dir, locale, email, home, expected):
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 860})
    page = context.new_page()
    try:
        page.goto(f"{demo}/")
        assert "/accounts/login/" in page.url
        if email == CASES[0][0]:
            page.screenshot(path=artifacts_dir / f"login-{locale}.png", full_page=True)
        page.fill("input[name=login]", email)
        page.fill("input[name=password]", DEMO_PASSWORD)
        page.click("form.form button[type=submit]")
        page.wait_for_url(f"{demo}{home}")
        assert expected[locale] in page.content()
        name = email.split("@")[0]
        page.screenshot(path=artifacts_dir / f"home-{name}-{locale}.png", full_page=True)
    finally:
        context.close()


def test_language_switcher_changes_the_portal_language(browser, demo, artifacts_dir):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    try:
        page.goto(f"{demo}/accounts/login/")
        page.fill("input[name=login]", "patient@demo.yilian")
        page.fill("input[name=password]", DEMO_PASSWORD)
        page.click("form.form button[type=submit]")
        page.wait_for_url(f"{demo}/patient/")
        assert "您好" in page.content()
        page.select_option("#language-select", "en")
        page.wait_for_load_state("networkidle")
        assert "Hello" in page.content()
        assert page.locator("html").get_attribute("lang") == "en"
    finally:
        context.close()
