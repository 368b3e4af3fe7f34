"""configstorectl: configstore from the command line.

    configstorectl [--urls URL,URL,...] [--token T] [--output table|json] COMMAND ...

    get KEY                        the value (JSON); --output table adds version and index
    put KEY [VALUE|-] [--file F]   a JSON value from the argument, a file or stdin (-)
        [--if-version N] [--create] [--reason R]
    del KEY [--if-version N] [--reason R]
    txn --file F                   {"ops": [...], "checks": [...]} as the API takes it
    watch [PREFIX] [--since N]     one JSON line per change, until interrupted
    history [--key K | --prefix P] [--format table|json|csv]
    export PREFIX [--format json|yaml]          {key: value} of every key under PREFIX
    import FILE [--prefix P] [--dry-run] [--reason R]
                                   puts and deletes that make PREFIX equal FILE's
                                   {key: value}, as ONE txn (all or nothing), after printing
                                   the diff; --dry-run prints it and changes nothing
    status                         the cluster's nodes, leader and indexes

Settings: --urls / CONFIGSTORE_URLS (every node's base URL, comma-separated), --token /
CONFIGSTORE_TOKEN.

Exit codes: 0 done; 1 another error; 2 bad usage or input; 3 not found; 4 conflict (a
version, a txn's checks, an import racing another writer); 5 unavailable (no quorum, not
confirmed, no node answering, or `status` without an agreed leader and a quorum);
6 not authorised (401/403).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

from configstore_client import errors
from configstore_client.client import Client

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4
EXIT_UNAVAILABLE, EXIT_UNAUTHORISED = 5, 6


def _exit_code(error: errors.ConfigstoreError) -> int:
    if isinstance(error, errors.NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, errors.VersionConflict | errors.Conflict):
        return EXIT_CONFLICT
    if isinstance(error, errors.Unavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, errors.Unauthorized | errors.Forbidden):
        return EXIT_UNAUTHORISED
    if isinstance(error, errors.InvalidRequest | errors.SchemaViolation | errors.TooLarge):
        return EXIT_USAGE
    return EXIT_ERROR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="configstorectl", description="configstore from the command line"
    )
    parser.add_argument("--urls", default=os.environ.get("CONFIGSTORE_URLS", ""))
    parser.add_argument("--token", default=os.environ.get("CONFIGSTORE_TOKEN", ""))
    parser.add_argument("--output", choices=["table", "json"], default="json")
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("get")
    get.add_argument("key")
    put = sub.add_parser("put")
    put.add_argument("key")
    put.add_argument("value", nargs="?", help="JSON; - reads stdin")
    put.add_argument("--file")
    put.add_argument("--if-version", type=int)
    put.add_argument("--create", action="store_true")
    put.add_argument("--reason", default="")
    delete = sub.add_parser("del")
    delete.add_argument("key")
    delete.add_argument("--if-version", type=int)
    delete.add_argument("--reason", default="")
    txn = sub.add_parser("txn")
    txn.add_argument("--file", required=True)
    txn.add_argument("--reason", default="")
    watch = sub.add_parser("watch")
    watch.add_argument("prefix", nargs="?", default="")
    watch.add_argument("--since", type=int)
    history = sub.add_parser("history")
    history.add_argument("--key")
    history.add_argument("--prefix")
    history.add_argument("--format", choices=["table", "json", "csv"], default="table")
    export = sub.add_parser("export")
    export.add_argument("prefix")
    export.add_argument("--format", choices=["json", "yaml"], default="json")
    imp = sub.add_parser("import")
    imp.add_argument("file")
    imp.add_argument("--prefix", default="")
    imp.add_argument("--dry-run", action="store_true")
    imp.add_argument("--reason", default="")
    sub.add_parser("status")
    return parser


def _read_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise SystemExit(_usage(f"{what} is not JSON: {error}")) from None


def _usage(message: str) -> int:
    print(f"configstorectl: {message}", file=sys.stderr)
    return EXIT_USAGE


def _load_mapping(path: str) -> dict:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml  # only for YAML files

        data = yaml.safe_load(text)
    else:
        data = _read_json(text, path)
    if not isinstance(data, dict):
        raise SystemExit(_usage(f"{path} must hold an object {{key: value}}"))
    return data


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    urls = [u for u in args.urls.split(",") if u]
    if not urls or not args.token:
        return _usage("give --urls (or CONFIGSTORE_URLS) and --token (or CONFIGSTORE_TOKEN)")
    try:
        with Client(urls, args.token) as client:
            return COMMANDS[args.command](client, args)
    except errors.ConfigstoreError as error:
        print(f"configstorectl: {error.code}: {error.detail}", file=sys.stderr)
        if error.request_id:
            print(f"configstorectl: request id {error.request_id}", file=sys.stderr)
        return _exit_code(error)
    except KeyboardInterrupt:
        return EXIT_OK


def _get(client: Client, args) -> int:
    entry = client.get(args.key)
    if args.output == "table":
        print(f"{entry.key}\tversion {entry.version}\tindex {entry.index}")
    _print(entry.value)
    return EXIT_OK


def _put(client: Client, args) -> int:
    if args.file:
        text = Path(args.file).read_text(encoding="utf-8")
    elif args.value in (None, "-"):
        text = sys.stdin.read()
    else:
        text = args.value
    value = _read_json(text, "the value")
    entry = client.put(
        args.key,
        value,
        reason=args.reason,
        expected_version=args.if_version,
        create_only=args.create,
    )
    _print({"key": entry.key, "version": entry.version, "index": entry.index})
    return EXIT_OK


def _del(client: Client, args) -> int:
    index = client.delete(args.key, reason=args.reason, expected_version=args.if_version)
    _print({"key": args.key, "deleted": True, "index": index})
    return EXIT_OK


def _txn(client: Client, args) -> int:
    body = _read_json(Path(args.file).read_text(encoding="utf-8"), args.file)
    if not isinstance(body, dict) or "ops" not in body:
        return _usage(f'{args.file} must hold {{"ops": [...], "checks": [...]}}')
    _print(client.txn(body["ops"], body.get("checks", []), reason=args.reason))
    return EXIT_OK


def _watch(client: Client, args) -> int:
    for event in client.watch(args.prefix, args.since):
        print(json.dumps(event, sort_keys=True, ensure_ascii=False), flush=True)
    return EXIT_OK


_HISTORY_COLUMNS = ("index", "operation", "key", "new_version", "actor", "outcome", "reason")


def _history(client: Client, args) -> int:
    rows = client.history(key=args.key, prefix=args.prefix)
    if args.format == "json":
        _print(rows)
    elif args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(_HISTORY_COLUMNS + ("new_value",))
        for row in rows:
            cells = [row.get(c) for c in _HISTORY_COLUMNS] + [json.dumps(row.get("new_value"))]
            writer.writerow(["" if c is None else c for c in cells])
    else:
        for row in rows:
            print("\t".join(str(row.get(c, "")) for c in _HISTORY_COLUMNS))
    return EXIT_OK


def _export(client: Client, args) -> int:
    listing = client.list(args.prefix)
    data = {e.key: e.value for e in listing.entries}
    if args.format == "yaml":
        import yaml

        print(yaml.safe_dump(data, sort_keys=True, allow_unicode=True), end="")
    else:
        _print(data)
    return EXIT_OK


def _import(client: Client, args) -> int:
    """The puts and deletes that make PREFIX hold exactly the file's keys, as one txn
    guarded by the versions it read: all or nothing, refused if anything moved meanwhile."""
    wanted = _load_mapping(args.file)
    outside = sorted(k for k in wanted if not k.startswith(args.prefix))
    if outside:
        return _usage(f"keys outside --prefix {args.prefix!r}: {', '.join(outside[:5])}")
    current = {e.key: e for e in client.list(args.prefix).entries}
    ops, checks, diff = [], [], []
    for key in sorted(current.keys() | wanted.keys()):
        entry = current.get(key)
        if key not in wanted:
            ops.append({"op": "delete", "key": key})
            diff.append(f"- {key}: {json.dumps(entry.value)}")
        elif entry is None:
            ops.append({"op": "put", "key": key, "value": wanted[key]})
            diff.append(f"+ {key}: {json.dumps(wanted[key])}")
        elif entry.value != wanted[key]:
            ops.append({"op": "put", "key": key, "value": wanted[key]})
            diff.append(f"~ {key}: {json.dumps(entry.value)} -> {json.dumps(wanted[key])}")
        checks.append({"key": key, "version": entry.version if entry else 0})
    print("\n".join(diff) if diff else "no change", file=sys.stderr)
    if args.dry_run or not ops:
        _print({"changes": len(ops), "applied": False})
        return EXIT_OK
    done = client.txn(ops, checks, reason=args.reason or f"import {args.file}")
    _print({"changes": len(ops), "applied": True, "index": done.get("index")})
    return EXIT_OK


def _status(client: Client, args) -> int:
    state = client.cluster()
    if args.output == "json":
        _print(state)
    else:
        for node in state.get("nodes", []):
            print(
                f"{node.get('node_id')}\treachable={node.get('reachable')}\t"
                f"role={node.get('role')}\tapplied={node.get('applied_index')}"
            )
        print(f"leader: {state.get('leader')} (agreed: {state.get('agreed_leader')})")
    healthy = state.get("agreed_leader") and state.get("reachable", 0) >= state.get("quorum", 1)
    return EXIT_OK if healthy else EXIT_UNAVAILABLE


COMMANDS = {
    "get": _get,
    "put": _put,
    "del": _del,
    "txn": _txn,
    "watch": _watch,
    "history": _history,
    "export": _export,
    "import": _import,
    "status": _status,
}


if __name__ == "__main__":
    sys.exit(main())
