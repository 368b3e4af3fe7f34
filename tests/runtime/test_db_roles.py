"""Least privilege in a node's database (consensus/dbroles.py): the node's processes connect
as the app role, which may read and write rows but only append to the audit history; the
owner alone migrates. On a real 3-node cluster: the app role's attempts to TRUNCATE, UPDATE
or DELETE history fail with a permission error while the cluster commits writes and records
their history."""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests
from psycopg import sql

from consensus.dbroles import (
    APP_ROLE,
    APPEND_ONLY_TABLES,
    AppRoleError,
    existing_tables,
    grant_app_role,
)

pytestmark = pytest.mark.cluster

#: Statements the app role may not run on an append-only table (any column will do for SET).
FORBIDDEN_ON_HISTORY = (
    "TRUNCATE {table}",
    "UPDATE {table} SET id = id",
    "DELETE FROM {table}",
)


def refused(conn: psycopg.Connection, statement: sql.Composable) -> bool:
    """Whether `statement` fails for lack of privilege (rolled back either way)."""
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)
    return result


def test_the_node_processes_can_only_append_history_while_the_cluster_commits(make_cluster):
    cluster = make_cluster(web=True)
    cluster.ensure_admin()
    key = f"dbrole/{secrets.token_hex(4)}"
    written = requests.put(
        f"{cluster.web_url('n2')}/api/v1/keys/{key}",
        json={"value": {"least": "privilege"}},
        headers={"Authorization": f"Token {cluster.api_token}"},
        timeout=30,
    )
    assert written.status_code == 201, written.text
    history = "SELECT count(*) FROM configstore_history WHERE key = %s"
    for node in cluster.ids:  # the appliers, as the app role, inserted the history row
        wait_for(lambda n=node: cluster.query(n, history, [key])[0][0] == 1, what=f"{node}")

    for node in cluster.ids:  # the workers and web servers connect as the app role only
        users = cluster.query(
            node,
            "SELECT DISTINCT usename FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'",
        )
        assert users == [(APP_ROLE,)], f"{node}'s database is used by {users}"

    with psycopg.connect(cluster.app_database_url("n1"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
        tables = existing_tables(conn, APPEND_ONLY_TABLES)
        assert "configstore_history" in tables
        for table in tables:
            for statement in FORBIDDEN_ON_HISTORY:
                query = sql.SQL(statement).format(table=sql.Identifier(table))
                assert refused(conn, query), f"the app role may run {statement} on {table}"
        # No TRUNCATE on any table, no schema change: those are the owner's.
        assert refused(conn, sql.SQL("TRUNCATE consensus_chosen_slot"))
        assert refused(conn, sql.SQL("DROP TABLE configstore_history"))
        assert refused(conn, sql.SQL("CREATE TABLE configstore_rogue (id int)"))

        # SELECT and INSERT work: a copy of the row, rolled back so every node's history
        # stays the replicated one.
        columns = sql.SQL(", ").join(
            sql.Identifier(name)
            for (name,) in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name = 'configstore_history' AND column_name <> 'id'"
            )
        )
        with conn.transaction(force_rollback=True):
            copied = conn.execute(
                sql.SQL(
                    "INSERT INTO configstore_history ({c}) SELECT {c} FROM configstore_history"
                    " WHERE key = %s RETURNING id"
                ).format(c=columns),
                [key],
            ).fetchall()
            assert len(copied) == 1
            assert conn.execute(history, [key]).fetchone() == (2,)
    assert [cluster.query(n, history, [key])[0][0] for n in cluster.ids] == [1, 1, 1]


@pytest.fixture
def scratch_database(servers):
    """A new, empty database on the session's PostgreSQL (as its owner), dropped afterwards."""
    template, _ = servers
    owner_url = template.format(node="dbrole_grant", index=0)
    parts = urlsplit(owner_url)
    name = f"cs_dbrole_grant_{secrets.token_hex(3)}"
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_granting_is_idempotent_covers_new_tables_and_refuses_a_superuser(scratch_database):
    role = f"cs_dbrole_test_{secrets.token_hex(3)}"
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        try:
            conn.execute("CREATE TABLE configstore_history (id bigserial PRIMARY KEY, v int)")
            conn.execute("CREATE TABLE configstore_entry (id bigserial PRIMARY KEY, v int)")
            grant_app_role(conn, role)
            grant_app_role(conn, role)  # idempotent
            conn.execute("CREATE TABLE consensus_added_later (id int)")
            conn.execute(
                sql.SQL("GRANT TRUNCATE ON configstore_entry TO {}").format(sql.Identifier(role))
            )
            grant_app_role(conn, role)  # after a migration: the new table, and no more

            def privileges(table: str) -> set[str]:
                return {
                    p
                    for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES")
                    if conn.execute(
                        "SELECT has_table_privilege(%s, %s, %s)", [role, table, p]
                    ).fetchone()[0]
                }

            assert privileges("configstore_history") == {"SELECT", "INSERT"}
            row_access = {"SELECT", "INSERT", "UPDATE", "DELETE"}
            assert privileges("configstore_entry") == row_access
            assert privileges("consensus_added_later") == row_access
            assert conn.execute(
                "SELECT has_sequence_privilege(%s, 'configstore_history_id_seq', 'USAGE')",
                [role],
            ).fetchone() == (True,)

            conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(role)))
            with pytest.raises(AppRoleError, match="superuser"):
                grant_app_role(conn, role)
        finally:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
