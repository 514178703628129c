"""/dashboard end to end in headless Chromium against the real service (uvicorn + a worker process).

The browser is Debian's `chromium` (scripts/install-chromium), driven over the DevTools protocol by
tests/support/cdp.py. Without a chromium binary the browser test skips, unless CI=true, where it fails.
The screenshot lands in test-output/dashboard.png at the repository root.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent_service.config import Settings
from tests.support.apps import Client, app_client
from tests.support.cdp import Browser, Page, find_chromium
from tests.support.environment import ROOT
from tests.support.processes import Live, bootstrap_user

pytestmark = pytest.mark.sqlite_only  # the page, its assets and a browser: no SQL of their own

OUTPUT_DIR = ROOT / "test-output"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "frame-ancestors 'none'")


# ---------------------------------------------------------------- the routes (no browser needed)

@pytest.fixture
async def anonymous(settings: Settings) -> AsyncIterator[Client]:
    async with app_client(settings, authenticated=False) as c:
        yield c


async def test_page_and_assets_are_served_with_a_strict_policy(anonymous: Client) -> None:
    page = await anonymous.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "<title>agent-service dashboard</title>" in page.text
    assert "/dashboard/static/dashboard.js" in page.text and "/dashboard/static/dashboard.css" in page.text
    for name, media_type in [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")]:
        asset = await anonymous.get(f"/dashboard/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(media_type)
        assert asset.headers["x-content-type-options"] == "nosniff"
    script = (await anonymous.get("/dashboard/static/dashboard.js")).text
    assert not any(sink in script for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"))


@pytest.mark.parametrize("name", ["nope.js", "dashboard.html", "__init__.py", "..%2Fdashboard.py", "dashboard.JS"])
async def test_only_known_assets_are_served(anonymous: Client, name: str) -> None:
    resp = await anonymous.get(f"/dashboard/static/{name}")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")


# ---------------------------------------------------------------- the browser

@pytest.fixture
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no chromium binary: run scripts/install-chromium (as root)")
        pytest.skip("no chromium binary on PATH: run scripts/install-chromium (as root) for the browser test")
    return binary


@pytest.fixture
def admin_key(env: dict[str, str], live_service: Live) -> str:
    # written straight to the service's SQLite file; the running service reads it from there
    return bootstrap_user(env, email="admin@example.com", admin=True)


BARS_SETTLED = """[...document.querySelectorAll('[role=progressbar]')].filter(p => p.offsetParent).every(p => {
    const want = p.getBoundingClientRect().width * Number(p.dataset.progress) / 100;
    return Math.abs(p.querySelector('.bar').getBoundingClientRect().width - want) < 1;
})"""


def js(value: object) -> str:
    """A Python value as a JavaScript literal (for safe interpolation into evaluated code)."""
    return json.dumps(value)


def row(task_id: str) -> str:
    return f"document.querySelector('#task-list tr[data-task-id={js(task_id)}]')"


def bar(task_id: str) -> str:
    return f"{row(task_id)}?.querySelector('[role=progressbar]')"


async def sign_in(page: Page, key: str) -> None:
    await page.evaluate(f"""(() => {{
        document.getElementById('api-key').value = {js(key)};
        document.getElementById('signin-submit').click();
    }})()""")
    await page.wait_for("!document.getElementById('dashboard').hidden", timeout=10)


async def record_progress(page: Page) -> None:
    """Remember every value any progress bar shows (the bar may move faster than a poll)."""
    await page.evaluate("""(() => {
        window.__progress = {};
        window.__chunkCounts = [];
        new MutationObserver((records) => {
            for (const r of records) {
                const tr = r.target.closest('tr[data-task-id]');
                if (!tr) continue;
                (window.__progress[tr.dataset.taskId] ||= []).push(Number(r.target.dataset.progress));
            }
        }).observe(document.getElementById('task-list'),
                   {subtree: true, attributes: true, attributeFilter: ['data-progress']});
        new MutationObserver(() => {
            window.__chunkCounts.push(document.querySelectorAll('#detail-chunks .chunk').length);
        }).observe(document.getElementById('detail-chunks'), {childList: true});
    })()""")


def queue_task(live: Live, body: dict[str, object]) -> str:
    resp = httpx.post(f"{live.base}/api/v1/agents/echo/invoke-async", json=body, headers=live.headers, timeout=5)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["task_id"])


@pytest.mark.browser
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_dashboard_follows_a_task_to_completion_in_chromium(
    chromium: str, live_service: Live, admin_key: str
) -> None:
    live = live_service
    started = time.monotonic()
    async with Browser.launch(chromium) as page:
        # the page loads: title, sign-in form, nothing else visible, no console errors
        await page.navigate(f"{live.base}/dashboard")
        assert await page.evaluate("document.title") == "agent-service dashboard"
        assert await page.evaluate("!document.getElementById('signin').hidden"), "sign-in form not shown"
        assert await page.evaluate("document.getElementById('dashboard').hidden")

        # a wrong key is refused inline, problem+json detail shown, nothing stored
        await page.evaluate("""(() => {
            document.getElementById('api-key').value = 'sk_live_not-a-real-key';
            document.getElementById('signin-submit').click();
        })()""")
        refusal = await page.wait_for(
            "!document.getElementById('signin-error').hidden && document.getElementById('signin-error').textContent")
        assert "rejected" in refusal
        assert await page.evaluate("sessionStorage.length") == 0
        page.errors.clear()  # Chromium logs the 401 of that attempt as a failed resource load

        # sign in with the admin key: queue depth and a live worker appear
        await sign_in(page, admin_key)
        await page.wait_for("/^\\d+$/.test(document.getElementById('q-queued').textContent)", timeout=10)
        await page.wait_for("document.querySelectorAll('#workers-body tr[data-worker-id]').length >= 1", timeout=15)
        heartbeat = await page.evaluate(
            "document.querySelector('#workers-body tr[data-worker-id] [data-field=heartbeat]').textContent")
        assert heartbeat.endswith("ago"), heartbeat
        agents = await page.evaluate("[...document.querySelectorAll('#agent option')].map(o => o.value)")
        assert "echo" in agents
        assert await page.evaluate("Object.keys(sessionStorage).length") == 1
        session = await page.evaluate("document.getElementById('session-info').textContent")
        assert "admin@example.com" in session and "not an admin" not in session, session

        # a task queued through the API (by another user) shows up; its bar moves to 100 % and SUCCESS
        await record_progress(page)
        message = " ".join(f"word{i}" for i in range(30))
        task_id = queue_task(live, {"message": message, "stream": True, "metadata": {"delay": 0.1}})
        await page.wait_for(f"!!{row(task_id)}", timeout=10)

        # open it while it runs: the detail view follows the event stream live
        await page.evaluate(f"{row(task_id)}.click()")
        await page.wait_for(f"document.getElementById('detail').dataset.taskId === {js(task_id)}", timeout=5)

        await page.wait_for(f"{row(task_id)}.dataset.state === 'SUCCESS' && {bar(task_id)}.dataset.progress === '100'",
                            timeout=30)
        assert await page.evaluate(f"{bar(task_id)}.getAttribute('aria-valuenow')") == "100"
        assert await page.evaluate(f"{row(task_id)}.querySelector('[data-field=state]').textContent") == "SUCCESS"
        seen = await page.evaluate(f"window.__progress[{js(task_id)}] || []")
        assert any(0 < p < 100 for p in seen), f"the bar never showed a value between 0 and 100: {seen}"
        assert seen[-1] == 100

        # every chunk arrived, in order, and some arrived while the task was still running
        await page.wait_for("document.getElementById('detail-state').dataset.state === 'SUCCESS'", timeout=10)
        await page.wait_for(f"document.getElementById('detail-chunks').textContent === {js(message)}", timeout=10)
        assert await page.evaluate("document.querySelectorAll('#detail-chunks .chunk').length") == 30
        counts = await page.evaluate("window.__chunkCounts")
        assert any(0 < c < 30 for c in counts), f"chunks did not arrive one by one: {counts}"
        assert await page.evaluate("document.getElementById('detail-progress').dataset.progress") == "100"
        # the kept result comes from the status endpoint once the stream has ended
        await page.wait_for(f"document.getElementById('detail-result').textContent === {js(message)}", timeout=10)
        assert await page.evaluate("document.getElementById('cancel-btn').disabled")
        assert await page.evaluate("document.getElementById('retry-btn').disabled")

        # cancel a slow task from its detail view, then retry it (admin) and see it run again
        slow_id = queue_task(live, {"message": "slow " * 20, "stream": True, "metadata": {"delay": 0.5}})
        await page.wait_for(f"!!{row(slow_id)}", timeout=10)
        await page.evaluate(f"{row(slow_id)}.click()")
        await page.wait_for("document.getElementById('detail-state').dataset.state === 'STARTED' && "
                            "document.querySelectorAll('#detail-chunks .chunk').length > 0", timeout=15)
        await page.evaluate("document.getElementById('cancel-btn').click()")
        await page.wait_for("document.getElementById('detail-state').dataset.state === 'REVOKED'", timeout=10)
        await page.wait_for(f"{row(slow_id)}.dataset.state === 'REVOKED'", timeout=10)
        await page.wait_for("!document.getElementById('retry-btn').disabled", timeout=5)
        await page.evaluate("document.getElementById('retry-btn').click()")
        await page.wait_for("['PENDING', 'STARTED'].includes(document.getElementById('detail-state').dataset.state)",
                            timeout=10)
        await page.wait_for("document.getElementById('detail-state').dataset.state === 'STARTED' && "
                            "document.querySelectorAll('#detail-chunks .chunk').length > 0", timeout=15)
        await page.wait_for(f"{row(slow_id)}.dataset.state === 'STARTED'", timeout=10)
        assert await page.evaluate("document.getElementById('detail-error').hidden")

        # the first task again, for the screenshot: finished, full stream, bar at 100 %
        await page.evaluate(f"{row(task_id)}.click()")
        await page.wait_for(f"document.getElementById('detail-chunks').textContent === {js(message)}", timeout=10)
        await page.wait_for(
            "[...document.querySelectorAll('#throughput .seg.ok')].some(s => parseFloat(s.style.height) > 0)",
            timeout=10)
        await page.wait_for(BARS_SETTLED, timeout=5)  # the bars' width transition has run
        shot = await page.screenshot(OUTPUT_DIR / "dashboard.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        assert page.errors == [], page.errors

        # sign out: the key is gone and the sign-in form is back
        await page.evaluate("document.getElementById('sign-out').click()")
        await page.wait_for("!document.getElementById('signin').hidden", timeout=5)
        assert await page.evaluate("sessionStorage.length") == 0
        assert await page.evaluate("document.querySelectorAll('#task-list tr').length") == 0

        # an ordinary user (who queued both tasks): their tasks, no admin panels, Retry not offered
        await sign_in(page, live.headers["X-API-Key"])
        await page.wait_for("!document.getElementById('admin-note').hidden", timeout=10)
        assert await page.evaluate("document.getElementById('queue-panel').offsetParent === null")
        await page.wait_for(f"!!{row(task_id)} && !!{row(slow_id)}", timeout=10)
        await page.evaluate(f"{row(task_id)}.click()")
        await page.wait_for(f"document.getElementById('detail-chunks').textContent === {js(message)}", timeout=10)
        assert await page.evaluate("document.getElementById('retry-btn').disabled")
        assert "e2e@example.com" in await page.evaluate("document.getElementById('session-info').textContent")
        assert page.errors == [], page.errors  # the page never even asks for the admin-only /api/v1/jobs
    # cancel the re-run so the worker is idle when the fixtures stop it
    httpx.post(f"{live.base}/api/v1/agents/tasks/{slow_id}/cancel", headers={"X-API-Key": admin_key}, timeout=5)
    print(f"dashboard browser test: {time.monotonic() - started:.1f}s, screenshot {Path(shot).relative_to(ROOT)}")
