"""The admin dashboard in Chromium: the admin signs in with the admin token, edits the pool
configuration and blacklists a worker through the forms, the API reflects both; a screenshot of
every admin page lands in tests/web/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.hub.conftest import wait_until
from tests.web.conftest import ARTIFACTS, LiveHub
from tests.web.hand_workers import hand_workers, listed_workers

PAGES = {
    "admin-overview": "/admin",
    "admin-jobs": "/admin/jobs",
    "admin-red": "/admin/red",
    "admin-benchmarks": "/admin/benchmarks",
    "admin-accounts": "/admin/accounts",
    "admin-tokens": "/admin/tokens",
    "admin-blacklist": "/admin/blacklist",
    "admin-cleanup": "/admin/cleanup",
    "admin-config": "/admin/config",
    "admin-ledger": "/admin/ledger",
}


def api(hub: LiveHub, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    return httpx.get(hub.url + path, headers=headers, timeout=30)


@pytest.fixture
def admin_page(browser: Browser, live_hub: LiveHub) -> Iterator[Page]:
    """A page signed in as the pool admin through the admin-token form."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.goto(live_hub.url + "/login/admin")
    page.get_by_label("Admin token").fill(live_hub.admin_token)
    page.locator("main").get_by_role("button").click()
    expect(page).to_have_url(live_hub.url + "/admin")
    yield page
    context.close()


def test_every_admin_page_renders_for_the_admin(admin_page: Page, live_hub: LiveHub) -> None:
    with hand_workers(live_hub, ("shown-a", "shown-b")):
        for name, path in PAGES.items():
            admin_page.goto(live_hub.url + path)
            expect(admin_page.locator("h1")).to_be_visible()
            if path == "/admin":
                canvas = admin_page.locator("[data-molecule] canvas")
                expect(canvas).to_have_attribute("data-live", "true", timeout=15_000)
                expect(canvas).to_have_attribute("data-atoms", str(len(listed_workers(live_hub))))
            admin_page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def test_the_admin_edits_the_pool_config_in_the_form_and_the_api_reflects_it(
    admin_page: Page, live_hub: LiveHub
) -> None:
    admin_page.goto(live_hub.url + "/admin/config")
    tip = admin_page.locator("label[for='f-max_queue_wait_s'] .tip")
    expect(tip).to_have_attribute(
        "title",
        api(live_hub, "/openapi.json").json()["components"]["schemas"]["PoolConfig"]["properties"][
            "max_queue_wait_s"
        ]["description"],
    )
    admin_page.locator("#f-max_queue_wait_s").fill("123")
    admin_page.locator("#f-trial_model").fill("smollm2-135m-instruct")
    admin_page.get_by_role("button", name="Save the configuration").click()
    expect(admin_page.get_by_role("status")).to_contain_text("Saved")
    assert api(live_hub, "/admin/api/pool-config").json()["max_queue_wait_s"] == 123
    admin_page.locator("#f-max_queue_wait_s").fill("-1")
    admin_page.get_by_role("button", name="Save the configuration").click()
    expect(admin_page.get_by_role("alert")).to_contain_text("max_queue_wait_s")
    admin_page.screenshot(path=ARTIFACTS / "admin-config-refused.png", full_page=True)
    assert api(live_hub, "/admin/api/pool-config").json()["max_queue_wait_s"] == 123


def test_the_admin_blacklists_a_worker_in_the_form_and_the_api_reflects_it(
    admin_page: Page, live_hub: LiveHub
) -> None:
    with hand_workers(live_hub, ("to-ban",)):
        admin_page.goto(live_hub.url + "/admin/blacklist")
        admin_page.get_by_label("What").select_option("worker")
        admin_page.get_by_label("Name or pool id").fill("to-ban")
        admin_page.get_by_label("Reason").fill("wrong answers")
        admin_page.get_by_role("button", name="Add to the blacklist").click()
        expect(admin_page.locator("[data-blacklist]")).to_contain_text("wrong answers")
        wait_until(lambda: "to-ban" not in listed_workers(live_hub), 15, "the worker to go")
    records = api(live_hub, "/admin/api/workers").json()["records"]
    assert [(r["connected"], r["blacklisted"]) for r in records if r["name"] == "to-ban"] == [
        (False, True)
    ]
    admin_page.screenshot(path=ARTIFACTS / "admin-blacklist-worker.png", full_page=True)


def test_the_overview_follows_the_pool_live_without_a_reload(
    admin_page: Page, live_hub: LiveHub
) -> None:
    admin_page.goto(live_hub.url + "/admin")
    before = len(listed_workers(live_hub))
    canvas = admin_page.locator("[data-molecule] canvas")
    expect(canvas).to_have_attribute("data-live", "true", timeout=15_000)
    expect(canvas).to_have_attribute("data-atoms", str(before))
    with hand_workers(live_hub, ("arrives-live",)):
        expect(canvas).to_have_attribute("data-atoms", str(before + 1), timeout=15_000)
        workers = admin_page.locator("[data-admin-workers]")
        expect(workers).to_contain_text("arrives-live", timeout=15_000)  # htmx, every 5 s
        admin_page.screenshot(path=ARTIFACTS / "admin-overview-live.png", full_page=True)
    expect(canvas).to_have_attribute("data-atoms", str(before), timeout=15_000)
