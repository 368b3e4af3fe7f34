"""Snapshots of a node's replicated state at its applied index: one file an operator saves
from a running node and restores into a brand-new cluster's empty databases (manage.py
snapshot), in a form the runtime can later stream between nodes in chunks and install.

What a snapshot holds: everything a node's state machine decides from, at one applied
index, and nothing node-local --
    configstore_entry, configstore_schema     the config
    configstore_idempotency                   idempotency records not yet deleted (expired
                                              ones are deleted at the same indexes on every
                                              node, configstore.statemachine)
    configstore_history,                      the audit history, every row, in log order
    configstore_access_history
    auth_user, auth_group, their memberships  the replicated identities (configstore.identity)
    and permissions, configstore_prefix_
    permission, configstore_api_token
    applied_requests                          the runtime's: request ids a later slot must
                                              still drop as duplicates (consensus.api), and
                                              the applied index itself
Left out, node-local: sessions, the admin's log, django-axes' lockouts, when a token was
last used here (configstore_token_use), the acceptor's votes and the chosen log.

The file is gzip'd JSON lines: a header line, then each section's rows, one JSON object a
line, in the header's order:
    {"format": "configstore-snapshot", "version": 1, "applied_index": N, "node": "n1",
     "cluster": ["n1", "n2", "n3"], "taken_at": "...", "migrations": sha256,
     "sections": [{"name", "columns", "rows", "sha256"}, ...]}
JSON because the state is JSON already (values, schemas, results are jsonb: a row is
PostgreSQL's own jsonb text, canonical, round-tripping exactly) and because it reads with
`zcat | head` and does not depend on the server's version, as COPY's binary form would;
gzip for size, and its CRC and length catch a damaged or cut file before any sha256 does.
Rows carry natural keys, never a node's serial ids (a username, not a user id; no history
id: sequences may skip differently on each node), ordered by primary or natural key with
the "C" collation: two nodes at the same applied index write byte-identical sections, with
the same sha256. A section's sha256 is over its lines, each with its newline.

save() reads in one REPEATABLE READ READ ONLY transaction: one snapshot of the database,
taken with the applied index it holds, while the applier goes on (it blocks nothing).
restore() installs in one transaction: it checks the header (format, version, the same
migrations), replaces the tables, sets the applied index, and checks each section's row
count and sha256 as it reads; a bad checksum, a cut or unreadable file, or another schema
raises SnapshotError and the transaction rolls back: nothing changed. It truncates the
tables it replaces (the history refuses DELETE), so it runs as the tables' owner.

install() is state transfer's: it installs a peer's snapshot into a running node that is
behind, in one transaction, as the app role, without truncating anything (see its
docstring; the transfer itself is configstore.transfer).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO

from django.db import connection, transaction

from configstore import identity
from consensus import api as consensus
from consensus.conf import node as node_settings

FORMAT = "configstore-snapshot"
VERSION = 1
BATCH_ROWS = 1000  # rows per INSERT on restore
_SPOOL_BYTES = 64 * 1024 * 1024  # sections are kept in memory up to this, then on disk


class SnapshotError(Exception):
    """A snapshot that cannot be taken or installed; nothing was changed."""


@dataclass(frozen=True)
class Info:
    applied_index: int
    node: str
    rows: dict[str, int]  # section -> rows
    sha256: str  # of the whole file


@dataclass(frozen=True)
class _Section:
    name: str
    select: str  # one text column: a row as JSON, in the section's order
    insert: str | None  # one parameter, a JSON array of rows; None: the runtime's section
    columns: tuple[str, ...]
    #: A live install's insert (install()): upserts by the natural key `key`.
    upsert: str | None = None
    key: str | None = None
    #: An append-only table's rows up to an index (one parameter), in the section's order.
    select_through: str | None = None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _plain(
    cursor,
    table: str,
    order: str,
    *,
    without: tuple[str, ...] = (),
    key: str | None = None,
    indexed: bool = False,
) -> _Section:
    """A table whose rows reference no serial id: every column but `without`, as is. A
    jsonb column's value goes in a one-element array ([value]; null for SQL NULL): a JSON
    null stored in it stays apart from no value at all. `key`: its natural key, by which a
    live install upserts; `indexed`: append-only, by log index."""
    cursor.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        "current_schema() AND table_name = %s ORDER BY ordinal_position",
        [table],
    )
    typed = [(c, t) for c, t in cursor.fetchall() if c not in without]
    columns = tuple(c for c, _ in typed)
    json_columns = [c for c, t in typed if t == "jsonb"]
    minus = "".join(f" - '{c}'" for c in without)
    # jsonb_build_array(NULL) would be [null]: a SQL NULL is written as null.
    wrapped = "".join(
        f" || jsonb_build_object('{c}', CASE WHEN t.{_q(c)} IS NULL THEN NULL "
        f"ELSE jsonb_build_array(t.{_q(c)}) END)"
        for c in json_columns
    )
    names = ", ".join(map(_q, columns))
    values = ", ".join(f"r.{_q(c)} -> 0" if c in json_columns else f"r.{_q(c)}" for c in columns)
    insert = (
        f"INSERT INTO {table} ({names}) SELECT {values} FROM "
        f"jsonb_populate_recordset(NULL::{table}, %s::jsonb) WITH ORDINALITY AS r "
        "ORDER BY r.ordinality"
    )
    upsert = None
    if key is not None:
        # (the key itself when there is nothing else to set)
        updates = ", ".join(
            f"{_q(c)} = EXCLUDED.{_q(c)}" for c in columns if c != key or len(columns) == 1
        )
        upsert = f"{insert} ON CONFLICT ({_q(key)}) DO UPDATE SET {updates}"
    rows = f"SELECT (to_jsonb(t){minus}{wrapped})::text FROM {table} t"
    return _Section(
        table,
        f"{rows} ORDER BY {order}",
        insert,
        columns,
        upsert=upsert,
        key=key,
        select_through=f"{rows} WHERE t.index <= %s ORDER BY {order}" if indexed else None,
    )


_PERMISSION = "ct.app_label || '.' || p.codename"
_PERMISSION_JOIN = (
    "JOIN auth_permission p ON p.id = x.permission_id "
    "JOIN django_content_type ct ON ct.id = p.content_type_id"
)
_BY_PERMISSION = (
    "JOIN (auth_permission p JOIN django_content_type ct ON ct.id = p.content_type_id) "
    f"ON {_PERMISSION} = r.permission"
)


_TOKEN_INSERT = (
    "INSERT INTO configstore_api_token (token_id, user_id, name, key_hash, scope, "
    "prefix, expires_at, created_at, created_index) SELECT r.token_id, u.id, r.name, "
    "r.key_hash, r.scope, r.prefix, r.expires_at, r.created_at, r.created_index FROM "
    'jsonb_to_recordset(%s::jsonb) AS r(token_id text, "user" text, name text, '
    "key_hash text, scope text, prefix text, expires_at timestamptz, "
    "created_at timestamptz, created_index bigint) "
    'JOIN auth_user u ON u.username = r."user"'
)


def _sections(cursor) -> list[_Section]:
    """Every section, in the order restore() must insert them (users before their tokens)."""
    return [
        _plain(cursor, "configstore_entry", 'key COLLATE "C"'),
        _plain(cursor, "configstore_schema", 'key COLLATE "C"'),
        _plain(cursor, "configstore_idempotency", 'key COLLATE "C"'),
        _plain(cursor, "configstore_history", "index, id", without=("id",), indexed=True),
        _plain(cursor, "configstore_access_history", "index, id", without=("id",), indexed=True),
        _plain(cursor, "auth_user", 'username COLLATE "C"', without=("id",), key="username"),
        _plain(cursor, "auth_group", 'name COLLATE "C"', without=("id",), key="name"),
        _Section(
            "auth_user_groups",
            "SELECT jsonb_build_object('user', u.username, 'group', g.name)::text "
            "FROM auth_user_groups x JOIN auth_user u ON u.id = x.user_id "
            'JOIN auth_group g ON g.id = x.group_id ORDER BY u.username COLLATE "C", '
            'g.name COLLATE "C"',
            "INSERT INTO auth_user_groups (user_id, group_id) SELECT u.id, g.id FROM "
            'jsonb_to_recordset(%s::jsonb) AS r("user" text, "group" text) '
            'JOIN auth_user u ON u.username = r."user" JOIN auth_group g ON g.name = r."group"',
            ("user", "group"),
        ),
        _Section(
            "auth_user_user_permissions",
            f"SELECT jsonb_build_object('user', u.username, 'permission', {_PERMISSION})::text "
            f"FROM auth_user_user_permissions x JOIN auth_user u ON u.id = x.user_id "
            f'{_PERMISSION_JOIN} ORDER BY u.username COLLATE "C", {_PERMISSION} COLLATE "C"',
            "INSERT INTO auth_user_user_permissions (user_id, permission_id) SELECT u.id, p.id "
            'FROM jsonb_to_recordset(%s::jsonb) AS r("user" text, permission text) '
            f'JOIN auth_user u ON u.username = r."user" {_BY_PERMISSION}',
            ("user", "permission"),
        ),
        _Section(
            "auth_group_permissions",
            f"SELECT jsonb_build_object('group', g.name, 'permission', {_PERMISSION})::text "
            f"FROM auth_group_permissions x JOIN auth_group g ON g.id = x.group_id "
            f'{_PERMISSION_JOIN} ORDER BY g.name COLLATE "C", {_PERMISSION} COLLATE "C"',
            "INSERT INTO auth_group_permissions (group_id, permission_id) SELECT g.id, p.id "
            'FROM jsonb_to_recordset(%s::jsonb) AS r("group" text, permission text) '
            f'JOIN auth_group g ON g.name = r."group" {_BY_PERMISSION}',
            ("group", "permission"),
        ),
        _Section(
            "configstore_prefix_permission",
            "SELECT (to_jsonb(x) - 'id' - 'group_id' || jsonb_build_object('group', g.name))"
            "::text FROM configstore_prefix_permission x JOIN auth_group g ON g.id = x.group_id "
            'ORDER BY g.name COLLATE "C", x.prefix COLLATE "C"',
            "INSERT INTO configstore_prefix_permission (group_id, prefix, can_view, can_change, "
            "can_delete) SELECT g.id, r.prefix, r.can_view, r.can_change, r.can_delete FROM "
            'jsonb_to_recordset(%s::jsonb) AS r("group" text, prefix text, can_view boolean, '
            'can_change boolean, can_delete boolean) JOIN auth_group g ON g.name = r."group"',
            ("group", "prefix", "can_view", "can_change", "can_delete"),
        ),
        _Section(
            "configstore_api_token",
            "SELECT (to_jsonb(t) - 'user_id' || jsonb_build_object('user', u.username))::text "
            "FROM configstore_api_token t JOIN auth_user u ON u.id = t.user_id "
            'ORDER BY t.token_id COLLATE "C"',
            _TOKEN_INSERT,
            (
                "token_id",
                "user",
                "name",
                "key_hash",
                "scope",
                "prefix",
                "expires_at",
                "created_at",
                "created_index",
            ),
            upsert=f"{_TOKEN_INSERT} ON CONFLICT (token_id) DO UPDATE SET user_id = "
            "EXCLUDED.user_id, name = EXCLUDED.name, key_hash = EXCLUDED.key_hash, scope = "
            "EXCLUDED.scope, prefix = EXCLUDED.prefix, expires_at = EXCLUDED.expires_at, "
            "created_at = EXCLUDED.created_at, created_index = EXCLUDED.created_index",
            key="token_id",
        ),
        # The runtime's, last: installing it sets the applied index.
        _Section(
            "applied_requests",
            consensus.SNAPSHOT_REQUESTS_SQL,
            None,
            ("request_id", "slot", "outcome", "result"),
        ),
    ]


#: What restore() empties before it inserts: the replicated tables, and the node-local ones
#: that point at their rows (a session or an admin log entry of a user id, a token's last
#: use), which would otherwise name other users' rows.
_REPLACED = (
    "configstore_entry, configstore_schema, configstore_idempotency, configstore_history, "
    "configstore_access_history, configstore_api_token, configstore_prefix_permission, "
    "auth_user_groups, auth_user_user_permissions, auth_group_permissions, auth_user, "
    "auth_group, configstore_token_use, django_admin_log, django_session"
)
#: Tables whose serial ids restore() leaves to their sequences, set past the rows after.
_SERIAL = (
    "configstore_history",
    "configstore_access_history",
    "auth_user",
    "auth_group",
    "auth_user_groups",
    "auth_user_user_permissions",
    "auth_group_permissions",
    "configstore_prefix_permission",
)


def _migrations(cursor) -> str:
    """The sha256 of the migrations applied to this database: a snapshot restores only into
    a database of the same schema."""
    cursor.execute(
        "SELECT m FROM (SELECT app || '.' || name AS m FROM django_migrations) AS x "
        'ORDER BY m COLLATE "C"'
    )
    return hashlib.sha256("\n".join(r for (r,) in cursor.fetchall()).encode()).hexdigest()


def _cluster() -> list[str]:
    """The node ids of CONFIGSTORE_PEERS (never their broker URLs: they may hold passwords)."""
    return list(node_settings().peers)


class _Hashing:
    """A binary file wrapper that hashes every byte written through it or read from it."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.digest = file, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.digest.update(data)
        return data

    def flush(self) -> None:
        self.file.flush()


# ------------------------------------------------------------------------------- save


def save(out: BinaryIO) -> Info:
    """Write a snapshot of this node's database at its applied index to `out` (binary)."""
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool, transaction.atomic():
        conn = _raw()
        with conn.cursor() as cursor:
            # First statement of the transaction: its one snapshot of the database.
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cursor.execute("SET LOCAL TimeZone = 'UTC'")  # timestamps' text, on every node
            cursor.execute(f"SELECT {consensus.APPLIED_INDEX_SQL}")
            (applied_index,) = cursor.fetchone()
            migrations = _migrations(cursor)
            sections = _sections(cursor)
        described = []
        for section in sections:
            params = (
                [consensus.snapshot_requests_since(applied_index)] if section.insert is None else []
            )
            digest, rows = hashlib.sha256(), 0
            for line in _lines(conn, section.select, params):
                digest.update(line)
                spool.write(line)
                rows += 1
            described.append(
                {
                    "name": section.name,
                    "columns": list(section.columns),
                    "rows": rows,
                    "sha256": digest.hexdigest(),
                }
            )
        header = {
            "format": FORMAT,
            "version": VERSION,
            "applied_index": applied_index,
            "node": node_settings().node_id,
            "cluster": _cluster(),
            "taken_at": datetime.now(UTC).isoformat(),
            "migrations": migrations,
            "sections": described,
        }
        hashing = _Hashing(out)
        with gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0) as packed:
            packed.write(json.dumps(header).encode() + b"\n")
            spool.seek(0)
            while chunk := spool.read(1024 * 1024):
                packed.write(chunk)
        out.flush()
    return Info(
        applied_index,
        header["node"],
        {s["name"]: s["rows"] for s in described},
        hashing.digest.hexdigest(),
    )


def _raw():
    connection.ensure_connection()
    return connection.connection


def _lines(conn, select: str, params) -> Iterator[bytes]:
    """The rows of `select` (one text column) as the file's lines, read BATCH_ROWS at a
    time through a server-side cursor of the current transaction."""
    with conn.cursor(name="configstore_rows") as rows_cursor:
        rows_cursor.itersize = BATCH_ROWS
        rows_cursor.execute(select, params)
        for (text,) in rows_cursor:
            yield text.encode() + b"\n"


# ---------------------------------------------------------------------------- restore


def read_header(source: BinaryIO) -> dict:
    """The header of the snapshot `source` (positioned at its start), checked."""
    return _header(_Reader(gzip.GzipFile(fileobj=source, mode="rb")))


class _Reader:
    """Lines of a snapshot's gzip stream; any failure to read it is a SnapshotError."""

    def __init__(self, packed: gzip.GzipFile) -> None:
        self.packed = packed

    def line(self, what: str) -> bytes:
        try:
            line = self.packed.readline()
        except (OSError, EOFError, zlib.error) as error:
            raise SnapshotError(f"the file is damaged or cut short ({error})") from None
        if not line.endswith(b"\n"):
            raise SnapshotError(f"the file is cut short: it ends before {what}")
        return line

    def end(self) -> None:
        try:
            rest = self.packed.read(1)  # and the gzip trailer's CRC and length are checked
        except (OSError, EOFError, zlib.error) as error:
            raise SnapshotError(f"the file is damaged or cut short ({error})") from None
        if rest:
            raise SnapshotError("the file holds more than its header describes")


def _header(reader: _Reader) -> dict:
    try:
        header = json.loads(reader.line("its header"))
    except ValueError:
        raise SnapshotError("not a configstore snapshot (no header)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError("not a configstore snapshot")
    if header.get("version") != VERSION:
        raise SnapshotError(
            f"snapshot format version {header.get('version')!r}; this version reads {VERSION}"
        )
    index, sections = header.get("applied_index"), header.get("sections")
    if not isinstance(index, int) or index < 0 or not isinstance(sections, list):
        raise SnapshotError("the snapshot's header is malformed")
    for s in sections:
        if not (
            isinstance(s, dict)
            and isinstance(s.get("name"), str)
            and isinstance(s.get("rows"), int)
            and isinstance(s.get("sha256"), str)
            and isinstance(s.get("columns"), list)
        ):
            raise SnapshotError("the snapshot's header is malformed")
    return header


def _batches(reader: _Reader, described: dict) -> Iterator[tuple[str, int]]:
    """The section's rows as (JSON array, rows in it), at most BATCH_ROWS each; the
    section's sha256 is checked before its last batch is given (SnapshotError if it
    differs), so no batch of a damaged section is ever the last one inserted."""
    name, digest, batch = described["name"], hashlib.sha256(), []
    for n in range(described["rows"]):
        line = reader.line(f"row {n + 1} of {described['rows']} of {name}")
        digest.update(line)
        batch.append(line.decode().rstrip("\n"))
        if len(batch) == BATCH_ROWS and n + 1 < described["rows"]:
            yield "[" + ",".join(batch) + "]", len(batch)
            batch = []
    if digest.hexdigest() != described["sha256"]:
        raise SnapshotError(f"{name}: checksum mismatch (the file was changed or damaged)")
    if batch:
        yield "[" + ",".join(batch) + "]", len(batch)


def _open(source: BinaryIO) -> tuple[_Hashing, _Reader, dict]:
    """The snapshot `source`, hashed as it is read, and its header, checked."""
    hashing = _Hashing(source)
    reader = _Reader(gzip.GzipFile(fileobj=hashing, mode="rb"))
    return hashing, reader, _header(reader)


def _prepare(cursor, header: dict) -> list[_Section]:
    """Open an install in the caller's transaction: check that the snapshot is of this
    schema and version; the sections to install, in order."""
    cursor.execute("SET LOCAL TimeZone = 'UTC'")
    # The identity tables refuse writers unless the applier is applying (migration 0005);
    # an install is the applier's kind of write.
    cursor.execute("SELECT set_config('configstore.applying', 'on', true)")
    if _migrations(cursor) != header.get("migrations"):
        raise SnapshotError(
            "the snapshot was taken from a database of another schema (other migrations): "
            "migrate both to the same version"
        )
    sections = _sections(cursor)
    if [(s.name, list(s.columns)) for s in sections] != [
        (s["name"], s["columns"]) for s in header["sections"]
    ]:
        raise SnapshotError("the snapshot's sections are not this version's")
    return sections


def restore(source: BinaryIO, *, replace: bool = False) -> Info:
    """Install the snapshot `source` into this node's database, in one transaction. Without
    `replace`, only into a database that has applied nothing (a brand-new cluster's)."""
    hashing, reader, header = _open(source)
    index = header["applied_index"]
    with transaction.atomic(), connection.cursor() as cursor:
        sections = _prepare(cursor, header)
        current = consensus.applied_index()
        if current and not replace:
            raise SnapshotError(
                f"this database has applied up to index {current}: a restore seeds a "
                "brand-new cluster's empty databases (replace=True to overwrite it)"
            )
        try:
            cursor.execute(f"TRUNCATE {_REPLACED}")
        except Exception as error:
            raise SnapshotError(
                f"cannot empty the tables ({error}): run the restore as the tables' owner"
            ) from None
        rows = {}
        for section, described in zip(sections, header["sections"], strict=True):
            batches = _batches(reader, described)
            if section.insert is None:
                consensus.install_applied(cursor, index, (batch for batch, _ in batches))
            else:
                for batch, count in batches:
                    cursor.execute(section.insert, [batch])
                    _inserted(cursor, section, count)
            rows[section.name] = described["rows"]
        reader.end()
        for table in _SERIAL:
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
            )
    return Info(index, str(header.get("node", "")), rows, hashing.digest.hexdigest())


# ------------------------------------------------------------------ install (state transfer)


def install(source: BinaryIO) -> Info | None:
    """Install the snapshot `source` (a peer's) into this running node's database, in one
    transaction, if it is above the applied index: state transfer (configstore.transfer),
    on the node's applier thread, as the app role. None: not above it, nothing done.

    Unlike restore(), nothing is truncated and no row the node keeps is renumbered:
      - the config (entries, schemas, idempotency records) and the link tables (group
        memberships, permissions, prefix permissions) are replaced by the snapshot's rows;
      - users, groups and tokens are upserted by their natural keys (username, group name,
        token id) and those the snapshot lacks deleted with what of this node refers to
        them (its admin log, a token's last use): a user keeps the id this node's sessions
        and admin log name;
      - the audit history is append-only (the app role may not delete it): the rows this
        node holds, up to its applied index, must be exactly the snapshot's rows up to that
        index (their sha256 is compared), and only the rows above it are appended;
      - the runtime installs the applied index and the request ids inside the window, and
        compacts the log through the index (consensus.api.install_applied).
    A bad checksum, a cut file, a history that differs from this node's or another schema
    raises SnapshotError; any failure rolls the whole install back."""
    hashing, reader, header = _open(source)
    index = header["applied_index"]
    with transaction.atomic(), connection.cursor() as cursor:
        sections = _prepare(cursor, header)
        current = consensus.applied_index()
        if index <= current:
            return None
        cursor.execute(
            "CREATE TEMPORARY TABLE configstore_install_keys (section text, key text) "
            "ON COMMIT DROP"
        )
        rows = {}
        for section, described in zip(sections, header["sections"], strict=True):
            rows[section.name] = described["rows"]
            if section.insert is None:
                consensus.install_applied(
                    cursor, index, (batch for batch, _ in _batches(reader, described))
                )
            elif section.select_through is not None:
                _append(cursor, reader, section, described, current)
            elif section.upsert is not None:
                # Whole, checked, before anything of it is written: the rows the snapshot
                # lacks go first (a token's unique hash may have passed to another token).
                batches = list(_batches(reader, described))
                for batch, _ in batches:
                    cursor.execute(
                        "INSERT INTO configstore_install_keys SELECT %s, e ->> %s FROM "
                        "jsonb_array_elements(%s::jsonb) AS e",
                        [section.name, section.key, batch],
                    )
                _delete_missing(cursor, section)
                for batch, count in batches:
                    cursor.execute(section.upsert, [batch])
                    _inserted(cursor, section, count)
            else:
                cursor.execute(f"DELETE FROM {section.name}")
                for batch, count in _batches(reader, described):
                    cursor.execute(section.insert, [batch])
                    _inserted(cursor, section, count)
        reader.end()
    return Info(index, str(header.get("node", "")), rows, hashing.digest.hexdigest())


def _inserted(cursor, section: _Section, count: int) -> None:
    if cursor.rowcount != count:
        raise SnapshotError(
            f"{section.name}: {count - cursor.rowcount} rows name a user, group or permission "
            "that is not there"
        )


def _append(cursor, reader: _Reader, section: _Section, described: dict, current: int) -> None:
    """An append-only section: check that this node's rows up to `current` are the
    snapshot's (byte for byte, by sha256), and append the snapshot's rows above it."""
    cursor.execute(f"SELECT count(*) FROM {section.name} WHERE index > %s", [current])
    if cursor.fetchone()[0]:
        raise SnapshotError(f"{section.name} holds rows above the applied index {current}")
    ours = hashlib.sha256()
    for line in _lines(_raw(), section.select_through, [current]):
        ours.update(line)
    name, digest, theirs, batch = section.name, hashlib.sha256(), hashlib.sha256(), []
    above = False

    def insert(batch: list[str]) -> None:
        cursor.execute(section.insert, ["[" + ",".join(batch) + "]"])
        _inserted(cursor, section, len(batch))

    for n in range(described["rows"]):
        line = reader.line(f"row {n + 1} of {described['rows']} of {name}")
        digest.update(line)
        if not above:  # rows are in index order: the first one above begins the rest
            try:
                above = json.loads(line)["index"] > current
            except (ValueError, TypeError, KeyError):
                raise SnapshotError(f"{name}: row {n + 1} is not a history row") from None
        if not above:
            theirs.update(line)
            continue
        batch.append(line.decode().rstrip("\n"))
        if len(batch) == BATCH_ROWS:
            insert(batch)
            batch = []
    if digest.hexdigest() != described["sha256"]:
        raise SnapshotError(f"{name}: checksum mismatch (the file was changed or damaged)")
    if theirs.digest() != ours.digest():
        raise SnapshotError(
            f"{name}: this node's rows up to index {current} differ from the snapshot's: "
            "its history diverged from the cluster's (restore the node from a snapshot)"
        )
    if batch:
        insert(batch)


def _delete_missing(cursor, section: _Section) -> None:
    """Delete the rows of `section`'s table whose natural keys the snapshot lacks (its keys
    are in configstore_install_keys), with what refers to them, as the log deletes them."""
    row_id, delete = _DELETES[section.name]
    cursor.execute(
        f"SELECT {row_id} FROM {section.name} WHERE {_q(section.key)} NOT IN "
        "(SELECT key FROM configstore_install_keys WHERE section = %s)",
        [section.name],
    )
    gone = [found for (found,) in cursor.fetchall()]
    if gone:
        delete(cursor, gone)


#: How a live install deletes the rows of a keyed section: (the id the deletion takes, it).
_DELETES = {
    "auth_user": ("id", identity.delete_users),
    "auth_group": ("id", identity.delete_groups),
    "configstore_api_token": ("token_id", identity.delete_tokens),
}
