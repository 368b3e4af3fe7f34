"""python manage.py import FILE --prefix P [--dry-run] [--reason R]

Make every key under P hold exactly FILE's {key: value} (JSON; '-' reads stdin): the puts
and deletes it takes are printed as a diff ("+ key: value", "~ key: old -> new",
"- key: old"), then committed through consensus as ONE txn, guarded by the version of every
key the diff read: all or nothing. If anything under P changed meanwhile, or a value breaks
a schema, or there is no quorum, nothing is applied (exit 1). --dry-run prints the diff and
changes nothing. The same plan as `configstorectl import` (configstore.services.import_plan).
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand, CommandError

from configstore import exceptions, services

ACTOR = "manage.py"


class Command(BaseCommand):
    help = "Make a prefix hold exactly a JSON file's {key: value}, as one txn (with a diff)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("file")
        parser.add_argument("--prefix", required=True, help='the keys replaced ("" = all)')
        parser.add_argument("--dry-run", action="store_true", help="print the diff only")
        parser.add_argument("--reason", default="")

    def handle(self, *args, file: str, prefix: str, dry_run: bool, reason: str, **_):
        try:
            with sys.stdin if file == "-" else open(file, encoding="utf-8") as source:
                wanted = json.load(source)
        except (OSError, ValueError) as error:
            raise CommandError(f"{file}: {error}") from None
        try:
            plan = services.import_plan(prefix, wanted)
            self.stdout.write("\n".join(plan.diff) if plan.diff else "no change")
            if dry_run:
                self.stdout.write(f"dry run: {len(plan.ops)} changes, nothing applied")
                return
            done = services.import_apply(plan, actor=ACTOR, reason=reason or f"import {file}")
        except exceptions.ConfigstoreError as error:
            raise CommandError(f"nothing applied: {error}") from None
        if done is not None:
            self.stdout.write(f"applied {len(plan.ops)} changes at log index {done.index}")
