"""What checking a command's credential at apply costs the applier, at two sizes of the
replicated identities.

    ./dev python -m benchmarks.apply_auth [--slots 400] [--per-slot 1 16] [--users 10 10000]

Runs the real applier (consensus.storage.apply_chosen with the config store's state
machine) on a scratch database of the configured server (DATABASE_URL's server; the
database `configstore_bench_auth` is dropped and made again), in one process, no cluster:
slots of puts by a token-authenticated user (checked at apply) against the same slots with
no credential (not checked), interleaved in rounds, for each identity size (the number of
users, each with a group, a prefix permission and a token). Prints ms per slot and the
ratio; the difference is the check's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DBNAME = "configstore_bench_auth"


def _scratch_database() -> str:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    admin = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DBNAME}"')
    url = urlunsplit(urlsplit(base)._replace(path=f"/{DBNAME}"))
    env = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )
    return url


def _identities(cursor, users: int) -> None:
    """`users` users (u0 ... ), each in its own group with a prefix permission and a token;
    u0 also holds change_entry (it is the one that writes)."""
    cursor.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, "
        "is_staff, is_active, date_joined) SELECT '!', false, 'u' || i, '', '', '', false, true, "
        "now() FROM generate_series(0, %s - 1) AS i",
        [users],
    )
    cursor.execute(
        "INSERT INTO auth_group (name) SELECT 'g' || i FROM generate_series(0, %s - 1) AS i",
        [users],
    )
    cursor.execute(
        "INSERT INTO auth_user_groups (user_id, group_id) SELECT u.id, g.id FROM auth_user u "
        "JOIN auth_group g ON g.name = 'g' || substr(u.username, 2)"
    )
    cursor.execute(
        "INSERT INTO configstore_prefix_permission (group_id, prefix, can_view, can_change, "
        "can_delete) SELECT id, 'p' || id || '/', true, true, false FROM auth_group"
    )
    cursor.execute(
        "INSERT INTO configstore_api_token (token_id, user_id, name, key_hash, scope, prefix, "
        "expires_at, created_at, created_index) SELECT 't' || id, id, 't', md5(id::text) || "
        "md5(id::text), 'write', NULL, NULL, now(), 0 FROM auth_user"
    )
    cursor.execute(
        "INSERT INTO auth_user_user_permissions (user_id, permission_id) SELECT u.id, p.id "
        "FROM auth_user u, auth_permission p WHERE u.username = 'u0' "
        "AND p.codename = 'change_entry'"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=400, help="slots per measurement")
    parser.add_argument("--per-slot", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--users", type=int, nargs="+", default=[10, 10_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ["DATABASE_URL"] = _scratch_database()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "configstore.settings")
    import django

    django.setup()
    from django.db import connection

    from configstore.statemachine import apply_commands
    from consensus import storage
    from consensus.paxos import Command, Value

    token_id = None
    slot = 0
    print(f"{'users':>7} {'per slot':>8} {'unchecked ms/slot':>18} {'checked ms/slot':>16} ratio")
    total_users = 0
    for users in sorted(args.users):
        with connection.cursor() as cursor:
            _identities_more(cursor, total_users, users)
            cursor.execute(
                "SELECT token_id FROM configstore_api_token t JOIN auth_user u "
                "ON u.id = t.user_id WHERE u.username = 'u0'"
            )
            (token_id,) = cursor.fetchone()
        total_users = users
        for per_slot in args.per_slot:
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.rounds):
                for checked in (False, True):
                    values = []
                    for _ in range(args.slots):
                        slot += 1
                        commands = tuple(
                            Command(
                                f"r{slot}-{i}",
                                json.dumps(
                                    {
                                        "op": "put",
                                        "key": f"k{i}",
                                        "value": slot,
                                        "actor": "u0",
                                        "reason": "",
                                        "node": "n1",
                                        "at": "2026-12-03T10:00:00+00:00",
                                        **({"auth": f"token:{token_id}"} if checked else {}),
                                    }
                                ),
                            )
                            for i in range(per_slot)
                        )
                        values.append((slot, Value(commands)))
                    started = time.perf_counter()
                    for chunk in range(0, len(values), 16):  # as the applier takes them
                        storage.apply_chosen(apply_commands, "n1", values[chunk : chunk + 16])
                    times[checked].append((time.perf_counter() - started) * 1000 / args.slots)
            plain, checked_ms = (statistics.median(times[c]) for c in (False, True))
            print(
                f"{users:>7} {per_slot:>8} {plain:>18.3f} {checked_ms:>16.3f} "
                f"{checked_ms / plain:.2f}x"
            )
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM configstore_history WHERE error = 'forbidden'")
            assert cursor.fetchone() == (0,), "a checked write was refused: the set-up is wrong"
    return 0


def _identities_more(cursor, have: int, want: int) -> None:
    """Grow the identities from `have` users to `want` (the first call makes u0)."""
    if have == 0:
        _identities(cursor, want)
        return
    cursor.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email, "
        "is_staff, is_active, date_joined) SELECT '!', false, 'u' || i, '', '', '', false, true, "
        "now() FROM generate_series(%s, %s - 1) AS i",
        [have, want],
    )
    cursor.execute(
        "INSERT INTO configstore_api_token (token_id, user_id, name, key_hash, scope, prefix, "
        "expires_at, created_at, created_index) SELECT 't' || u.id, u.id, 't', "
        "md5(u.id::text) || md5(u.id::text), 'write', NULL, NULL, now(), 0 FROM auth_user u "
        "WHERE NOT EXISTS (SELECT 1 FROM configstore_api_token t WHERE t.user_id = u.id)"
    )


if __name__ == "__main__":
    sys.exit(main())
