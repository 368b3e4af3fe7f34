"""Reads of this node's applied state. Stale by themselves: a linearizable read calls
services.read_barrier() first.

`restrict` arguments are the key prefixes a reader may see (permissions.readable_prefixes):
None means every key, [] none.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction
from django.db.models import Q, QuerySet

from configstore.models import Entry, History, Schema
from configstore.validation import schema_targets
from consensus import api as consensus


@contextmanager
def snapshot() -> Iterator[None]:
    """Run the reads inside in one snapshot, so that the applied index read with them is
    the index of exactly that state (a watcher may continue from it without missing or
    repeating a change). Inside an open transaction, that transaction is the snapshot."""
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def applied_index() -> int:
    """This node's applied index (in a snapshot: the snapshot's)."""
    return consensus.applied_index()


#: An entry's fields as the API shows them (api.serializers.EntrySerializer).
ENTRY_FIELDS = (
    "key",
    "value",
    "description",
    "version",
    "created_index",
    "modified_index",
    "updated_by",
    "updated_at",
)
_ENTRY_WITH_INDEX = f"""
    SELECT a.applied_index, {", ".join(f"e.{name}" for name in ENTRY_FIELDS)}
    FROM (SELECT {consensus.APPLIED_INDEX_SQL} AS applied_index) a
    LEFT JOIN configstore_entry e ON e.key = %s
"""


def entry_with_index(key: str) -> tuple[int, Entry | None]:
    """(the applied index, the entry or None) in one statement, hence one snapshot: the
    read path of a single key, one round trip instead of a transaction of four."""
    with connection.cursor() as cursor:
        cursor.execute(_ENTRY_WITH_INDEX, [key])
        index, *fields = cursor.fetchone()
    if fields[0] is None:
        return index, None
    entry = Entry(**dict(zip(ENTRY_FIELDS, fields, strict=True)))
    # Django has jsonb come back as text, and decodes it in the field.
    entry.value = Entry._meta.get_field("value").from_db_value(entry.value, None, connection)
    return index, entry


def _restricted(restrict: list[str] | None, field: str = "key") -> Q:
    if restrict is None or "" in restrict:
        return Q()
    if not restrict:
        return Q(pk__in=[])
    q = Q()
    for prefix in restrict:
        q |= Q(**{f"{field}__startswith": prefix})
    return q


def entry_get(key: str) -> Entry | None:
    return Entry.objects.filter(key=key).first()


def entry_list(*, prefix: str = "", restrict: list[str] | None = None) -> QuerySet[Entry]:
    entries = Entry.objects.filter(_restricted(restrict))
    if prefix:
        entries = entries.filter(key__startswith=prefix)
    return entries.order_by("key")


#: One statement that walks the key index from namespace to namespace (a "loose index
#: scan"): from a key under %(n)s characters of prefix whose rest holds a '/', it jumps
#: past every key of that namespace (prefix + segment + '0': '0' follows '/' bytewise, the
#: keys' collation "C"), from a key without one to the next key. So it reads one index
#: entry per namespace and per key directly under the prefix, never every key below, and
#: at most %(steps)s of them.
_NAMESPACE_WALK = """
WITH RECURSIVE walk(key, step) AS (
    (SELECT key, 1 FROM configstore_entry
     WHERE key >= (%(within)s COLLATE "C") AND key LIKE %(like)s ORDER BY key LIMIT 1)
    UNION ALL
    SELECT (SELECT e.key FROM configstore_entry e
            WHERE e.key >= (CASE WHEN strpos(substr(w.key, %(n)s + 1), '/') > 0
                    THEN left(w.key, %(n)s + strpos(substr(w.key, %(n)s + 1), '/') - 1) || '0'
                    ELSE w.key || chr(1) END) COLLATE "C"
              AND e.key LIKE %(like)s
            ORDER BY e.key LIMIT 1),
           w.step + 1
    FROM walk w WHERE w.key IS NOT NULL AND w.step < %(steps)s
)
SELECT DISTINCT left(key, %(n)s + strpos(substr(key, %(n)s + 1), '/')) FROM walk
WHERE key IS NOT NULL AND strpos(substr(key, %(n)s + 1), '/') > 0
"""
#: The most index entries one namespace walk reads (keys directly under the prefix count).
NAMESPACE_WALK_STEPS = 1000


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def entry_namespaces(
    *, prefix: str = "", restrict: list[str] | None = None, limit: int = 200
) -> list[str]:
    """The namespaces directly under `prefix` ('' or ending in '/') that hold a key the reader
    may see: for prefix "a/" and keys a/b/c, a/d/e, a/f: ["a/b/", "a/d/"]. Sorted, at most
    `limit`. A walk of the key index (_NAMESPACE_WALK) under `prefix`, or under each readable
    prefix inside it: its cost is the number of namespaces and of keys directly under
    `prefix` (at most NAMESPACE_WALK_STEPS each walk), not the number of keys below."""
    if restrict is None or any(prefix.startswith(r) for r in restrict):
        walks = {prefix}  # every key under prefix is readable
    else:
        walks = {r for r in restrict if r.startswith(prefix)}
    found: set[str] = set()
    with connection.cursor() as cursor:
        for within in sorted(walks):
            cursor.execute(
                _NAMESPACE_WALK,
                {
                    "within": within,
                    "like": _like_prefix(within),
                    "n": len(prefix),
                    "steps": NAMESPACE_WALK_STEPS,
                },
            )
            found.update(name for (name,) in cursor.fetchall())
    return sorted(found)[:limit]


def key_history(key: str, *, schema: bool = False) -> QuerySet[History]:
    """The history of one entry (puts and deletes, txn ops included), or with `schema` of the
    schema attached at `key`; oldest first, rejected commands included."""
    operations = ("put_schema", "delete_schema") if schema else ("put", "delete")
    return History.objects.filter(key=key, operation__in=operations).order_by("index", "id")


def schemas_for_key(key: str) -> list[tuple[str, object]]:
    """(schema key, schema) of every schema that applies to `key`, in the applier's order."""
    targets = schema_targets(key)
    # Raw SQL: this runs before every write, and the ORM's compilation cost more than the
    # query.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT key, schema FROM configstore_schema WHERE key = ANY(%s)", [list(targets)]
        )
        rows = cursor.fetchall()
    decode = Schema._meta.get_field("schema").from_db_value
    found = {target: decode(schema, None, connection) for target, schema in rows}
    return [(target, found[target]) for target in targets if target in found]


def schema_get(key: str) -> Schema | None:
    return Schema.objects.filter(key=key).first()


def schema_list(*, prefix: str = "", restrict: list[str] | None = None) -> QuerySet[Schema]:
    found = Schema.objects.filter(_restricted(restrict))
    if prefix:
        found = found.filter(key__startswith=prefix)
    return found.order_by("key")


def history_list(
    *,
    key: str | None = None,
    prefix: str | None = None,
    since_index: int | None = None,
    actor: str | None = None,
    outcome: str | None = None,
    request_id: str | None = None,
    restrict: list[str] | None = None,
) -> QuerySet[History]:
    """History rows, oldest first (by index, then in the order they were applied)."""
    rows = History.objects.filter(_restricted(restrict))
    if key is not None:
        rows = rows.filter(key=key)
    if prefix:
        rows = rows.filter(key__startswith=prefix)
    if since_index is not None:
        rows = rows.filter(index__gt=since_index)
    if actor is not None:
        rows = rows.filter(actor=actor)
    if outcome is not None:
        rows = rows.filter(outcome=outcome)
    if request_id is not None:
        rows = rows.filter(request_id=request_id)
    return rows.order_by("index", "id")


def key_changed_since(key: str, index: int) -> tuple[bool, int]:
    """Whether a committed command changed `key` after `index` (a put or a delete), and the
    applied index of the same snapshot: one statement."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM configstore_history WHERE key = %s AND index > %s "
            f"AND outcome = 'committed'), {consensus.APPLIED_INDEX_SQL}",
            [key, index],
        )
        changed, applied = cursor.fetchone()
    return changed, applied


def touched_keys(after: int, upto: int, *, limit: int) -> set[str] | None:
    """The keys the commands of slots (after, upto] touched (committed or not), or None when
    there are more than `limit`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT key FROM configstore_history WHERE index > %s AND index <= %s "
            "LIMIT %s",
            [after, upto, limit + 1],
        )
        touched = {row[0] for row in cursor.fetchall()}
    return touched if len(touched) <= limit else None


def changes_since(
    *,
    index: int,
    prefix: str = "",
    restrict: list[str] | None = None,
    include_rejected: bool = False,
    limit: int = 1000,
) -> tuple[list[History], int]:
    """The history rows after `index` under `prefix`, whole slots only (a txn is never cut in
    two), at most about `limit` rows; and the index to continue from. Call in a snapshot."""
    rows = History.objects.filter(_restricted(restrict), index__gt=index)
    if prefix:
        rows = rows.filter(key__startswith=prefix)
    if not include_rejected:
        rows = rows.filter(outcome=History.COMMITTED)
    rows = rows.order_by("index", "id")
    found = list(rows[: limit + 1])
    if len(found) <= limit:
        return found, max(applied_index(), index)
    last = found[limit].index
    whole = [row for row in found if row.index < last]
    if not whole:  # one slot holds more than `limit` rows: return that slot whole
        whole = list(rows.filter(index=last))
        return whole, last
    return whole, whole[-1].index
