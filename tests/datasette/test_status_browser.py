"""The status page in a real browser: headless Chromium loads it as root, sees the overview
and the charts, watches it refresh in place, clicks replay, and saves the docs' screenshot.

The sender is a real ``datasette serve`` with three sinks: one delivering to the receiver, one
paused (its token may not write) and one whose database does not exist (dead letters). Set
``EVENTSINK_SCREENSHOT=docs/images/status.png`` to update the docs' picture, and
``EVENTSINK_SCREENSHOT_TRAFFIC=SECONDS`` to let traffic run longer first (more chart).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from eventsink.testing import wait_until
from eventsink.testing.receiver import DatasetteReceiver

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


@pytest.fixture
def browser_context(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()


def _sender_config(tmp_path: Path, receiver: DatasetteReceiver) -> Path:
    read_only = receiver.create_token("root", "--all", "view-instance")
    config = {
        "plugins": {
            "eventsink": {
                "table": "sender_events",
                "instance": "web-1",
                "flush_interval": 0.2,
                "sinks": [
                    {
                        "type": "datasette",
                        "name": "warehouse",
                        "api_url": f"{receiver.db_url}/-/create",
                        "api_token": receiver.token,
                    },
                    {
                        "type": "datasette",
                        "name": "analytics",
                        "api_url": f"{receiver.db_url}/-/create",
                        "api_token": read_only,
                    },
                    {
                        "type": "datasette",
                        "name": "archive",
                        "api_url": f"{receiver.url}/archive/-/create",
                        "api_token": receiver.token,
                        "max_attempts": 1,
                    },
                ],
            }
        }
    }
    path = tmp_path / "sender.json"
    path.write_text(json.dumps(config))
    return path


def _traffic(sender: DatasetteReceiver, token: str, seconds: float) -> int:
    """Make Datasette events on the sender: a table, then inserts; return how many."""
    headers = {"Authorization": f"Bearer {token}"}
    url = sender.db_url
    created = httpx.post(
        f"{url}/-/create", json={"table": "orders", "row": {"n": 0}}, headers=headers, timeout=30
    )
    assert created.status_code == 201, created.text
    events = 2  # create-table, insert-rows
    deadline = time.monotonic() + seconds
    n = 0
    while True:
        n += 1
        response = httpx.post(
            f"{url}/orders/-/insert", json={"rows": [{"n": n}]}, headers=headers, timeout=30
        )
        assert response.status_code == 201, response.text
        events += 1
        if time.monotonic() >= deadline and n >= 10:
            return events
        time.sleep(0.05 + 0.3 * (n % 7 == 0))


def _root_login_url(sender: DatasetteReceiver) -> str:
    # `datasette serve --root` prints a one-time sign-in link for the root actor.
    def found() -> str | None:
        match = re.search(r"http://\S+/-/auth-token\?token=\w+", sender.log_path.read_text())
        return match.group(0) if match else None

    return wait_until(found, timeout=10)


def test_status_page_in_chromium(tmp_path, receiver, browser_context):
    config = _sender_config(tmp_path, receiver)
    extra = ["-c", str(config), "--internal", str(tmp_path / "internal.db")]
    traffic = float(os.environ.get("EVENTSINK_SCREENSHOT_TRAFFIC", "0"))
    with DatasetteReceiver(database="shop", extra_args=extra) as sender:
        events = _traffic(sender, sender.token, traffic)

        def status() -> dict:
            headers = {"Authorization": f"Bearer {sender.token}"}
            return httpx.get(f"{sender.url}/-/eventsink.json", headers=headers, timeout=30).json()

        # generous deadlines: the machine running the tests may be busy
        wait_until(lambda: status()["sinks"]["warehouse"]["delivered"] == events, timeout=120)
        wait_until(lambda: status()["sinks"]["archive"]["dead_letters"] == events, timeout=120)
        wait_until(lambda: status()["sinks"]["analytics"]["state"] == "paused", timeout=120)
        assert len(receiver.rows("sender_events")) == events

        page = browser_context.new_page()
        page.goto(_root_login_url(sender))  # sets the root actor cookie
        page.goto(f"{sender.url}/-/eventsink")
        assert page.locator("h1").inner_text() == "eventsink status"

        # the overview: one row per sink with its state
        overview = page.locator("#eventsink-overview")
        badges = {
            name: overview.locator(f'tr[data-sink="{name}"] .es-badge').inner_text()
            for name in ("warehouse", "analytics", "archive")
        }
        assert badges["warehouse"] in ("ok", "idle")
        assert badges["analytics"] == "paused"
        assert page.locator("#sink-analytics").get_by_text("waiting for the sink").count() == 1

        # the charts render: an SVG per sink, bars for what the warehouse received
        assert page.locator("svg.eventsink-chart").count() == 3
        assert page.locator("#sink-warehouse svg rect.bar-delivered").count() >= 1
        assert page.locator("#sink-archive svg rect.bar-failed").count() >= 1
        box = page.locator("#sink-warehouse svg.eventsink-chart").bounding_box()
        assert box is not None and box["width"] > 400 and box["height"] > 50

        # it refreshes in place, without a full reload
        page.evaluate("window.eventsinkMarker = 42")
        page.evaluate(
            "new Promise(done => document.getElementById('eventsink-live')"
            ".addEventListener('eventsink:refreshed', done, {once: true}))"
        )
        assert page.evaluate("window.eventsinkMarker") == 42

        # dead letters grouped by error ("N of TOTAL"; signing in as root made one more event)
        archive = page.locator("#sink-archive")
        total = status()["sinks"]["archive"]["dead_letters"]
        groups = archive.locator("table.es-dead tbody tr")
        counts = [
            int(row.locator("td").first.inner_text().split(" of ")[0]) for row in groups.all()
        ]
        assert sum(counts) == total and all(
            row.locator("td").first.inner_text().endswith(f" of {total}") for row in groups.all()
        )
        page.locator("details.nav-menu summary").click()
        assert page.get_by_role("link", name="eventsink delivery status").is_visible()
        page.locator("details.nav-menu summary").click()

        screenshot = os.environ.get("EVENTSINK_SCREENSHOT")
        page.screenshot(path=screenshot or str(tmp_path / "status.png"), full_page=True)

        # replay the largest group: its events go back to the archive sink (and fail again)
        archive.get_by_role("button", name=f"Replay {counts[0]} dead letter(s)").first.click()
        page.wait_for_load_state()
        assert page.get_by_text(f"{counts[0]} dead letter(s) queued for delivery again").count()
