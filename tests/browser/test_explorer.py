"""An operator opens the chain explorer: dashboard, a block, a transaction whose
merkle proof the browser checks. Screenshots go to test-artifacts/."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from accounts.demo import DEMO_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_operator_walks_the_explorer(browser, live_server, chromium_available, node, artifacts_dir):
    from chain.ledger_services import chain_seal
    from chain.models import Block, Transaction

    call_command("seed_demo", quiet_logins=True)
    chain_seal()
    call_command("chain", "submit-demo", "40")
    chain_seal()
    tx = Transaction.objects.order_by("-block__height", "index").first()
    block = Block.objects.order_by("-height").first()
    context = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/accounts/login/")
        page.fill("input[name=login]", "operator@demo.yilian")
        page.fill("input[name=password]", DEMO_PASSWORD)
        page.click("form.form button[type=submit]")
        page.wait_for_url(f"{live_server.url}/ops/")
        page.screenshot(path=artifacts_dir / "operator-node-health.png", full_page=True)
        page.goto(f"{live_server.url}/chain/")
        assert page.locator("svg").count() >= 1
        page.screenshot(path=artifacts_dir / "chain-explorer-dashboard.png", full_page=True)
        page.goto(f"{live_server.url}/chain/block/{block.height}/")
        page.screenshot(path=artifacts_dir / "chain-explorer-block.png", full_page=True)
        page.goto(f"{live_server.url}/chain/tx/{tx.cid}/")
        page.wait_for_selector("text=Checked by your browser")
        page.screenshot(path=artifacts_dir / "chain-explorer-tx.png", full_page=True)
    finally:
        context.close()
