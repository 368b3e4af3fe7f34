"""The REST API over DRF's test client, where no consensus is involved: every kind of bad
input is refused with its status code and JSON error and leaves the state and the history
unchanged; reads of this node's state (stale reads, history, CSV, watches) work on states
the real applier produced; errors are JSON everywhere.

Writes that pass every check reach the quorum check and are answered 503 "no quorum" here
(no cluster runs): the tests of committed writes over HTTP run against a real cluster."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from configstore.models import History, PrefixPermission
from tests.configstore.conftest import Log, client_for, make_user, payload, replicated_state

MiB = 1024 * 1024
KEYS = "/api/v1/keys/"


@pytest.fixture
def seeded(log, users):
    """payments/timeout = 100 (v2), payments/retries = 3, other/flag = true, a schema
    requiring non-negative integers under payments/limits/, and one rejected put."""
    log.apply(payload("put", key="payments/timeout", value=50, actor="admin"))
    log.apply(payload("put", key="payments/timeout", value=100, actor="admin", reason="slower"))
    log.apply(payload("put", key="payments/retries", value=3, actor="pay"))
    log.apply(payload("put", key="other/flag", value=True, actor="admin"))
    log.apply(
        payload("put_schema", key="payments/limits/", schema={"type": "integer", "minimum": 0})
    )
    log.apply(payload("put", key="payments/retries", value=4, expected_version=9, actor="pay"))
    return log


def error_of(response) -> str:
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body["error"]


def send(client: APIClient, method: str, path: str, body=None, raw: str | None = None, **headers):
    kwargs = {}
    if raw is not None:
        kwargs = {"data": raw, "content_type": headers.pop("content_type", "application/json")}
    elif body is not None:
        kwargs = {"data": json.dumps(body), "content_type": "application/json"}
    return getattr(client, method)(path, **kwargs, headers=headers)


BAD_REQUESTS = [
    # (who, method, path, body, raw body, headers, status, error)
    ("admin", "put", KEYS + "a//b", {"value": 1}, None, {}, 400, "invalid_key"),
    ("admin", "put", KEYS + "a/", {"value": 1}, None, {}, 400, "invalid_key"),
    ("admin", "put", KEYS + "a%20b", {"value": 1}, None, {}, 400, "invalid_key"),
    ("admin", "put", KEYS + "x" * 257, {"value": 1}, None, {}, 400, "invalid_key"),
    ("admin", "put", KEYS + "a/../b", {"value": 1}, None, {}, 400, "invalid_key"),
    ("admin", "delete", KEYS + "a//b", None, None, {}, 400, "invalid_key"),
    ("admin", "put", KEYS + "k", None, '{"value": ', {}, 400, "parse_error"),
    ("admin", "put", KEYS + "k", None, '{"value": NaN}', {}, 400, "parse_error"),
    ("admin", "put", KEYS + "k", [1], None, {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {}, None, {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1, "valeu": 2}, None, {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": "nul\u0000"}, None, {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", None, '{"value": 1e400}', {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1, "description": "d" * 10_001}, None, {}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"If-Match": "abc"}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"If-Match": '"1", "2"'}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"If-None-Match": '"3"'}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"If-Match": '"1"', "If-None-Match": "*"}, 412, "precondition_failed"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"Idempotency-Key": "has space"}, 400, "invalid"),
    ("admin", "put", KEYS + "k", {"value": 1}, None, {"Idempotency-Key": "k" * 101}, 400, "invalid"),
    ("admin", "put", KEYS + "payments/limits/max", {"value": -1}, None, {}, 422, "schema_violation"),
    ("admin", "put", KEYS + "payments/limits/max", {"value": "ten"}, None, {}, 422, "schema_violation"),
    ("admin", "put", KEYS + "big", {"value": "x" * MiB}, None, {}, 413, "too_large"),
    ("admin", "post", "/api/v1/txn", {"ops": []}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": "a//", "value": 1}]}, None, {}, 400, "invalid_key"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "frob", "key": "a"}]}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": "a"}]}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "delete", "key": "a", "value": 1}]}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": "a", "value": 1}, {"op": "delete", "key": "a"}]}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "delete", "key": "a"}], "checks": [{"key": "b", "version": -1}]}, None, {}, 400, "invalid"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": "payments/limits/a", "value": -5}]}, None, {}, 422, "schema_violation"),
    ("admin", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": f"t{i}", "value": "x" * 600_000} for i in range(8)]}, None, {}, 413, "too_large"),
    ("admin", "put", "/api/v1/schemas/a//", {"schema": {}}, None, {}, 400, "invalid_key"),
    ("admin", "put", "/api/v1/schemas/a/", {"schema": {"type": "nonsense"}}, None, {}, 400, "invalid"),
    ("admin", "put", "/api/v1/schemas/payments/", {"schema": {"type": "string"}}, None, {"If-None-Match": "*"}, 400, "invalid"),
    ("anonymous", "put", KEYS + "k", {"value": 1}, None, {}, 401, "not_authenticated"),
    ("anonymous", "delete", KEYS + "payments/timeout", None, None, {}, 401, "not_authenticated"),
    ("anonymous", "post", "/api/v1/txn", {"ops": [{"op": "delete", "key": "a"}]}, None, {}, 401, "not_authenticated"),
    ("anonymous", "put", "/api/v1/schemas/a/", {"schema": {}}, None, {}, 401, "not_authenticated"),
    ("nobody", "put", KEYS + "k", {"value": 1}, None, {}, 403, "permission_denied"),
    ("reader", "put", KEYS + "payments/timeout", {"value": 1}, None, {}, 403, "permission_denied"),
    ("reader", "delete", KEYS + "payments/timeout", None, None, {}, 403, "permission_denied"),
    ("payments", "put", KEYS + "other/flag", {"value": False}, None, {}, 403, "permission_denied"),
    ("payments", "delete", KEYS + "other/flag", None, None, {}, 403, "permission_denied"),
    ("payments", "post", "/api/v1/txn", {"ops": [{"op": "put", "key": "payments/a", "value": 1}, {"op": "put", "key": "other/b", "value": 1}]}, None, {}, 403, "permission_denied"),
    ("payments", "put", "/api/v1/schemas/payments/", {"schema": {}}, None, {}, 403, "permission_denied"),
    ("admin", "patch", KEYS + "k", {"value": 1}, None, {}, 405, "method_not_allowed"),
    ("admin", "post", KEYS + "k", {"value": 1}, None, {}, 405, "method_not_allowed"),
    ("admin", "put", KEYS + "k", None, "value=1", {"content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("admin", "put", "/api/v1/nothing/here", {"value": 1}, None, {}, 404, "not_found"),
]  # fmt: skip


@pytest.mark.parametrize(
    "who, method, path, body, raw, headers, status, error",
    BAD_REQUESTS,
    ids=[f"{r[0]}-{r[1]}-{r[6]}-{r[7]}-{i}" for i, r in enumerate(BAD_REQUESTS)],
)
def test_bad_requests_are_refused_and_change_nothing(
    seeded, clients, who, method, path, body, raw, headers, status, error
):
    before = replicated_state()
    response = send(clients[who], method, path, body, raw, **dict(headers))
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    assert error_of(response) == error
    assert replicated_state() == before


def test_no_credentials_is_401_with_a_token_challenge(seeded, clients):
    response = clients["anonymous"].get(KEYS + "payments/timeout?consistency=stale")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    response = bad.get(KEYS + "payments/timeout?consistency=stale")
    assert (response.status_code, error_of(response)) == (401, "authentication_failed")


def test_a_token_names_its_own_user_and_an_inactive_users_token_is_refused(seeded, clients, users):
    # Each client's token authenticates as its own user: the reader may read, not write.
    assert clients["reader"].get(KEYS + "payments/timeout?consistency=stale").status_code == 200
    response = send(clients["reader"], "put", KEYS + "payments/timeout", {"value": 1})
    assert (response.status_code, error_of(response)) == (403, "permission_denied")
    users["reader"].is_active = False
    users["reader"].save()
    response = clients["reader"].get(KEYS + "payments/timeout?consistency=stale")
    assert (response.status_code, error_of(response)) == (401, "authentication_failed")
    assert response.json()["detail"] == "User inactive or deleted."


def test_a_schema_violation_names_the_failing_path(seeded, clients):
    response = send(clients["admin"], "put", KEYS + "payments/limits/max", {"value": -1})
    body = response.json()
    assert (body["path"], body["schema"], body["key"]) == (
        "$",
        "payments/limits/",
        "payments/limits/max",
    )


def test_a_body_over_the_upload_limit_is_413(seeded, clients, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = replicated_state()
    response = send(clients["admin"], "put", KEYS + "k", {"value": "x" * 2000})
    assert (response.status_code, error_of(response)) == (413, "too_large")
    assert replicated_state() == before


def test_the_value_size_limit_is_a_setting(seeded, clients, settings, configure):
    configure(max_value_bytes=100)
    response = send(clients["admin"], "put", KEYS + "k", {"value": "x" * 200})
    assert response.status_code == 413
    assert response.json()["limit"] == 100


def test_a_session_write_without_a_csrf_token_is_refused(seeded, users):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(users["admin"])
    before = replicated_state()
    response = send(client, "put", KEYS + "k", {"value": 1})
    assert (response.status_code, error_of(response)) == (403, "permission_denied")
    assert "CSRF" in response.json()["detail"]
    assert replicated_state() == before


def test_a_valid_write_without_quorum_is_503_with_retry_after_and_request_id(seeded, clients):
    before = replicated_state()
    response = send(
        clients["payments"], "put", KEYS + "payments/timeout", {"value": 1}, **{"If-Match": '"2"'}
    )
    assert (response.status_code, error_of(response)) == (503, "no_quorum")
    assert response["Retry-After"] == "1"
    assert response.json()["request_id"] == response["X-Configstore-Request-Id"]
    response = send(
        clients["payments"], "delete", KEYS + "payments/retries", **{"Idempotency-Key": "d-1"}
    )
    assert response.status_code == 503
    # Each submission has its own request id; the Idempotency-Key is not one.
    assert response.json()["request_id"] == response["X-Configstore-Request-Id"] != "d-1"
    assert replicated_state() == before


# -------------------------------------------------------------------------- reads


def test_a_stale_read_returns_the_entry_with_its_etag_and_index(seeded, clients):
    response = clients["reader"].get(KEYS + "payments/timeout?consistency=stale")
    assert response.status_code == 200
    body = response.json()
    assert (body["key"], body["value"], body["version"]) == ("payments/timeout", 100, 2)
    assert (body["created_index"], body["modified_index"], body["updated_by"]) == (1, 2, "admin")
    assert response["ETag"] == '"2"'
    assert response["X-Configstore-Index"] == "6"


def test_if_none_match_on_the_current_version_is_304(seeded, clients):
    response = clients["reader"].get(
        KEYS + "payments/timeout?consistency=stale", headers={"If-None-Match": '"2"'}
    )
    assert (response.status_code, response["ETag"]) == (304, '"2"')
    response = clients["reader"].get(
        KEYS + "payments/timeout?consistency=stale", headers={"If-None-Match": '"1"'}
    )
    assert response.status_code == 200


def test_an_absent_key_is_404(seeded, clients):
    response = clients["reader"].get(KEYS + "payments/nope?consistency=stale")
    assert (response.status_code, error_of(response)) == (404, "not_found")
    assert response["X-Configstore-Index"] == "6"


def test_a_linearizable_read_without_quorum_is_503(seeded, clients):
    for path in (KEYS + "payments/timeout", KEYS, "/api/v1/history/"):
        response = clients["reader"].get(path)
        assert (response.status_code, error_of(response)) == (503, "no_quorum"), path
        assert response["Retry-After"] == "1"


@pytest.mark.parametrize(
    "query",
    [
        "consistency=eventual",
        "wait_index=-1",
        "wait_index=x",
        "wait_index=1&timeout=301",
        "wait_index=1&timeout=soon",
    ],
)
def test_bad_read_parameters_are_400(seeded, clients, query):
    response = clients["reader"].get(f"{KEYS}payments/timeout?{query}")
    assert (response.status_code, error_of(response)) == (400, "invalid")


def test_the_list_filters_by_prefix_and_paginates(seeded, clients):
    response = clients["reader"].get(KEYS + "?prefix=payments/&consistency=stale&page_size=1")
    body = response.json()
    assert set(body) == {"next", "next_cursor", "results"}  # no count: it would cost a scan
    assert [e["key"] for e in body["results"]] == ["payments/retries"]
    # The next link keeps every filter of this page (a link that dropped the prefix would
    # list every key on page 2) and adds the cursor.
    query = parse_qs(urlsplit(body["next"]).query)
    assert {k: v for k, v in query.items() if k != "consistency"} == {
        "cursor": [body["next_cursor"]],
        "page_size": ["1"],
        "prefix": ["payments/"],
    }
    assert response["X-Configstore-Index"] == "6"
    page2 = clients["reader"].get(body["next"]).json()
    assert [e["key"] for e in page2["results"]] == ["payments/timeout"]
    assert (page2["next"], page2["next_cursor"]) == (None, None)
    everything = clients["reader"].get(KEYS + "?consistency=stale").json()
    assert [e["key"] for e in everything["results"]] == [
        "other/flag",
        "payments/retries",
        "payments/timeout",
    ]
    assert everything["next"] is None
    assert clients["reader"].get(KEYS + "?prefix=/bad&consistency=stale").status_code == 400


def _all_pages(client, url: str, between=lambda: None) -> list[dict]:
    rows = []
    while url:
        body = client.get(url).json()
        rows += body["results"]
        url = body["next"]
        between()
    return rows


def test_paging_returns_every_row_once_in_order_while_writes_happen_between_pages(
    log, users, clients
):
    for i in range(25):
        log.apply(payload("put", key=f"page/k{i:02}", value=i))
    listed_keys = [f"page/k{i:02}" for i in range(25)]
    written = []

    def write():  # after each page: a key behind the cursor, one ahead, a change of k00
        n = len(written)
        for key in (f"page/a{n:02}", f"page/z{n:02}", "page/k00"):
            log.apply(payload("put", key=key, value=n))
        written.append(n)

    reader = clients["reader"]
    url = KEYS + "?prefix=page/&page_size=4&consistency=stale"
    listed = [e["key"] for e in _all_pages(reader, url, write)]
    # Every key present from the first page to the last once, in order; keys created ahead
    # of the cursor are listed when it gets there (all but the last write's, made after the
    # last page), keys created behind it are not.
    zs = [f"page/z{n:02}" for n in written[:-1]]
    assert listed == listed_keys + zs
    assert len(written) == 8  # 25 k keys and 7 z keys, 4 a page

    written.clear()
    url = "/api/v1/history/?prefix=page/&page_size=7&consistency=stale"
    rows = [(r["index"], r["key"]) for r in _all_pages(reader, url, write)]
    # The history only grows at its end: each page continues where the last one stopped,
    # and every row written before the last page is listed, once, in log order.
    everything = list(
        History.objects.filter(key__startswith="page/")
        .order_by("index", "id")
        .values_list("index", "key")
    )
    assert rows == everything[:-3]  # the last write came after the last page
    assert len(written) > 6


@pytest.mark.parametrize(
    "query",
    [
        "cursor=",
        "cursor=not-base64!",
        "cursor=WyJhIl0",  # ["a"]: a key list's cursor, on the history
        "cursor=WzEsMl0x",
        "cursor=WzEsIjIiXQ",  # [1,"2"]
        "cursor=WzEsLTJd",  # [1,-2]
        "cursor=W3RydWUsMl0",  # [true,2]
        "cursor=WzEsOTIyMzM3MjAzNjg1NDc3NTgwOF0",  # [1, 2**63]
        "cursor=e30",  # {}
        "page=2",
        "page_size=0",
        "page_size=1001",
    ],
)
def test_a_bad_cursor_or_page_is_400_and_changes_nothing(seeded, clients, query):
    before = replicated_state()
    response = clients["reader"].get(f"/api/v1/history/?consistency=stale&{query}")
    assert (response.status_code, error_of(response)) == (400, "invalid")
    assert replicated_state() == before


def test_a_key_lists_cursor_is_refused_by_the_key_list_only_when_malformed(seeded, clients):
    reader = clients["reader"]
    for query in ("cursor=WzEsMl0", "cursor=WyJhXHUwMDAwIl0", "page=1"):  # [1,2], ["a\0"]
        response = reader.get(f"{KEYS}?consistency=stale&{query}")
        assert (response.status_code, error_of(response)) == (400, "invalid"), query
        response = reader.get(f"/api/v1/schemas/?consistency=stale&{query}")
        assert (response.status_code, error_of(response)) == (400, "invalid"), query
    after_other = reader.get(f"{KEYS}?consistency=stale&cursor=WyJvdGhlci9mbGFnIl0").json()
    assert [e["key"] for e in after_other["results"]] == ["payments/retries", "payments/timeout"]


@pytest.fixture
def payments_only(db) -> APIClient:
    """A user whose only right is its group's: read (not write) under payments/."""
    group = Group.objects.create(name="payments-readers")
    PrefixPermission.objects.create(group=group, prefix="payments/", can_view=True)
    return client_for(make_user("pr", groups=[group]))


def test_prefix_permissions_limit_what_a_user_reads(seeded, payments_only):
    listing = payments_only.get(KEYS + "?consistency=stale").json()
    assert [e["key"] for e in listing["results"]] == ["payments/retries", "payments/timeout"]
    assert payments_only.get(KEYS + "payments/timeout?consistency=stale").status_code == 200
    response = payments_only.get(KEYS + "other/flag?consistency=stale")
    assert (response.status_code, error_of(response)) == (403, "permission_denied")
    history = payments_only.get("/api/v1/history/?consistency=stale").json()
    assert {row["key"] for row in history["results"]} == {
        "payments/timeout",
        "payments/retries",
        "payments/limits/",
    }
    assert payments_only.get("/api/v1/history/?key=other/flag&consistency=stale").status_code == 403
    response = send(payments_only, "put", KEYS + "payments/timeout", {"value": 1})
    assert response.status_code == 403


def test_a_user_without_any_read_right_is_refused(seeded, clients):
    for path in (
        KEYS + "?consistency=stale",
        "/api/v1/history/?consistency=stale",
        "/api/v1/watch/?timeout=0",
        "/api/v1/cluster/",
    ):
        response = clients["nobody"].get(path)
        assert (response.status_code, error_of(response)) == (403, "permission_denied"), path


def test_anonymous_reads_when_the_setting_allows_them(seeded, clients, settings, configure):
    configure(anonymous_reads=True)
    anonymous = clients["anonymous"]
    assert anonymous.get(KEYS + "other/flag?consistency=stale").json()["value"] is True
    assert len(anonymous.get("/api/v1/history/?consistency=stale").json()["results"]) == 6
    response = send(anonymous, "put", KEYS + "k", {"value": 1})
    assert response.status_code == 401


# ------------------------------------------------------------------------ history


def test_the_history_is_oldest_first_and_filtered(seeded, clients):
    reader = clients["reader"]
    rows = reader.get("/api/v1/history/?consistency=stale").json()["results"]
    assert [r["index"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert (
        rows[1]["old_value"] == 50 and rows[1]["new_value"] == 100 and rows[1]["reason"] == "slower"
    )

    def keys(query):
        body = reader.get(f"/api/v1/history/?consistency=stale&{query}").json()
        return [(r["index"], r["key"]) for r in body["results"]]

    assert keys("key=payments/timeout") == [(1, "payments/timeout"), (2, "payments/timeout")]
    assert keys("prefix=payments/") == [
        (1, "payments/timeout"),
        (2, "payments/timeout"),
        (3, "payments/retries"),
        (5, "payments/limits/"),
        (6, "payments/retries"),
    ]
    assert keys("since_index=4") == [(5, "payments/limits/"), (6, "payments/retries")]
    assert keys("actor=pay") == [(3, "payments/retries"), (6, "payments/retries")]
    assert keys("outcome=rejected") == [(6, "payments/retries")]
    for bad in ("since_index=x", "outcome=maybe", "key=a//b", "prefix=//"):
        assert reader.get(f"/api/v1/history/?consistency=stale&{bad}").status_code == 400, bad


def test_the_history_as_csv(seeded, clients):
    response = clients["reader"].get(
        "/api/v1/history/?consistency=stale&format=csv&prefix=payments/timeout"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["index"], r["old_value"], r["new_value"], r["outcome"]) for r in table] == [
        ("1", "", "50", "committed"),
        ("2", "50", "100", "committed"),
    ]
    assert response["X-Configstore-Index"] == "6"


def test_errors_are_json_even_when_csv_was_asked_for(seeded, clients):
    response = clients["reader"].get("/api/v1/history/?format=csv&consistency=stale&since_index=x")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert error_of(response) == "invalid"


# -------------------------------------------------------------------------- watch


def test_a_watch_from_an_old_index_returns_the_changes_at_once(seeded, clients):
    body = clients["reader"].get("/api/v1/watch/?prefix=payments/&since_index=2").json()
    assert [(e["index"], e["key"]) for e in body["events"]] == [
        (3, "payments/retries"),
        (5, "payments/limits/"),
    ]
    assert body["index"] == 6
    with_rejected = clients["reader"].get("/api/v1/watch/?since_index=5&include_rejected=1").json()
    assert [(e["index"], e["outcome"]) for e in with_rejected["events"]] == [(6, "rejected")]


def test_a_watch_that_times_out_returns_no_events_and_the_current_index(seeded, clients):
    started = time.monotonic()
    body = clients["reader"].get("/api/v1/watch/?since_index=6&timeout=0.3").json()
    assert time.monotonic() - started >= 0.3
    assert body == {"index": 6, "events": []}


@pytest.mark.parametrize(
    "query", ["timeout=-1", "timeout=301", "since_index=-3", "include_rejected=maybe", "prefix=//"]
)
def test_bad_watch_parameters_are_400(seeded, clients, query):
    assert clients["reader"].get(f"/api/v1/watch/?{query}").status_code == 400


@pytest.fixture
def committed(transactional_db, users, clients) -> Log:
    """The applier on committed transactions, so its NOTIFY reaches the watchers."""
    log = Log()
    log.apply(payload("put", key="w/a", value=1))
    return log


def _in_background(fn):
    result = {}

    def run():
        result["response"] = fn()
        result["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_long_poll_on_a_key_returns_as_soon_as_it_changes(committed, clients):
    thread, result = _in_background(
        lambda: clients["reader"].get(KEYS + "w/a?wait_index=1&timeout=20")
    )
    time.sleep(0.3)
    assert thread.is_alive()  # nothing changed yet: still waiting
    committed.apply(payload("put", key="w/other", value=1))  # another key: keeps waiting
    time.sleep(0.2)
    assert thread.is_alive()
    committed_at = time.monotonic()
    committed.apply(payload("put", key="w/a", value=2))
    thread.join(10)
    assert result["response"].status_code == 200
    assert result["response"].json()["value"] == 2
    assert result["at"] - committed_at < 0.5


def test_a_long_poll_sees_a_delete(committed, clients):
    thread, result = _in_background(
        lambda: clients["reader"].get(KEYS + "w/a?wait_index=1&timeout=20")
    )
    time.sleep(0.2)
    committed.apply(payload("delete", key="w/a"))
    thread.join(10)
    assert result["response"].status_code == 404


def test_a_long_poll_times_out_with_the_current_entry(committed, clients):
    response = clients["reader"].get(KEYS + "w/a?wait_index=1&timeout=0.2")
    assert (response.status_code, response.json()["version"]) == (200, 1)
    response = clients["reader"].get(KEYS + "w/a?wait_index=0&timeout=20")  # already newer
    assert response.json()["modified_index"] == 1


def test_a_watch_wakes_on_a_commit_under_its_prefix(committed, clients):
    thread, result = _in_background(
        lambda: clients["reader"].get("/api/v1/watch/?prefix=w/&since_index=1&timeout=20")
    )
    time.sleep(0.2)
    committed.apply(payload("put", key="elsewhere", value=1))
    time.sleep(0.2)
    assert thread.is_alive()
    committed_at = time.monotonic()
    slot = committed.apply(
        payload(
            "txn",
            ops=[{"op": "put", "key": "w/b", "value": 1}, {"op": "put", "key": "w/c", "value": 2}],
        )
    )
    thread.join(10)
    body = result["response"].json()
    assert [(e["index"], e["key"]) for e in body["events"]] == [(slot, "w/b"), (slot, "w/c")]
    assert body["index"] == slot
    assert result["at"] - committed_at < 0.5


def test_the_outcome_of_a_request_can_be_looked_up(committed, clients):
    committed.apply(payload("delete", key="gone"), request_id="look-me-up")
    body = clients["reader"].get("/api/v1/requests/look-me-up").json()
    assert (body["outcome"], body["index"], body["result"]["error"]) == ("rejected", 2, "not_found")
    response = clients["reader"].get("/api/v1/requests/never")
    assert (response.status_code, error_of(response)) == (404, "not_found")
    assert clients["anonymous"].get("/api/v1/requests/look-me-up").status_code == 401
    assert clients["nobody"].get("/api/v1/requests/look-me-up").status_code == 403


# ------------------------------------------------------------------ schemas, cluster


def test_schemas_are_readable(seeded, clients):
    body = clients["reader"].get("/api/v1/schemas/payments/limits/?consistency=stale").json()
    assert (body["key"], body["schema"], body["version"]) == (
        "payments/limits/",
        {"type": "integer", "minimum": 0},
        1,
    )
    listing = clients["reader"].get("/api/v1/schemas/?consistency=stale").json()
    assert [s["key"] for s in listing["results"]] == ["payments/limits/"]
    response = clients["reader"].get("/api/v1/schemas/none/?consistency=stale")
    assert (response.status_code, error_of(response)) == (404, "not_found")


def test_healthz_is_503_without_quorum(db):
    response = APIClient().get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (body["node_id"], body["quorum"], body["database"]) == ("n1", False, True)


def test_the_cluster_view_lists_every_node(seeded, clients):
    response = clients["reader"].get("/api/v1/cluster/")
    body = response.json()
    assert response.status_code == 200
    assert body["node_id"] == "n1" and body["applied_index"] == 6
    assert [(n["node_id"], n["reachable"]) for n in body["nodes"]] == [("n1", False)]
    assert clients["anonymous"].get("/api/v1/cluster/").status_code == 401


def test_the_openapi_schema_and_docs_are_served(db):
    schema = APIClient().get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = json.loads(schema.content)["paths"]
    assert {
        "/api/v1/keys/",
        "/api/v1/keys/{key}",
        "/api/v1/txn",
        "/api/v1/history/",
        "/api/v1/watch/",
        "/api/v1/cluster/",
    } <= set(paths)
    docs = APIClient().get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_an_unknown_api_path_is_a_json_404(db):
    response = APIClient().get("/api/v2/keys/")
    assert (response.status_code, error_of(response)) == (404, "not_found")


def test_not_acceptable_is_json(seeded, clients):
    response = clients["reader"].get(KEYS + "?consistency=stale", headers={"Accept": "text/html"})
    assert (response.status_code, error_of(response)) == (406, "not_acceptable")
