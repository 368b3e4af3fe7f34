"""Password logins against the replicated users.

Django's ModelBackend, except that it never writes the user: Django re-hashes a password
whose hash is outdated (a hasher's new iteration count) and saves the user while checking
it, which would make this node's copy of a replicated user differ from the others'. The
hash is only ever changed by an access command (configstore.access)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import check_password


class ReplicatedUserBackend(ModelBackend):
    def authenticate(self, request, username=None, password=None, **kwargs):
        model = get_user_model()
        if username is None:
            username = kwargs.get(model.USERNAME_FIELD)
        if username is None or password is None:
            return None
        try:
            user = model._default_manager.get_by_natural_key(username)
        except model.DoesNotExist:
            model().set_password(password)  # as ModelBackend: the same time either way
            return None
        if check_password(password, user.password) and self.user_can_authenticate(user):
            return user
        return None
