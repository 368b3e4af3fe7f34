"""Least privilege in a node's database: the app role.

Two PostgreSQL roles use a node's database:
  the owner     owns every table; `manage.py migrate` runs as the owner, and only it
                changes the schema;
  the app role  what the node's processes (web server, Celery worker) connect as
                (DATABASE_URL): it may SELECT, INSERT, UPDATE and DELETE rows, but on the
                append-only tables (APPEND_ONLY_TABLES, the audit history) only SELECT and
                INSERT; it may TRUNCATE, ALTER or DROP nothing.

`grant_app_role` gives the app role exactly those privileges. It runs as the owner, is
idempotent and is run again after every migrate (the post_migrate handler below, when
CONFIGSTORE_APP_DB_ROLE names the role; or `manage.py grant_app_role`): a table a
migration adds gets its grants in the same run. Roles belong to the whole PostgreSQL
server, so every database on it may name the same app role.

Plain psycopg: LocalCluster calls it on databases it creates, without Django.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

#: The role LocalCluster's node processes connect as (runcluster, the tests).
APP_ROLE = "configstore_app"

#: Tables whose rows are never changed or removed once written: the app role may only
#: SELECT and INSERT them. A table named here that does not exist (yet) is skipped.
APPEND_ONLY_TABLES = ("configstore_history", "configstore_access_history")

SCHEMA = "public"


class AppRoleError(Exception):
    """The app role cannot be made least-privileged (it is the owner, a superuser, or owns
    tables): granting would give it nothing less than it has."""


def grant_app_role(conn: psycopg.Connection, role: str, password: str | None = None) -> None:
    """As the owner, on `conn`'s database: `ensure_app_role(role, password)`, then give the
    role CONNECT and TEMP on the database, USAGE on the schema, SELECT/INSERT/UPDATE/DELETE
    on every table (SELECT/INSERT only on APPEND_ONLY_TABLES; never TRUNCATE, REFERENCES or
    TRIGGER) and USAGE/SELECT/UPDATE on every sequence. Privileges granted before by anyone
    are revoked first, in the same transaction: the role's connections never see a gap.
    Idempotent."""
    ident, schema = sql.Identifier(role), sql.Identifier(SCHEMA)
    with conn.transaction():
        ensure_app_role(conn, role, password)
        owned = [
            name
            for (name,) in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND pg_get_userbyid(c.relowner) = %s ORDER BY 1",
                [SCHEMA, role],
            )
        ]
        if owned:
            raise AppRoleError(
                f"role {role!r} owns {', '.join(owned)}: the owner must own every table "
                f"(ALTER TABLE ... OWNER TO the owner; migrate as the owner)"
            )
        database = conn.execute("SELECT current_database()").fetchone()[0]
        for statement in (
            "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {role}",
            "GRANT USAGE ON SCHEMA {schema} TO {role}",
            "REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
            "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role}",
            "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        ):
            conn.execute(
                sql.SQL(statement).format(db=sql.Identifier(database), schema=schema, role=ident)
            )
        for table in existing_tables(conn, APPEND_ONLY_TABLES):
            conn.execute(
                sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON {} FROM {}").format(
                    sql.Identifier(SCHEMA, table), ident
                )
            )
    log.info("granted the app role %s its privileges on %s", role, database)


def ensure_app_role(conn: psycopg.Connection, role: str, password: str | None = None) -> None:
    """Create `role` unless it exists, and make it a plain login role (no SUPERUSER,
    CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS); set its password when one is given (else
    leave it). A role already so is not altered: concurrent runs on one server (a database
    each) do not write the same catalog row. Raises AppRoleError for the current user or a
    superuser (which privileges do not bind)."""
    ident = sql.Identifier(role)
    if conn.execute("SELECT current_user").fetchone()[0] == role:
        raise AppRoleError(
            f"connected as {role!r} itself: run this as the tables' owner "
            f"(DATABASE_URL = the owner's URL), not as the app role"
        )
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
        try:
            with conn.transaction():  # a savepoint: losing the race leaves ours usable
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass  # another database's migrate on this server created it meanwhile
    superuser, plain = conn.execute(
        "SELECT rolsuper, rolcanlogin AND NOT (rolcreatedb OR rolcreaterole OR rolreplication"
        " OR rolbypassrls) FROM pg_roles WHERE rolname = %s",
        [role],
    ).fetchone()
    if superuser:
        raise AppRoleError(f"role {role!r} is a superuser: privileges do not bind it")
    if not plain:
        conn.execute(
            sql.SQL("ALTER ROLE {} LOGIN NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS").format(
                ident
            )
        )
    if password:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password)))


def existing_tables(conn: psycopg.Connection, names: tuple[str, ...]) -> list[str]:
    """Those of `names` that are tables of the schema, in their order."""
    found = {
        name
        for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename = ANY(%s)",
            [SCHEMA, list(names)],
        )
    }
    return [name for name in names if name in found]


def with_user(url: str, user: str, password: str | None = None) -> str:
    """`url` (postgresql://owner[:pw]@host:port/db?...) with its user (and password)
    replaced: the same database, reached as another role."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{credentials}@{host}"))


def grant_after_migrate(using: str = "default", **kwargs) -> None:
    """post_migrate handler (consensus/apps.py): grant CONFIGSTORE_APP_DB_ROLE its privileges
    on the database just migrated; nothing when the setting is empty."""
    from django.db import connections

    from consensus import conf

    role = conf.node().app_db_role
    if not role:
        return
    connection = connections[using]
    connection.ensure_connection()
    grant_app_role(connection.connection, role, conf.node().app_db_password or None)
