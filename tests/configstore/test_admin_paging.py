"""The admin's change lists at scale (configstore.admin_paging): counts that read at most
EXACT_COUNT_LIMIT rows (the planner's estimate beyond), pages that stop at MAX_PAGES, list
filters without SELECT DISTINCT, all on the real test database."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.core.paginator import EmptyPage
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from configstore import admin_paging, selectors
from configstore.admin_paging import BoundedPaginator
from configstore.models import History
from tests.configstore.conftest import payload


@pytest.fixture
def history(log):
    for i in range(12):
        log.apply(payload("put", key=f"paging/k{i:02}", value=i, actor=f"actor{i % 3}"))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE configstore_history")
    return History.objects.order_by("-index", "-id")


def test_a_count_under_the_limit_is_exact(history, monkeypatch):
    monkeypatch.setattr(admin_paging, "EXACT_COUNT_LIMIT", 20)
    paginator = BoundedPaginator(history.filter(actor="actor1"), 2)
    assert (paginator.count, paginator.exact, paginator.num_pages) == (4, True, 2)


def test_a_count_over_the_limit_reads_no_more_rows_and_is_the_estimate(history, monkeypatch):
    monkeypatch.setattr(admin_paging, "EXACT_COUNT_LIMIT", 5)
    paginator = BoundedPaginator(history, 2)
    with CaptureQueriesContext(connection) as queries:
        count = paginator.count
    assert paginator.exact is False
    assert count == 12  # ANALYZEd: the estimate of a whole table is its row count
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 6" in sql for sql in counts), counts


def test_a_list_that_fits_on_one_page_is_read_once_and_not_counted(history):
    admin = User.objects.create_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/configstore/history/?q=paging/k0")
    page = response.content.decode()
    assert all(f"paging/k{i:02}" in page for i in range(10)) and "paging/k10" not in page
    reads = [q["sql"] for q in queries.captured_queries if "configstore_history" in q["sql"]]
    assert len(reads) == 1 and "COUNT(" not in reads[0].upper(), reads


def test_pages_stop_at_the_deepest_allowed(history, monkeypatch):
    monkeypatch.setattr(admin_paging, "MAX_PAGES", 3)
    paginator = BoundedPaginator(history, 2)
    assert paginator.num_pages == 3
    assert [row.key for row in paginator.page(3)] == ["paging/k07", "paging/k06"]
    with pytest.raises(EmptyPage):
        paginator.page(4)


def test_the_history_list_counts_and_filters_without_scanning_every_row(history):
    admin = User.objects.create_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    with CaptureQueriesContext(connection) as queries:
        response = client.get("/admin/configstore/history/?operation=put&q=paging/k0")
    assert response.status_code == 200
    assert "paging/k09" in response.content.decode()
    history_queries = [
        q["sql"] for q in queries.captured_queries if "configstore_history" in q["sql"]
    ]
    for sql in history_queries:
        assert "DISTINCT" not in sql.upper(), sql  # the filters' choices are a fixed list
        if "COUNT(" in sql.upper():
            assert re.search(r"LIMIT \d+", sql), sql  # every count is bounded
    filtered = client.get("/admin/configstore/history/?command=delete").content.decode()
    assert "paging/k0" not in filtered


def test_the_namespace_filter_walks_from_namespace_to_namespace(log, monkeypatch):
    keys = ("a/b/c", "a/b/d/e", "a/b0", "a/b.x/y", "a/f", "a/g/h", "a_z/q/r", "ab/c/d", "x/y")
    for key in keys:
        log.apply(payload("put", key=key, value=1))
    # Under a/: one index entry for each of a/b.x/, a/b/, a/b0, a/f, a/g/ -- and no more.
    monkeypatch.setattr(selectors, "NAMESPACE_WALK_STEPS", 5)
    assert selectors.entry_namespaces(prefix="a/") == ["a/b.x/", "a/b/", "a/g/"]
    monkeypatch.setattr(selectors, "NAMESPACE_WALK_STEPS", 4)
    assert selectors.entry_namespaces(prefix="a/") == ["a/b.x/", "a/b/"]
    assert selectors.entry_namespaces() == ["a/", "a_z/", "ab/", "x/"]
    assert selectors.entry_namespaces(prefix="a_") == ["a_z/"]  # "_" is no LIKE wildcard: no ab/
    assert selectors.entry_namespaces(restrict=["a/b/", "x"]) == ["a/", "x/"]
    assert selectors.entry_namespaces(prefix="a/", restrict=["a/b/d"]) == ["a/b/"]
    assert selectors.entry_namespaces(prefix="a/", restrict=["ab/"]) == []
    assert selectors.entry_namespaces(limit=2) == ["a/", "a_z/"]
