"""The admin's pages over Django's test client, where no consensus is involved: what each
page shows, who may see and change what, and that every refused save, delete and revert
leaves the state and the history unchanged.

No cluster runs here (see conftest.py): a save that passes every check reaches the quorum
check and comes back "no quorum". The saves that commit run against a real cluster in
test_admin.py."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from configstore.admin_diff import DiffLine, preview, value_diff
from configstore.models import AccessHistory, History, PrefixPermission
from consensus.conf import parse_peers
from tests.configstore.admin_html import Page
from tests.configstore.conftest import payload, replicated_state

ENTRIES = "/admin/configstore/entry/"


def change_url(key: str) -> str:
    return f"{ENTRIES}{quote(key)}/change/"


def staff(username: str, *perms: str, groups=(), superuser: bool = False) -> User:
    user = User.objects.create_user(username, is_staff=True, is_superuser=superuser)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app, codename=codename)
        )
    user.groups.add(*groups)
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def seeded(log):
    """payments/timeout: 50 then {"ms": 100, "retry": true} (v2); payments/eu/limit 3;
    shared/flag true; other/secret "s3cr3t"; limits/api {"retries": 2} under a schema."""
    log.apply(payload("put", key="payments/timeout", value=50, actor="alice", reason="first"))
    log.apply(
        payload(
            "put",
            key="payments/timeout",
            value={"ms": 100, "retry": True},
            actor="bob",
            reason="slower",
        )
    )
    log.apply(payload("put", key="payments/eu/limit", value=3))
    log.apply(payload("put", key="shared/flag", value=True))
    log.apply(payload("put", key="other/secret", value="s3cr3t"))
    log.apply(
        payload(
            "put_schema",
            key="limits/",
            schema={
                "type": "object",
                "properties": {"retries": {"type": "integer", "minimum": 0}},
            },
        )
    )
    log.apply(payload("put", key="limits/api", value={"retries": 2}))
    return log


@pytest.fixture
def people(db) -> dict[str, Client]:
    """admin (superuser); pay (payments/: view, change, delete; shared/: view only);
    viewer (view every key); outsider (not staff)."""
    group = Group.objects.create(name="payments-team")
    PrefixPermission.objects.create(
        group=group, prefix="payments/", can_change=True, can_delete=True
    )
    PrefixPermission.objects.create(group=group, prefix="shared/")
    outsider = User.objects.create_user("outsider", is_superuser=True)  # not staff
    return {
        "admin": client_for(staff("admin", superuser=True)),
        "pay": client_for(staff("pay", groups=[group])),
        "viewer": client_for(staff("viewer", "configstore.view_entry")),
        "outsider": client_for(outsider),
    }


def page(response) -> Page:
    assert response.status_code == 200, response.status_code
    return Page(response.content)


# ------------------------------------------------------------------------------ the list


def test_the_list_shows_each_value_on_one_line_and_browses_namespaces(seeded, people):
    listing = page(people["admin"].get(ENTRIES))
    assert '{"ms": 100, "retry": true}' in listing.by_class("cs-preview")
    assert {"payments/", "shared/", "other/", "limits/"} <= {text for _, text in listing.links}
    payments = page(people["admin"].get(ENTRIES + "?prefix=payments/"))
    keys = [
        text
        for href, text in payments.links
        if href.endswith("/change/?_changelist_filters=prefix%3Dpayments%252F")
    ]
    assert keys == ["payments/eu/limit", "payments/timeout"]
    assert "payments/eu/" in [text for _, text in payments.links]  # the namespace below
    counted = page(people["admin"].get(ENTRIES + "?prefix=payments/&_facets=True"))
    assert "payments/eu/ (1)" in [text for _, text in counted.links]


def test_a_long_value_is_cut_in_the_list_and_whole_in_its_title(seeded, people, log):
    log.apply(payload("put", key="big", value={"items": list(range(100))}))
    listing = Page(people["admin"].get(ENTRIES + "?q=big").content)
    (shown,) = listing.by_class("cs-preview")
    assert len(shown) == 80 and shown.endswith("…")
    assert '"items": [\n    0,' in listing.html.replace("&quot;", '"')


def test_search_looks_in_keys_descriptions_and_values(seeded, people):
    found = page(people["admin"].get(ENTRIES + "?q=s3cr3t"))
    assert "other/secret" in found.text and "payments/timeout" not in found.text


def test_a_prefix_limited_user_lists_only_the_keys_it_may_view(seeded, people):
    listing = page(people["pay"].get(ENTRIES))
    shown = {text for _, text in listing.links}
    assert {"payments/timeout", "payments/eu/limit", "shared/flag"} <= shown
    assert not {"other/secret", "limits/api", "other/"} & shown
    assert people["pay"].get(change_url("other/secret")).status_code == 403
    assert people["pay"].get(f"{ENTRIES}{quote('other/secret')}/history/").status_code == 403


def test_staff_only(seeded, people):
    response = people["outsider"].get(ENTRIES)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


# ------------------------------------------------------------------------- change forms


def test_the_change_form_has_a_json_editor_a_reason_the_schemas_and_the_version(seeded, people):
    form = page(people["admin"].get(change_url("limits/api")))
    assert form.textareas["value"] == '{\n  "retries": 2\n}'
    assert "data-json-editor" in form.html
    assert "reason" in form.fields and 'for="id_reason" class="required"' in form.html
    assert form.fields["expected_version"] == "1"
    assert int(form.fields["loaded_index"]) == 7
    assert "limits/" in form.by_id("schemas") and '"minimum": 0' in form.by_id("schemas")
    assert (f"{ENTRIES}{quote('limits/api')}/history/", "History") in form.links
    assert "/static/configstore/admin.js" in form.html


def test_the_static_files_of_the_admin_are_served(seeded, people):
    for path in ("/static/configstore/admin.js", "/static/admin/css/base.css"):
        response = people["admin"].get(path)
        assert response.status_code == 200, path
        assert b"".join(response.streaming_content)


@pytest.mark.parametrize(
    "changes, error",
    [
        ({"value": '{"retries": 3,}'}, "Not valid JSON"),
        ({"value": "NaN"}, "Not valid JSON"),
        ({"value": "  "}, "Enter a JSON value"),
        ({"reason": ""}, "This field is required"),
        ({"reason": "   "}, "This field is required"),
        ({"value": '{"retries": -1}'}, "at $.retries"),
        ({"value": '"x"'}, "fails the schema of 'limits/' at $"),
        ({"description": "d" * 10_001}, "at most 10000 characters"),
    ],
)
def test_a_save_with_bad_input_is_refused_with_the_input_kept_and_changes_nothing(
    seeded, people, changes, error
):
    form = page(people["admin"].get(change_url("limits/api")))
    before = replicated_state()
    data = form.form_data(**{"value": '{"retries": 3}', "reason": "more retries", **changes})
    again = page(people["admin"].post(change_url("limits/api"), data))
    assert any(error in e for e in again.errors), again.errors
    assert "Nothing was committed" in " ".join(again.errors)
    assert again.textareas["value"] == data["value"]
    assert replicated_state() == before


def test_a_value_over_the_size_limit_is_refused_on_the_value(seeded, people, settings, configure):
    configure(max_value_bytes=100)
    form = page(people["admin"].get(change_url("payments/timeout")))
    before = replicated_state()
    again = page(
        people["admin"].post(
            change_url("payments/timeout"), form.form_data(value='"' + "x" * 200 + '"', reason="r")
        )
    )
    assert any("over the limit of 100" in e for e in again.by_class("errorlist"))
    assert replicated_state() == before


def test_without_a_quorum_the_form_comes_back_with_the_input_and_nothing_commits(seeded, people):
    form = page(people["pay"].get(change_url("payments/timeout")))
    before = replicated_state()
    value = '{\n  "ms": 250,\n  "retry": false\n}'
    again = page(
        people["pay"].post(change_url("payments/timeout"), form.form_data(value=value, reason="r"))
    )
    failure = again.by_id("failure")
    assert "Nothing was committed: the cluster has no quorum" in failure
    assert "not submitted" in failure
    assert again.textareas["value"] == value
    assert again.fields["reason"] == "r"
    assert again.fields["expected_version"] == "2"
    assert replicated_state() == before


def test_a_save_from_a_stale_form_is_a_conflict_showing_who_changed_what(seeded, people, log):
    form = page(people["admin"].get(change_url("payments/timeout")))
    index = log.apply(
        payload(
            "put",
            key="payments/timeout",
            value={"ms": 200, "retry": True},
            actor="carol",
            reason="peak hours",
        )
    )
    before = replicated_state()
    mine = '{\n  "ms": 300,\n  "retry": true\n}'
    again = page(
        people["admin"].post(
            change_url("payments/timeout"), form.form_data(value=mine, reason="mine")
        )
    )
    conflict = again.by_id("conflict")
    assert "changed after you loaded it. Nothing was committed." in conflict
    assert "You loaded version 2; it is now version 3." in conflict
    detail = " ".join(again.by_class("cs-conflict-detail"))
    assert "carol" in detail and "peak hours" in detail and str(index) in detail
    diffs = again.by_class("cs-diff")
    assert '- "ms": 100,' in diffs[0] and '+ "ms": 200,' in diffs[0]  # what changed meanwhile
    assert '- "ms": 200,' in diffs[1] and '+ "ms": 300,' in diffs[1]  # what mine would change
    assert again.textareas["value"] == mine
    assert again.fields["expected_version"] == "3"  # saving again: a deliberate overwrite
    assert replicated_state() == before


def test_a_deleted_meanwhile_entry_is_a_conflict_too(seeded, people, log):
    form = page(people["admin"].get(change_url("shared/flag")))
    log.apply(payload("delete", key="shared/flag", actor="dave", reason="unused"))
    before = replicated_state()
    again = page(
        people["admin"].post(change_url("shared/flag"), form.form_data(value="false", reason="r"))
    )
    assert "it is now deleted" in again.by_id("conflict")
    assert "dave" in " ".join(again.by_class("cs-conflict-detail"))
    assert replicated_state() == before


def test_a_view_only_key_shows_a_read_only_page_without_delete(seeded, people):
    for who, key in (("pay", "shared/flag"), ("viewer", "payments/timeout")):
        view = page(people[who].get(change_url(key)))
        assert "value" not in view.textareas and "_save" not in view.buttons
        assert "You may view this entry but not change it." in view.text
        assert not [href for href, _ in view.links if href.endswith("/delete/")]
        before = replicated_state()
        data = {"value": "1", "reason": "r", "expected_version": "1", "loaded_index": "1"}
        assert people[who].post(change_url(key), data).status_code == 403
        assert people[who].get(f"{ENTRIES}{quote(key)}/delete/").status_code == 403
        assert people[who].post(f"{ENTRIES}{quote(key)}/delete/", data).status_code == 403
        assert replicated_state() == before
    assert people["viewer"].get(ENTRIES + "add/").status_code == 403


def test_an_editable_key_has_the_form_and_delete(seeded, people):
    form = page(people["pay"].get(change_url("payments/timeout")))
    assert "value" in form.textareas and "_save" in form.buttons
    assert form.href("Delete").endswith(f"{quote('payments/timeout')}/delete/")


def test_the_django_change_permission_edits_every_key_but_deletes_none(seeded, people):
    editor = client_for(staff("editor", "configstore.change_entry"))
    form = page(editor.get(change_url("other/secret")))
    assert "value" in form.textareas and "_save" in form.buttons
    assert not [href for href, _ in form.links if href.endswith("/delete/")]
    assert editor.get(f"{ENTRIES}{quote('other/secret')}/delete/").status_code == 403
    assert "other/secret" in page(editor.get(ENTRIES)).text  # change implies view


# -------------------------------------------------------------------------------- add


def test_add_is_create_only_and_refuses_an_existing_key_without_submitting(seeded, people):
    form = page(people["admin"].get(ENTRIES + "add/?key=payments/eu/limit"))
    assert form.fields["key"] == "payments/eu/limit" and form.fields["expected_version"] == "0"
    before = replicated_state()
    again = page(people["admin"].post(ENTRIES + "add/", form.form_data(value="4", reason="new")))
    assert "already exists" in again.by_id("conflict")
    assert again.href("Edit the existing entry").endswith(f"{quote('payments/eu/limit')}/change/")
    assert replicated_state() == before


@pytest.mark.parametrize(
    "who, key, error",
    [
        ("admin", "a//b", "invalid key"),
        ("admin", "/lead", "invalid key"),
        ("admin", "", "This field is required"),
        ("pay", "other/new", "You may not add keys there"),
        ("admin", "limits/new", "fails the schema"),
    ],
)
def test_add_with_a_bad_key_or_value_is_refused_on_its_field(seeded, people, who, key, error):
    form = page(people[who].get(ENTRIES + "add/"))
    before = replicated_state()
    again = page(
        people[who].post(ENTRIES + "add/", form.form_data(key=key, value='"v"', reason="r"))
    )
    assert any(error in e for e in again.by_class("errorlist")), again.errors
    assert replicated_state() == before


def test_add_shows_the_schemas_of_the_key_asked_for(seeded, people):
    form = page(people["admin"].get(ENTRIES + "add/?key=limits/new"))
    assert '"minimum": 0' in form.by_id("schemas")
    form = page(people["admin"].get(ENTRIES + "add/"))
    assert "shown once the key is known" in form.by_id("schemas")


# ---------------------------------------------------------------------- delete, history


def test_delete_needs_a_reason_and_without_quorum_commits_nothing(seeded, people):
    url = f"{ENTRIES}{quote('payments/timeout')}/delete/"
    confirm = page(people["pay"].get(url))
    assert '"ms": 100' in " ".join(confirm.by_class("cs-json"))
    assert confirm.fields["expected_version"] == "2"
    before = replicated_state()
    missing = page(people["pay"].post(url, confirm.form_data(reason="")))
    assert any("This field is required" in e for e in missing.by_class("errorlist"))
    refused = page(people["pay"].post(url, confirm.form_data(reason="gone")))
    assert "Nothing was committed: the cluster has no quorum" in refused.by_id("failure")
    assert refused.fields["reason"] == "gone"
    assert replicated_state() == before


def test_delete_from_a_stale_page_is_a_conflict(seeded, people, log):
    url = f"{ENTRIES}{quote('payments/timeout')}/delete/"
    confirm = page(people["pay"].get(url))
    log.apply(payload("put", key="payments/timeout", value=7, actor="erin", reason="hotfix"))
    before = replicated_state()
    refused = page(people["pay"].post(url, confirm.form_data(reason="gone")))
    assert "Deleting again deletes version 3." in refused.by_id("conflict")
    assert "erin" in " ".join(refused.by_class("cs-conflict-detail"))
    assert refused.fields["expected_version"] == "3"
    assert replicated_state() == before


def test_the_history_shows_each_value_with_who_why_and_a_diff(seeded, people, log):
    log.apply(payload("put", key="payments/timeout", value=7, expected_version=9, actor="x"))
    history = page(people["admin"].get(f"{ENTRIES}{quote('payments/timeout')}/history/"))
    items = history.by_class("cs-history-item")
    assert [item.split(":")[0] for item in items] == [
        "Log index 8",
        "Log index 2",
        "Log index 1",
    ]
    assert "rejected: version_conflict" in items[0]
    assert "bob" in items[1] and "slower" in items[1] and "changed, version 2" in items[1]
    assert "alice" in items[2] and "first" in items[2] and "created, version 1" in items[2]
    diffs = history.by_class("cs-diff")
    assert diffs[0].startswith("@@") and "-50" in diffs[0] and '+ "ms": 100,' in diffs[0]
    assert "+50" in diffs[1]
    reverts = [href for href, text in history.links if text == "Revert to this value"]
    assert len(reverts) == 1  # the first value; the current one is not offered


def test_revert_shows_the_diff_needs_a_reason_and_without_quorum_commits_nothing(seeded, people):
    history = page(people["pay"].get(f"{ENTRIES}{quote('payments/timeout')}/history/"))
    url = history.href("Revert to this value")
    revert = page(people["pay"].get(url))
    assert "+50" in revert.by_class("cs-diff")[0]
    assert revert.fields["expected_version"] == "2"
    before = replicated_state()
    missing = page(people["pay"].post(url, revert.form_data(reason="")))
    assert any("This field is required" in e for e in missing.by_class("errorlist"))
    refused = page(people["pay"].post(url, revert.form_data(reason="back to 50")))
    assert "Nothing was committed: the cluster has no quorum" in refused.by_id("failure")
    assert replicated_state() == before
    assert people["viewer"].get(url).status_code == 403


def test_the_history_of_a_deleted_key_stays_readable(seeded, people, log):
    log.apply(payload("delete", key="shared/flag"))
    response = people["admin"].get(change_url("shared/flag"))
    assert response.status_code == 302 and response["Location"].endswith("/history/")
    history = page(people["admin"].get(response["Location"]))
    assert "The key is deleted now." in history.text
    assert "deleted" in history.by_class("cs-history-item")[0]


# ------------------------------------------------------------------- the other admins


def test_the_audit_history_is_read_only(seeded, people):
    listing = page(people["admin"].get("/admin/configstore/history/"))
    assert "payments/timeout" in listing.text
    assert people["admin"].get("/admin/configstore/history/add/").status_code == 403
    first = History.objects.order_by("id").first().id
    row = page(people["admin"].get(f"/admin/configstore/history/{first}/change/"))
    assert "_save" not in row.buttons and "alice" in row.text
    before = replicated_state()
    delete = f"/admin/configstore/history/{first}/delete/"
    assert people["admin"].post(delete, {"post": "yes"}).status_code == 403
    assert replicated_state() == before


def test_the_history_list_finds_a_request_by_its_id(seeded, people, log):
    log.apply(payload("put", key="shared/flag", value=False), request_id="req-wanted")
    listing = page(people["admin"].get("/admin/configstore/history/?request_id=req-wanted"))
    assert "1 history" in listing.text
    assert [text for _, text in listing.links if text == "shared/flag"] == ["shared/flag"]


def test_the_history_list_shows_only_readable_keys(seeded, people):
    listing = page(people["pay"].get("/admin/configstore/history/"))
    assert "payments/timeout" in listing.text and "other/secret" not in listing.text


def test_schemas_are_written_through_the_services(seeded, people):
    url = f"/admin/configstore/schema/{quote('limits/')}/change/"
    form = page(people["admin"].get(url))
    assert '"minimum": 0' in form.textareas["schema"]
    before = replicated_state()
    bad = page(people["admin"].post(url, form.form_data(schema='{"type": "nonsense"}', reason="r")))
    assert any("not a valid JSON Schema" in e for e in bad.by_class("errorlist"))
    refused = page(
        people["admin"].post(url, form.form_data(schema='{"type": "object"}', reason="r"))
    )
    assert "no quorum" in refused.by_id("failure")
    assert replicated_state() == before
    assert people["pay"].get("/admin/configstore/schema/add/").status_code == 403


def identities() -> tuple:
    return (
        list(User.objects.order_by("username").values_list("username", "password", "is_active")),
        list(Group.objects.order_by("name").values_list("name", flat=True)),
        list(PrefixPermission.objects.order_by("prefix").values_list("group__name", "prefix")),
        AccessHistory.objects.count(),
    )


def test_identity_pages_commit_through_the_cluster_and_without_quorum_change_nothing(
    seeded, people
):
    before = identities()
    admin = people["admin"]
    added = admin.post(
        "/admin/auth/user/add/",
        {
            "username": "newbie",
            "usable_password": "true",
            "password1": "a-long-pw-123",
            "password2": "a-long-pw-123",
        },
        follow=True,
    )
    assert "Nothing was committed: the cluster has no quorum." in added.content.decode()
    group = admin.post(
        "/admin/auth/group/add/",
        {
            "name": "ops",
            "configstore_prefixes-TOTAL_FORMS": "1",
            "configstore_prefixes-INITIAL_FORMS": "0",
            "configstore_prefixes-0-prefix": "ops/",
            "configstore_prefixes-0-can_view": "on",
        },
        follow=True,
    )
    assert "Nothing was committed: the cluster has no quorum." in group.content.decode()
    pay = User.objects.get(username="pay")
    password = admin.post(
        f"/admin/auth/user/{pay.pk}/password/",
        {
            "password1": "another-pw-456",
            "password2": "another-pw-456",
            "usable_password": "true",
            "set_usable_password": "true",
        },
    )
    assert "Nothing was committed: the cluster has no quorum." in password.content.decode()
    deleted = admin.post(f"/admin/auth/user/{pay.pk}/delete/", {"post": "yes"}, follow=True)
    assert "Nothing was committed: the cluster has no quorum." in deleted.content.decode()
    assert identities() == before
    # Prefix permissions are edited on their group's page only.
    assert admin.get("/admin/configstore/prefixpermission/add/").status_code == 403


def test_only_access_managers_see_the_identity_pages(seeded, people):
    for path in (
        "/admin/auth/user/",
        "/admin/auth/group/",
        "/admin/configstore/apitoken/",
        "/admin/configstore/accesshistory/",
    ):
        assert people["admin"].get(path).status_code == 200, path
        assert people["viewer"].get(path).status_code == 403, path


def test_the_cluster_page_shows_every_node_and_the_index_links_it(
    seeded, people, settings, configure
):
    configure(peers=parse_peers(",".join(f"n{i}=redis://127.0.0.1:1/{i}" for i in (1, 2, 3))))
    index = page(people["admin"].get("/admin/"))
    assert index.href("Cluster status") == "/admin/cluster/"
    cluster = page(people["viewer"].get("/admin/cluster/"))
    assert "This node (n1) cannot reach a quorum" in cluster.by_id("quorum")
    for node in ("n1", "n2", "n3"):
        assert "no: no status published" in cluster.by_id(f"node-{node}")
    assert "Leader: none" in cluster.text


# ------------------------------------------------------------------------- pure parts


def test_value_diff_tells_absent_from_null():
    assert value_diff(None, 1, old_absent=True) == [
        DiffLine("hunk", "@@ -0,0 +1 @@"),
        DiffLine("added", "1"),
    ]
    assert value_diff(None, 1) == [
        DiffLine("hunk", "@@ -1 +1 @@"),
        DiffLine("removed", "null"),
        DiffLine("added", "1"),
    ]
    assert value_diff({"a": 1}, {"a": 1}) == []
    assert [d.kind for d in value_diff({"a": 1, "b": 2}, {"b": 2, "a": 3})] == [
        "hunk",
        "context",
        "removed",
        "added",
        "context",
        "context",
    ]


def test_preview_is_one_line_cut_at_the_limit():
    assert preview({"b": [1, 2], "a": "é"}) == '{"a": "é", "b": [1, 2]}'
    cut = preview("x" * 200, limit=10)
    assert cut == '"xxxxxxxx…' and len(cut) == 10
