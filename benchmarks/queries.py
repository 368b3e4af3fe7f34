"""python -m benchmarks.queries [--sizes 10000:100000,100000:1000000] [--runs 15] [--explain]

Do the API's lists and history and the admin's change lists stay fast as the store grows?
For each size KEYS:HISTORY, a scratch database on a PostgreSQL server is created, migrated
(this checkout's migrations: its indexes), loaded with KEYS entries and HISTORY history rows
in plain SQL (generate_series, the indexes dropped during the load and built after it, as
a restore would), ANALYZEd, and then every query below is timed: each is a GET through
Django's test client against the real views (URL routing, authentication, permissions,
the query, serialization, rendering; no HTTP server, no network), `--runs` times after one
warm-up; printed: the p50 of the request's wall time, of this process's CPU time and of
its SQL statements' time (round trips included), the max wall time, the machine's load
average (a busy machine stretches the wall times, not the CPU times), and with --explain,
EXPLAIN (ANALYZE, BUFFERS) of the slowest SQL statement each request ran. The database is dropped at the end.

Server: CONFIGSTORE_BENCH_DATABASE_URL (a postgresql:// URL whose database part is ignored),
else DATABASE_URL's server, else the machine's at postgresql://postgres@127.0.0.1:5432/.
The role must be allowed to CREATE DATABASE.

API reads use ?consistency=stale (a linearizable read adds a barrier through the log: no
cluster runs here). Deep pages: the API pages by cursor (a cursor 90% of the way through the
list); a checkout from before keyset pagination (no configstore.api.pagination) is measured
with the page number at the same depth, so the same command gives the before figure when
run from an old checkout with this file: PYTHONPATH=OLD python benchmarks/queries.py.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import statistics
import sys
import time
from urllib.parse import urlsplit, urlunsplit

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/"
SCRATCH = f"configstore_bench_queries_{os.getpid()}"


def _server_url() -> str:
    url = os.environ.get("CONFIGSTORE_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return url or DEFAULT_SERVER


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _setup_django() -> None:
    """Django on the scratch database (no pool: the benchmark switches databases)."""
    os.environ["DATABASE_URL"] = _with_database(_server_url(), SCRATCH)
    os.environ.setdefault("CONFIGSTORE_SECRET", secrets.token_hex(32))
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_hex(32))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")
    # No cluster: a node whose peer cannot be reached (the stale reads need none).
    os.environ["CONFIGSTORE_PEERS"] = "n1=redis://127.0.0.1:1/0"
    import django
    from django.conf import settings

    settings.DATABASES["default"]["OPTIONS"].pop("pool", None)
    settings.CONFIGSTORE_ALLOW_LOCAL_IDENTITY_WRITES = True
    settings.ALLOWED_HOSTS = ["testserver", *settings.ALLOWED_HOSTS]
    django.setup()


def _admin_connection():
    import psycopg

    return psycopg.connect(_with_database(_server_url(), "postgres"), autocommit=True)


def _create_database() -> None:
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}"')
        conn.execute(f"CREATE DATABASE \"{SCRATCH}\" TEMPLATE template0 ENCODING 'UTF8'")


def _drop_database() -> None:
    from django.db import connections

    connections.close_all()
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{SCRATCH}" WITH (FORCE)')


#: Keys: 100 top namespaces of 10 sub-namespaces (ns07/sub3/key0001234). History: row i
#: touches key i % KEYS, by one of 50 actors, 1 in 100 rejected; slots hold 1 row, every
#: 10th 2 (a txn).
LOAD_ENTRIES = """
INSERT INTO configstore_entry (key, value, description, version, created_index,
    modified_index, updated_by, updated_at)
SELECT format('ns%%s/sub%%s/key%%s', lpad((i %% 100)::text, 2, '0'), (i / 100) %% 10,
              lpad(i::text, 7, '0')),
       jsonb_build_object('n', i, 'hash', md5(i::text)),
       'setting number ' || i, 10, i, %(history)s - %(keys)s + i,
       'user' || (i %% 50), now()
FROM generate_series(0, %(keys)s - 1) AS i
"""
LOAD_HISTORY = """
INSERT INTO configstore_history (index, request_id, command, operation, key, old_value,
    new_value, old_version, new_version, actor, reason, node, outcome, error, detail, at,
    idempotency_key)
SELECT i - i / 10, md5(i::text), 'put', 'put',
       format('ns%%s/sub%%s/key%%s', lpad((k %% 100)::text, 2, '0'), (k / 100) %% 10,
              lpad(k::text, 7, '0')),
       jsonb_build_object('n', i - 1), jsonb_build_object('n', i), 1, 2,
       'user' || (i %% 50), 'change ' || i || ' of ' || md5(k::text), 'n1',
       CASE WHEN i %% 100 = 0 THEN 'rejected' ELSE 'committed' END,
       CASE WHEN i %% 100 = 0 THEN 'version_conflict' ELSE '' END, '', now(), ''
FROM (SELECT i, i %% %(keys)s AS k FROM generate_series(1, %(history)s) AS i) AS rows
"""


def _load(keys: int, history: int) -> float:
    """Migrate the scratch database and load it; returns the seconds the load took."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    started = time.monotonic()
    with connection.cursor() as cursor:
        tables = ("configstore_entry", "configstore_history")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = ANY(%s) "
            "AND indexname NOT LIKE '%%pkey'",
            [list(tables)],
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute(LOAD_ENTRIES, {"keys": keys, "history": history})
        cursor.execute(LOAD_HISTORY, {"keys": keys, "history": history})
        cursor.execute(
            "UPDATE consensus_applied_state SET applied_index = %s", [history - history // 10]
        )
        cursor.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            cursor.execute(definition)
        for table in tables:
            cursor.execute(f"VACUUM ANALYZE {table}")
    return time.monotonic() - started


def _clients():
    from django.contrib.auth.models import User
    from django.test import Client
    from rest_framework.test import APIClient

    user = User.objects.create_user("bench", is_staff=True, is_superuser=True)
    api, admin = APIClient(), Client()
    api.force_authenticate(user)
    admin.force_login(user)
    return api, admin


def _deep(keys: int, history: int) -> dict[str, str]:
    """The query string of a page 90% of the way through each list: a cursor where the API
    pages by cursor, else the page number at that depth."""
    try:
        from configstore.api.pagination import encode_cursor
    except ImportError:
        return {
            "keys": f"page={keys * 9 // 10 // 100}",
            "history": f"page={history * 9 // 10 // 100}",
        }
    from configstore.models import Entry, History

    key = Entry.objects.order_by("key").values_list("key", flat=True)[keys * 9 // 10]
    row = History.objects.order_by("index", "id").values_list("index", "id")[history * 9 // 10]
    return {
        "keys": f"cursor={encode_cursor([key])}",
        "history": f"cursor={encode_cursor(list(row))}",
    }


def _queries(keys: int, history: int) -> list[tuple[str, str, str]]:
    deep = _deep(keys, history)
    some_key = f"ns42/sub{(keys // 2 // 100) % 10}/key{keys // 2 + 42:07}"
    request_id = hashlib.md5(str(history // 2).encode()).hexdigest()[:12]  # a row's, cut
    api = "/api/v1"
    stale = "consistency=stale"
    return [
        ("api", "key list, first page", f"{api}/keys/?{stale}"),
        ("api", "key list, deep page", f"{api}/keys/?{stale}&{deep['keys']}"),
        ("api", "key list under a prefix", f"{api}/keys/?{stale}&prefix=ns42/sub3/"),
        ("api", "history, first page", f"{api}/history/?{stale}"),
        ("api", "history, deep page", f"{api}/history/?{stale}&{deep['history']}"),
        ("api", "history of a key", f"{api}/history/?{stale}&key={some_key}"),
        ("api", "history under a prefix", f"{api}/history/?{stale}&prefix=ns42/sub3/"),
        ("api", "history by actor", f"{api}/history/?{stale}&actor=user7"),
        ("api", "history, rejected only", f"{api}/history/?{stale}&outcome=rejected"),
        ("admin", "entry list", "/admin/configstore/entry/"),
        ("admin", "entry search", f"/admin/configstore/entry/?q=key{keys // 2 + 42:07}"),
        ("admin", "entry list of a namespace", "/admin/configstore/entry/?prefix=ns42/"),
        ("admin", "history list", "/admin/configstore/history/"),
        ("admin", "history search, a key", f"/admin/configstore/history/?q={some_key}"),
        ("admin", "history search, request id", f"/admin/configstore/history/?q={request_id}"),
        ("admin", "history, one operation", "/admin/configstore/history/?operation=delete"),
    ]


def _time(client, url: str, runs: int) -> tuple[dict[str, list[float]], list[dict]]:
    """Per run, in ms: the request's wall time, this process's CPU time during it, and the
    time its SQL statements took (as Django's cursor measures them: round trip included)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url)  # warm-up (and a check)
    if response.status_code != 200:
        raise SystemExit(f"{url}: {response.status_code} {response.content[:300]!r}")
    times: dict[str, list[float]] = {"wall": [], "cpu": [], "sql": []}
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started, cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            if hasattr(response, "streaming_content"):
                b"".join(response.streaming_content)
            times["wall"].append((time.perf_counter() - started) * 1000)
            times["cpu"].append((time.process_time() - cpu) * 1000)
        times["sql"].append(sum(float(q["time"]) for q in captured.captured_queries) * 1000)
    return times, captured.captured_queries


def _explain(statements: list[dict]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the slowest statement of a request that reads the
    entries or the history (the sessions', users' and applied index's are not at stake)."""
    from django.db import connection

    reads = [q for q in statements if q["sql"].lstrip().upper().startswith(("SELECT", "WITH"))]
    ours = [q for q in reads if re.search(r"configstore_(entry|history)", q["sql"])]
    slowest = max(ours or reads, key=lambda q: float(q["time"]))
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"].replace("%", "%%"))
        plan = "\n".join(f"    {line}" for (line,) in cursor.fetchall())
    return f"  SQL: {slowest['sql'][:600]}\n{plan}"


def _measure(keys: int, history: int, runs: int, explain: bool) -> dict[str, float]:
    _create_database()
    try:
        seconds = _load(keys, history)
        print(
            f"\n== {keys:,} keys, {history:,} history rows (loaded and indexed in "
            f"{seconds:.0f} s) ==",
            flush=True,
        )
        api, admin = _clients()
        p50s = {}
        for side, name, url in _queries(keys, history):
            client = api if side == "api" else admin
            times, statements = _time(client, url, runs)
            p50 = {what: statistics.median(values) for what, values in times.items()}
            p50s[f"{side}: {name}"] = p50["wall"]
            print(
                f"{side:5} {name:28} p50 {p50['wall']:7.1f} ms (cpu {p50['cpu']:6.1f}, "
                f"sql {p50['sql']:6.1f})   max {max(times['wall']):7.1f} ms   "
                f"{len(statements)} statements   {url}",
                flush=True,
            )
            if explain:
                print(_explain(statements), flush=True)
        print(f"load average after: {' '.join(f'{n:.1f}' for n in os.getloadavg())}")
        return p50s
    finally:
        _drop_database()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000:100000,100000:1000000")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--explain", action="store_true")
    args = parser.parse_args(argv)
    sizes = [tuple(int(n) for n in size.split(":")) for size in args.sizes.split(",")]
    _setup_django()
    import configstore

    print(f"configstore from {os.path.dirname(configstore.__file__)}; server {_server_url()}")
    results = [_measure(keys, history, args.runs, args.explain) for keys, history in sizes]
    if len(results) > 1:
        print(
            f"\n== p50 at {sizes[-1][0]:,}/{sizes[-1][1]:,} over {sizes[0][0]:,}/{sizes[0][1]:,} =="
        )
        for name, p50 in results[-1].items():
            print(f"{name:36} {p50 / results[0][name]:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
