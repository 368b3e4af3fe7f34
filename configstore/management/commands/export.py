"""python manage.py export [PREFIX]

Every key under PREFIX ("" = all) with its value, as one JSON object {key: value} sorted by
key, from this node's applied state (the form `manage.py import` and `configstorectl
import` take)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand

from configstore import selectors


class Command(BaseCommand):
    help = "Print every key under PREFIX with its value, as a JSON object."

    def add_arguments(self, parser) -> None:
        parser.add_argument("prefix", nargs="?", default="")

    def handle(self, *args, prefix: str, **_):
        data = {e.key: e.value for e in selectors.entry_list(prefix=prefix)}
        self.stdout.write(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
