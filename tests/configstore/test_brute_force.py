"""Brute-force protection, in process: the token failure counter as a pure object, the API's
429 through DRF's test client, and the admin login's lockout (django-axes) through Django's
test client. The same on real processes, across nodes: test_brute_force_cluster.py."""

from __future__ import annotations

import threading

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from configstore.api import throttle
from tests.configstore.conftest import client_for, make_user, replicated_state

KEY = "/api/v1/keys/payments/timeout?consistency=stale"
LIMIT, WINDOW = 3, 60.0


@pytest.fixture(autouse=True)
def _fresh_counter():
    throttle.failures().clear()
    yield
    throttle.failures().clear()


# --- the counter, pure: time is an argument ---


def fail(counter: throttle.FailureCounter, address: str, times: int, now: float) -> None:
    for _ in range(times):
        counter.record_failure(address, now, window=WINDOW)


def test_an_address_is_locked_out_at_the_limit_for_the_rest_of_its_window():
    counter = throttle.FailureCounter()
    fail(counter, "a", LIMIT - 1, now=100.0)
    assert counter.locked_for("a", 100.0, limit=LIMIT, window=WINDOW) == 0
    fail(counter, "a", 1, now=110.0)
    assert counter.locked_for("a", 110.0, limit=LIMIT, window=WINDOW) == 50.0
    assert counter.locked_for("a", 159.0, limit=LIMIT, window=WINDOW) == 1.0
    assert counter.locked_for("b", 110.0, limit=LIMIT, window=WINDOW) == 0


def test_a_window_that_ends_forgets_its_failures():
    counter = throttle.FailureCounter()
    fail(counter, "a", LIMIT, now=0.0)
    assert counter.locked_for("a", WINDOW, limit=LIMIT, window=WINDOW) == 0
    assert len(counter) == 0
    fail(counter, "a", LIMIT - 1, now=WINDOW + 1)  # a new window: the count starts again
    assert counter.locked_for("a", WINDOW + 1, limit=LIMIT, window=WINDOW) == 0


def test_the_counter_holds_at_most_its_capacity_forgetting_the_least_recent_failure():
    counter = throttle.FailureCounter(capacity=3)
    for i, address in enumerate(["a", "b", "c"]):
        fail(counter, address, LIMIT, now=float(i))
    fail(counter, "a", 1, now=3.0)  # a fails again: b is now the least recent
    fail(counter, "d", 1, now=4.0)
    assert len(counter) == 3
    assert counter.locked_for("b", 5.0, limit=LIMIT, window=WINDOW) == 0
    assert counter.locked_for("a", 5.0, limit=LIMIT, window=WINDOW) > 0
    assert counter.locked_for("c", 5.0, limit=LIMIT, window=WINDOW) > 0


def test_failures_counted_from_many_threads_are_all_counted():
    counter = throttle.FailureCounter()
    threads = [threading.Thread(target=fail, args=(counter, "a", 500, 1.0)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.locked_for("a", 1.0, limit=4000, window=WINDOW) > 0
    assert counter.locked_for("a", 1.0, limit=4001, window=WINDOW) == 0


# --- the API, through DRF's test client (REMOTE_ADDR 127.0.0.1) ---


@pytest.fixture
def limits(settings, configure):
    configure(token_failure_limit=LIMIT)
    configure(token_failure_window=WINDOW)


def bad_token_client(**extra) -> APIClient:
    client = APIClient(**extra)
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    return client


def test_after_the_limit_every_token_from_the_address_is_429_even_a_valid_one(db, limits):
    admin = client_for(make_user("admin", superuser=True))
    bad = bad_token_client()
    for _ in range(LIMIT):
        assert bad.get(KEY).status_code == 401
    before = replicated_state()
    for client in (bad, admin):
        response = client.get(KEY)
        assert response.status_code == 429, response.content
        assert response.json()["error"] == "too_many_failures"
        assert "detail" in response.json()
        assert 1 <= int(response["Retry-After"]) <= WINDOW
    assert replicated_state() == before
    # Another address is not locked out, nor is a request without a token (anonymous: 401).
    other = client_for(make_user("other", superuser=True))
    assert other.get(KEY, REMOTE_ADDR="10.0.0.9").status_code in (200, 404)
    assert APIClient().get(KEY).status_code == 401


def test_malformed_and_inactive_tokens_count_as_failures(db, limits):
    user = make_user("gone")
    inactive = client_for(user)
    user.is_active = False
    user.save()
    for header in ("Token", "Token a b"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert client.get(KEY).status_code == 401
    assert inactive.get(KEY).status_code == 401
    assert inactive.get(KEY).status_code == 429


def test_a_limit_of_zero_turns_the_guard_off(db, settings, configure):
    configure(token_failure_limit=0)
    bad = bad_token_client()
    assert {bad.get(KEY).status_code for _ in range(20)} == {401}


def test_the_openapi_schema_documents_429_with_retry_after_wherever_it_documents_401(db):
    paths = APIClient().get("/api/schema/?format=json").json()["paths"]
    operations = [op for item in paths.values() for op in item.values() if "responses" in op]
    with_401 = [op for op in operations if "401" in op["responses"]]
    assert with_401
    for operation in with_401:
        too_many = operation["responses"]["429"]
        assert "Retry-After" in too_many["headers"], operation["operationId"]


# --- the admin login (django-axes, this node's database) ---

LOGIN = "/admin/login/?next=/admin/"


def login(password: str, address: str = "127.0.0.1"):
    return Client(REMOTE_ADDR=address).post(LOGIN, {"username": "alice", "password": password})


@pytest.fixture
def alice(db, settings):
    settings.AXES_FAILURE_LIMIT = 5
    return User.objects.create_superuser("alice", password="right-password")


def test_five_wrong_passwords_lock_the_pair_out_even_for_the_right_password(alice):
    for _ in range(4):
        assert login("wrong").status_code == 200  # the form again, with its error
    locked = login("wrong")
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) == 15 * 60
    assert "Too many failed sign-ins" in locked.content.decode()
    assert login("right-password").status_code == 429
    # Locked by (username, address): the user still signs in from another address, and a
    # forwarded header does not move the attacker to another address.
    assert login("right-password", address="10.0.0.7").status_code == 302
    forwarded = Client(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.0.0.7").post(
        LOGIN, {"username": "alice", "password": "right-password"}
    )
    assert forwarded.status_code == 429


def test_a_success_resets_the_count(alice):
    for _ in range(4):
        login("wrong")
    assert login("right-password").status_code == 302
    for _ in range(4):
        assert login("wrong").status_code == 200
