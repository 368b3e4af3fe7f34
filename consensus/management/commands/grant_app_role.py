"""python manage.py grant_app_role --role NAME [--password-env VAR]

Run as the tables' owner (DATABASE_URL = the owner's URL): create the app role if missing and
give it row access only, the audit history append-only (consensus/dbroles.py). Idempotent;
`manage.py migrate` does the same when CONFIGSTORE_APP_DB_ROLE is set."""

import os

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from consensus.dbroles import AppRoleError, grant_app_role


class Command(BaseCommand):
    help = "Create the app role if missing and grant it least privilege on this database."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--role", required=True, help="the role the node's processes use")
        parser.add_argument(
            "--password-env",
            metavar="VAR",
            help="set the role's password from this environment variable (none: unchanged)",
        )

    def handle(self, *args, role: str, password_env: str | None, **options) -> None:
        password = None
        if password_env:
            password = os.environ.get(password_env)
            if not password:
                raise CommandError(f"{password_env} is unset or empty")
        connection.ensure_connection()
        try:
            grant_app_role(connection.connection, role, password)
        except AppRoleError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{role}: granted on {connection.settings_dict['NAME']}")
