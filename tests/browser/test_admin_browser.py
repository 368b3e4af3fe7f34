"""The admin in a real browser (headless Chromium) against a real 3-node cluster: sign in,
edit a value in the JSON editor (checked as you type), see the success message with the
log index, read the history's diff, see a stale form's save refused as a conflict, then lose two of the three workers and see the save
refused with the no-quorum error, the input kept.

Screenshots of every step go to $CONFIGSTORE_SCREENSHOTS, or to a temporary folder whose
path the test prints."""

from __future__ import annotations

import os
import re
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from configstore.commands import Origin, Write, WriteOperation, encode
from consensus.client import Committed

pytestmark = pytest.mark.cluster

KEY = "payments/timeout_ms"


@pytest.fixture
def shots():
    folder = Path(
        os.environ.get("CONFIGSTORE_SCREENSHOTS") or tempfile.mkdtemp(prefix="configstore-shots-")
    )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    count = iter(range(1, 100))

    def shoot(page, name: str) -> None:
        page.screenshot(path=folder / f"{next(count):02d}-{name}.png", full_page=True)

    return shoot


def seed(cluster, key: str, value) -> int:
    """Put a value through consensus, as the services do; returns its log index."""
    origin = Origin(at=datetime.now(UTC), actor="seed", reason="seed", node="n1")
    payload = encode(WriteOperation("put", (Write("put", key, value),), origin))
    outcome = cluster.submitter("n1").submit(payload, timeout=10)
    assert isinstance(outcome, Committed), outcome
    return outcome.slot


def test_edit_see_the_index_read_the_diff_and_lose_the_quorum(make_cluster, page, shots):
    cluster = make_cluster(web=True)
    password = cluster.ensure_admin()
    seed(cluster, KEY, {"ms": 100, "retries": 3})
    base = cluster.web_url("n1")

    page.goto(f"{base}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page.locator("#cluster-module")).to_contain_text("Cluster status")
    shots(page, "index")

    page.click("text=Entries")
    row = page.locator("#result_list tbody tr", has_text=KEY)
    expect(row.locator("code.cs-preview")).to_have_text('{"ms": 100, "retries": 3}')
    shots(page, "list")
    row.locator(f"a:text-is('{KEY}')").click()

    editor = page.locator("#id_value")
    status = page.locator("#id_value_status")
    expect(status).to_have_text("Valid JSON: an object with 2 keys.")
    editor.fill('{\n  "ms": 250,\n  "retries": 3,\n}')  # a trailing comma, as people type
    expect(status).to_contain_text("Invalid JSON")
    expect(status).to_contain_text("line 4")
    expect(editor).to_have_attribute("aria-invalid", "true")
    shots(page, "invalid-json")
    editor.fill('{\n  "ms": 250,\n  "retries": 3\n}')
    expect(status).to_have_text("Valid JSON: an object with 2 keys.")
    page.fill("#id_reason", "upstream got slower")
    page.click("input[name=_save]")
    message = page.locator("ul.messagelist li.success")
    expect(message).to_contain_text(f"“{KEY}” saved: version 2, committed at log index")
    index = int(re.search(r"log index (\d+)", message.inner_text()).group(1))
    assert index > 1
    expect(page.locator("#result_list tbody tr", has_text=KEY).locator("code")).to_have_text(
        '{"ms": 250, "retries": 3}'
    )
    shots(page, "saved")

    page.locator(f"#result_list a:text-is('{KEY}')").click()
    page.click("a.historylink")
    newest = page.locator(f"#index-{index}")
    expect(newest.locator("h2")).to_have_text(f"Log index {index}: changed, version 2")
    expect(newest).to_contain_text("upstream got slower")
    expect(newest.locator(".cs-diff .cs-removed")).to_have_text(['-  "ms": 100,'])
    expect(newest.locator(".cs-diff .cs-added")).to_have_text(['+  "ms": 250,'])
    shots(page, "history")

    # Two operators load the same version; the second save is refused, showing the first.
    change_url = f"{base}/admin/configstore/entry/payments_2Ftimeout_5Fms/change/"
    other = page.context.new_page()
    other.goto(change_url)
    page.goto(change_url)
    editor.fill('{\n  "ms": 300,\n  "retries": 3\n}')
    page.fill("#id_reason", "peak hours")
    page.click("input[name=_save]")
    expect(message).to_contain_text("saved: version 3")
    other.locator("#id_value").fill('{\n  "ms": 400,\n  "retries": 3\n}')
    other.fill("#id_reason", "mine")
    other.click("input[name=_save]")
    expect(other.locator("#conflict")).to_contain_text("You loaded version 2; it is now version 3.")
    expect(other.locator(".cs-changes")).to_contain_text("peak hours")
    expect(other.locator(".cs-diff").first.locator(".cs-added")).to_have_text(['+  "ms": 300,'])
    expect(other.locator("#id_value")).to_have_value('{\n  "ms": 400,\n  "retries": 3\n}')
    shots(other, "conflict")
    other.close()

    cluster.kill_worker("n2")
    cluster.kill_worker("n3")
    deadline = time.monotonic() + 20
    while requests.get(f"{base}/healthz", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "n1 still claims a quorum"
        time.sleep(0.2)

    page.goto(f"{base}/admin/cluster/?refresh=1")  # a node is "down" once its status is stale
    expect(page.locator("#quorum")).to_contain_text("cannot reach a quorum")
    for node in ("n2", "n3"):
        expect(page.locator(f"#node-{node}")).to_contain_text("no status published")
    shots(page, "cluster-without-quorum")

    page.goto(f"{base}/admin/configstore/entry/")
    page.locator(f"#result_list a:text-is('{KEY}')").click()
    new_value = '{\n  "ms": 500,\n  "retries": 3\n}'
    editor.fill(new_value)
    page.fill("#id_reason", "even slower")
    page.click("input[name=_save]")
    failure = page.locator("#failure")
    expect(failure).to_contain_text("Nothing was committed: the cluster has no quorum.")
    expect(failure).to_contain_text("Your input is kept below")
    expect(editor).to_have_value(new_value)
    expect(page.locator("#id_reason")).to_have_value("even slower")
    shots(page, "no-quorum")
    rows = cluster.query("n1", "SELECT value, version FROM configstore_entry WHERE key = %s", [KEY])
    assert rows == [({"ms": 300, "retries": 3}, 3)]


def test_a_user_made_in_the_admin_on_n1_signs_in_on_n2_with_its_prefix_permission(
    make_cluster, page, shots
):
    """An operator creates a group with a prefix permission, then a staff user in it, in
    n1's admin; that user signs in to n2's admin and may edit keys under the prefix only."""
    cluster = make_cluster(web=True)
    password = cluster.ensure_admin()
    seed(cluster, "team/limit", 5)
    seed(cluster, "other/limit", 7)
    n1, n2 = cluster.web_url("n1"), cluster.web_url("n2")

    page.goto(f"{n1}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.goto(f"{n1}/admin/auth/group/add/")
    page.fill("#id_name", "team")
    page.fill("#id_configstore_prefixes-0-prefix", "team/")
    page.check("#id_configstore_prefixes-0-can_view")
    page.check("#id_configstore_prefixes-0-can_change")
    shots(page, "group-add")
    page.click("input[name=_save]")
    expect(page.locator("ul.messagelist li.info")).to_contain_text("Committed through the cluster")
    shots(page, "group-saved")

    page.goto(f"{n1}/admin/auth/user/add/")
    page.fill("#id_username", "tess")
    page.fill("#id_password1", "tess-secret-password-1")
    page.fill("#id_password2", "tess-secret-password-1")
    page.click("input[name=_save]")  # then the change page: staff, and the group
    expect(page.locator("ul.messagelist li.info")).to_contain_text("log index")
    page.check("#id_is_staff")
    page.locator("#id_groups_from option", has_text="team").dblclick()  # into "Chosen"
    expect(page.locator("#id_groups_to option")).to_have_text(["team"])
    shots(page, "user-change")
    page.click("input[name=_save]")
    expect(page.locator("ul.messagelist li.info")).to_contain_text("log index")
    shots(page, "user-saved")
    cluster.wait_everywhere(
        "SELECT 1 FROM auth_user u JOIN auth_user_groups ug ON ug.user_id = u.id "
        "WHERE u.username = 'tess' AND u.is_staff",
        [],
    )

    other = page.context.browser.new_context().new_page()  # no session of n1's admin
    other.goto(f"{n2}/admin/")
    other.fill("#id_username", "tess")
    other.fill("#id_password", "tess-secret-password-1")
    other.click("input[type=submit]")
    expect(other.locator("#site-name")).to_be_visible()
    other.goto(f"{n2}/admin/configstore/entry/")
    expect(other.locator("#result_list")).to_contain_text("team/limit")
    expect(other.locator("#result_list")).not_to_contain_text("other/limit")
    shots(other, "tess-on-n2")
    assert other.goto(f"{n2}/admin/auth/user/").status == 403  # not an access manager
    rows = cluster.query(
        "n2", "SELECT command, subject, actor FROM configstore_access_history ORDER BY index"
    )
    assert ("put_group", "group:team", "admin") in rows
    assert [r for r in rows if r[1] == "user:tess"] == [
        ("put_user", "user:tess", "admin"),
        ("put_user", "user:tess", "admin"),
    ]
