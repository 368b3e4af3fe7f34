"""python manage.py snapshot save FILE | restore FILE [--replace] | info FILE

Backup and disaster recovery of a node's replicated state (configstore.snapshot):

    save FILE     a consistent snapshot of this node's database at its applied index, taken
                  while the node runs (one read-only transaction; the applier is not
                  stopped); prints the index, each section's rows and the file's sha256.
                  Any role that may read the tables will do (the app role).
    restore FILE  seed a brand-new cluster: into this node's freshly migrated, empty
                  database, before its worker first starts; run it on every node of the new
                  cluster with the same file (as the tables' owner, like migrate). The
                  cluster then starts at the snapshot's index: its next slot is index + 1.
                  --replace overwrites a database that has applied slots (stop the node
                  first; meant for a node of the same cluster: its chosen log is kept, and
                  the slots above the snapshot's index in it are applied again at the
                  worker's start). A damaged, cut or foreign file, or a database of another
                  schema, is refused and nothing is changed (exit 1).
    info FILE     the file's header: index, node, sections, without touching a database.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from configstore import snapshot


class Command(BaseCommand):
    help = "Save a snapshot of this node's replicated state, or restore one (disaster recovery)."

    def add_arguments(self, parser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        save = actions.add_parser(
            "save", help="write a snapshot of this node to FILE ('-': stdout)"
        )
        save.add_argument("file")
        restore = actions.add_parser("restore", help="install FILE into this node's database")
        restore.add_argument("file")
        restore.add_argument(
            "--replace", action="store_true", help="overwrite a database that has applied slots"
        )
        info = actions.add_parser("info", help="print FILE's header")
        info.add_argument("file")

    def handle(self, *args, action: str, file: str, replace: bool = False, **_):
        try:
            if action == "save":
                self._save(file)
            elif action == "restore":
                with open(file, "rb") as source:
                    done = snapshot.restore(source, replace=replace)
                self._report("restored", done)
            else:
                with open(file, "rb") as source:
                    self.stdout.write(json.dumps(snapshot.read_header(source), indent=2))
        except snapshot.SnapshotError as error:
            raise CommandError(f"{file}: {error}") from None
        except OSError as error:
            raise CommandError(str(error)) from None

    def _save(self, file: str) -> None:
        if file == "-":
            done = snapshot.save(sys.stdout.buffer)
            self.stdout = self.stderr  # the report goes beside the data, not into it
        else:
            path = Path(file)
            partial = path.with_name(path.name + ".partial")
            try:
                with open(partial, "wb") as out:
                    done = snapshot.save(out)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            partial.replace(path)  # a file by that name is always a whole snapshot
        self._report("saved", done)

    def _report(self, verb: str, done: snapshot.Info) -> None:
        rows = ", ".join(f"{name} {n}" for name, n in done.rows.items())
        self.stdout.write(
            f"{verb} the snapshot of {done.node} at applied index {done.applied_index}\n"
            f"rows: {rows}\nsha256 {done.sha256}"
        )
