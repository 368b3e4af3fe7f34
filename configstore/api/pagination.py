"""Keyset (cursor) pagination of the API's lists: a page is the rows after the last one of
the page before, in the list's order, found through an index in one range scan, however
deep the page (no OFFSET, no COUNT).

The cursor (`next_cursor`, and `?cursor=` in the `next` link) is opaque to clients: the
base64url of the JSON array of the last row's sort key ([key] for entries and schemas,
[index, id] for the history). It is not signed: it only says where to continue a list
whose filters and permissions are applied again on every page, so a forged one shows
nothing a reader could not list anyway; a malformed one is a 400 (`invalid`, field
`cursor`), before any work is done. Each page is read in its own snapshot: a row present
from the first page to the last is returned exactly once, in order, whatever is written
between pages (entries: a key created behind the cursor is not listed, one deleted ahead is
not; history rows are only ever added at the end).

There is no total count (it would cost a scan of every match) and no `?page=`: a request
with `?page=` is a 400, so an old client that numbers pages fails at once instead of
reading page 1 again and again.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from django.db.models import Q, QuerySet
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from configstore import exceptions
from configstore.api.openapi import CURSOR_PATTERN, MAX_BIGINT

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_CURSOR = re.compile(CURSOR_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(frozen=True)
class Order:
    """A list's sort key: unique, ascending, served by an index ending in these fields.
    `types` are the JSON types of the cursor's values (str or int)."""

    fields: tuple[str, ...]
    types: tuple[type, ...]

    def after(self, values: list) -> Q:
        """Rows strictly after `values` in this order. For (a, b): a >= x AND (a > x OR
        b > y) -- the first term is the index's range condition, the rest filters only the
        rows that share x (PostgreSQL would not use an index for the plain OR)."""
        first, *rest = self.fields
        if not rest:
            return Q(**{f"{first}__gt": values[0]})
        (second,) = rest
        return Q(**{f"{first}__gte": values[0]}) & (
            Q(**{f"{first}__gt": values[0]}) | Q(**{f"{second}__gt": values[1]})
        )


BY_KEY = Order(("key",), (str,))
BY_INDEX = Order(("index", "id"), (int, int))


def _invalid(detail: str, field: str) -> exceptions.InvalidInput:
    return exceptions.InvalidInput(detail, field=field)


def encode_cursor(values: list) -> str:
    raw = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, order: Order) -> list:
    """The sort key a cursor holds, checked against the list's order; InvalidInput if it
    is not one this server could have made for this list."""
    bad = _invalid("cursor is not one this list gave (follow `next` as it is)", "cursor")
    if not _CURSOR.fullmatch(cursor):  # exactly the OpenAPI pattern: unpadded base64url
        raise bad
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(order.types):
        raise bad
    for value, kind in zip(values, order.types, strict=True):
        if type(value) is not kind:  # bool is an int subclass: compare the type itself
            raise bad
        if kind is int and not 0 <= value <= MAX_BIGINT:
            raise bad
        if kind is str and ("\x00" in value or len(value) > 257):
            raise bad
    return values


class KeysetPagination:
    """One page of a list in `order`: `?page_size=` (1-1000, 100 by default) and `?cursor=`,
    both strict."""

    def __init__(self, request, order: Order) -> None:
        self.request, self.order = request, order
        params = request.query_params
        if "page" in params:
            raise _invalid(
                "page numbers are not supported: follow `next` (or pass `next_cursor` as ?cursor=)",
                "page",
            )
        self.page_size = DEFAULT_PAGE_SIZE
        raw = params.get("page_size")
        if raw is not None:
            if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_PAGE_SIZE):
                raise _invalid(f"page_size must be from 1 to {MAX_PAGE_SIZE}", "page_size")
            self.page_size = int(raw)
        cursor = params.get("cursor")
        self.after = None if cursor is None else decode_cursor(cursor, order)
        self.next_cursor: str | None = None

    def page(self, rows: QuerySet) -> list:
        """This page's rows of `rows` (filtered, not yet ordered): one query of at most
        page_size + 1 rows (the extra one says whether there is a next page)."""
        if self.after is not None:
            rows = rows.filter(self.order.after(self.after))
        found = list(rows.order_by(*self.order.fields)[: self.page_size + 1])
        if len(found) > self.page_size:
            found = found[: self.page_size]
            last = found[-1]
            self.next_cursor = encode_cursor([getattr(last, f) for f in self.order.fields])
        return found

    def response(self, results: list) -> Response:
        """{"next": the URL of the next page or null, "next_cursor": its cursor or null,
        "results": [...]}."""
        url = None
        if self.next_cursor is not None:
            url = replace_query_param(self.request.build_absolute_uri(), "cursor", self.next_cursor)
        return Response({"next": url, "next_cursor": self.next_cursor, "results": results})
