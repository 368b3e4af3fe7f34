"""The admin's change lists at millions of rows: no COUNT(*) over every match, no deep
OFFSET, no SELECT DISTINCT over a column for a filter's choices.

- `BoundedPaginator` counts the matches exactly only up to EXACT_COUNT_LIMIT (one query
  that reads at most that many index entries); beyond, the count is PostgreSQL's estimate
  (the planner's row count for the same query: pg_class.reltuples for a whole table). Pages
  stop at MAX_PAGES (an OFFSET of at most MAX_PAGES * per page rows):
  further back, filter or search (or read the API, which pages by cursor). The entry and
  history lists show 50 rows a page: Django's admin renders a row in ~0.4 ms of CPU, which
  at 100 rows a page was most of a page's time.
- `ChoicesFilter`: a list filter whose choices are a fixed list (the operations the state
  machine records), not the distinct values of a million rows.
- ModelAdmins set `show_full_result_count = False` (no second COUNT of the whole table).
"""

from __future__ import annotations

import json
from functools import cached_property

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections

#: Up to this many matches, the admin counts them exactly (and cheaply).
EXACT_COUNT_LIMIT = 1_000
#: The deepest page the admin serves.
MAX_PAGES = 100


def estimated_count(queryset) -> int:
    """The planner's estimate of the rows `queryset` matches (EXPLAIN, no execution)."""
    sql, params = queryset.order_by().query.sql_with_params()
    with connections[queryset.db].cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        (plan,) = cursor.fetchone()
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class BoundedPaginator(Paginator):
    """A paginator whose count costs at most EXACT_COUNT_LIMIT rows and whose pages stop at
    MAX_PAGES. `exact` says whether `count` is exact or PostgreSQL's estimate.

    The count first reads the first page (and one row more): a list that fits on one page
    (a selective search or filter) is counted by that one query, and `first_rows` keeps the
    rows for BoundedChangeList, which shows them without reading them again."""

    exact = True
    first_rows: list | None = None

    @cached_property
    def count(self) -> int:
        first = list(self.object_list[: self.per_page + 1])
        if len(first) <= self.per_page:
            self.first_rows = first
            return len(first)
        found = self.object_list[: EXACT_COUNT_LIMIT + 1].count()
        if found <= EXACT_COUNT_LIMIT:
            return found
        self.exact = False
        return max(estimated_count(self.object_list), EXACT_COUNT_LIMIT + 1)

    @cached_property
    def num_pages(self) -> int:
        return min(super().num_pages, MAX_PAGES)


class BoundedChangeList(ChangeList):
    def get_results(self, request) -> None:
        super().get_results(request)
        if not self.multi_page and self.paginator.first_rows is not None:
            self.result_list = self.paginator.first_rows  # all there is: read once


class BoundedList:
    """A ModelAdmin mixin: the change list stays fast on a large table (see the module)."""

    paginator = BoundedPaginator
    show_full_result_count = False

    def get_changelist(self, request, **kwargs):
        return BoundedChangeList


class ChoicesFilter(admin.SimpleListFilter):
    """Filter `field` by one of `values` (a fixed list): no query builds the choices."""

    field: str
    values: tuple[str, ...] = ()

    def lookups(self, request, model_admin):
        return [(value, value) for value in self.values]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.field: self.value()})


def choices_filter(field: str, values: tuple[str, ...]) -> type[ChoicesFilter]:
    return type(
        f"{field.title()}Filter",
        (ChoicesFilter,),
        {"title": field, "parameter_name": field, "field": field, "values": values},
    )
