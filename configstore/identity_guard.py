"""No write to the replicated identities except by the applier.

Users, groups, their permissions, prefix permissions and API tokens are replicated state
(configstore.identity): the applier writes them, in raw SQL, from access commands. A row
written any other way -- Django's `createsuperuser` or `changepassword`, a shell, a
forgotten `user.save()` -- would exist on one node only, and the nodes would then decide
the same command differently (the applier checks every command's credential against these
rows): their states would diverge. So every ORM write to these models raises
LocalIdentityWrite, naming the command to use instead. Tests that set up a single node's
database directly turn the guard off with CONFIGSTORE_ALLOW_LOCAL_IDENTITY_WRITES.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import m2m_changed, pre_delete, pre_save

GUARDED = ("User", "Group", "PrefixPermission", "ApiToken")


class LocalIdentityWrite(RuntimeError):
    pass


def refuse(sender, **kwargs) -> None:
    if getattr(settings, "CONFIGSTORE_ALLOW_LOCAL_IDENTITY_WRITES", False):
        return
    if kwargs.get("action", "pre_add") not in ("pre_add", "pre_remove", "pre_clear"):
        return
    raise LocalIdentityWrite(
        f"{getattr(sender, '__name__', sender)} rows are replicated identities: change them "
        "through consensus (manage.py access ..., the admin's pages, /api/v1/access/), never "
        "in one node's database"
    )


def connect() -> None:
    from django.contrib.auth.models import Group, User

    from configstore.models import ApiToken, PrefixPermission

    for model in (User, Group, PrefixPermission, ApiToken):
        pre_save.connect(refuse, sender=model, dispatch_uid=f"identity-guard-save-{model.__name__}")
        pre_delete.connect(
            refuse, sender=model, dispatch_uid=f"identity-guard-delete-{model.__name__}"
        )
    for through in (User.groups.through, User.user_permissions.through, Group.permissions.through):
        m2m_changed.connect(refuse, sender=through, dispatch_uid=f"identity-guard-m2m-{through}")
