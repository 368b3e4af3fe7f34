"""Who may read and write which keys. Used by the REST API and the admin alike.

Rights are additive, as Django's are:
- the global model permissions configstore.view_entry / change_entry / delete_entry grant
  the action on every key (change implies view, as in the Django admin);
- a PrefixPermission grants its group the actions it ticks on every key starting with its
  prefix ("" = every key);
- superusers may do everything; inactive users nothing;
- with CONFIGSTORE_ANONYMOUS_READS, everyone (signed in or not) may read every key.

Schemas: reading one needs the right to read its key (for a namespace "a/", the keys under
it); writing needs the global configstore.change_schema / delete_schema.

A request authenticated by an API token is held to the token's limits too (its scope and
prefix: configstore.identity.TokenLimits, set on the user by configstore.api.auth). The
applier checks the same rules again at apply (configstore.identity.Rights).
"""

from __future__ import annotations

from configstore import conf
from configstore.models import PrefixPermission

VIEW, CHANGE, DELETE = "view", "change", "delete"
_CACHE = "_configstore_prefix_cache"


def anonymous_reads() -> bool:
    return conf.store().anonymous_reads


def _prefixes(user) -> dict[str, list[str]]:
    """The prefixes the user's groups hold, per action; cached on the user object (one
    query per request), as Django caches permissions."""
    cached = getattr(user, _CACHE, None)
    if cached is None:
        cached = {VIEW: [], CHANGE: [], DELETE: []}
        rows = PrefixPermission.objects.filter(group__user=user).values_list(
            "prefix", "can_view", "can_change", "can_delete"
        )
        for prefix, can_view, can_change, can_delete in rows:
            if can_view or can_change:
                cached[VIEW].append(prefix)
            if can_change:
                cached[CHANGE].append(prefix)
            if can_delete:
                cached[DELETE].append(prefix)
        setattr(user, _CACHE, cached)
    return cached


def _token(user):
    return getattr(user, "_configstore_token", None)


def _global(user, action: str) -> bool:
    if user.has_perm(f"configstore.{action}_entry"):
        return True
    return action == VIEW and user.has_perm("configstore.change_entry")


def has_key_permission(user, action: str, key: str) -> bool:
    """May `user` do `action` (VIEW, CHANGE, DELETE) on `key` (or, for VIEW, on a prefix:
    everything under it)?"""
    if action == VIEW and anonymous_reads():
        return True
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    token = _token(user)
    if token is not None and not token.allows_key(action, key):
        return False
    if _global(user, action):
        return True
    return any(key.startswith(prefix) for prefix in _prefixes(user)[action])


def readable_prefixes(user) -> list[str] | None:
    """The prefixes under which `user` may read: None for every key, [] for none."""
    if anonymous_reads():
        return None
    if user is None or not user.is_authenticated or not user.is_active:
        return []
    prefixes = None if _global(user, VIEW) else sorted(set(_prefixes(user)[VIEW]))
    token = _token(user)
    if token is None or token.prefix is None:
        return prefixes
    if prefixes is None:
        return [token.prefix]
    # Under both the token's prefix and one of the user's.
    narrowed = {p for p in prefixes if p.startswith(token.prefix)}
    narrowed |= {token.prefix for p in prefixes if token.prefix.startswith(p)}
    return sorted(narrowed)


def may_read_anything(user) -> bool:
    prefixes = readable_prefixes(user)
    return prefixes is None or bool(prefixes)


def has_schema_permission(user, action: str, key: str) -> bool:
    if action == VIEW:
        return has_key_permission(user, VIEW, key)
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    token = _token(user)
    if token is not None and not token.allows_key(action, key):
        return False
    return user.has_perm(f"configstore.{action}_schema")


def may_manage_access(user) -> bool:
    """Users, groups, tokens and prefix permissions: superusers and configstore.manage_access
    (with a token: a read-write one without a prefix)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    token = _token(user)
    if token is not None and (token.scope != "write" or token.prefix):
        return False
    return user.has_perm("configstore.manage_access")
