"""python manage.py ensure_admin --username admin --password PW [--token KEY]

Creates (or updates the password of) a superuser in THIS node's database, and with --token
gives it that REST API token. Users and tokens are local to a node's database, not
replicated: run it on every node with the same values (runcluster does), so the same
credentials work against any node."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create or update a superuser on this node."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", required=True)
        parser.add_argument("--token", help="the user's REST API token (40 hex characters)")

    def handle(self, *args, username: str, password: str, token: str | None, **options) -> None:
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'created' if created else 'updated'} superuser {username}")
        if token:
            from rest_framework.authtoken.models import Token

            Token.objects.filter(user=user).exclude(key=token).delete()
            Token.objects.get_or_create(user=user, key=token)
