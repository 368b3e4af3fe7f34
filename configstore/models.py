"""The replicated state: configuration entries, their JSON Schemas and the audit history.
Written only by the applier (configstore.statemachine), identically on every node; never
save these models from anywhere else (configstore.services submits commands instead).

Identities are replicated too (configstore.access): Django's users, groups and their
permissions, PrefixPermission and ApiToken are written only by the applier, from access
commands, with a row in AccessHistory for each change. TokenUse is the one node-local table
here (when this node last saw a token used).
"""

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models

from configstore.validation import InvalidValue, key_error, schema_target_error
from configstore.validation import validate_prefix as _validate_prefix


def validate_key(value: str) -> None:
    if (error := key_error(value)) is not None:
        raise ValidationError(error, code="invalid_key")


def validate_schema_target(value: str) -> None:
    if (error := schema_target_error(value)) is not None:
        raise ValidationError(error, code="invalid_key")


def validate_prefix(value: str) -> None:
    try:
        _validate_prefix(value)
    except InvalidValue as error:
        raise ValidationError(str(error), code="invalid_prefix") from None


class Entry(models.Model):
    #: Collation "C": keys sort bytewise (the same order on every node, whatever its
    #: database's locale), and the primary key's btree serves `key LIKE 'prefix%'` and
    #: the key-ordered pages (keyset pagination) in one index.
    key = models.CharField(
        max_length=256, primary_key=True, validators=[validate_key], db_collation="C"
    )
    value = models.JSONField()
    description = models.TextField(blank=True, default="")
    version = models.PositiveBigIntegerField(help_text="1 on create, +1 per change")
    created_index = models.BigIntegerField(help_text="the log index that created the entry")
    modified_index = models.BigIntegerField(help_text="the log index that last changed it")
    updated_by = models.CharField(max_length=150, blank=True, default="")
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "configstore_entry"
        ordering = ["key"]
        verbose_name_plural = "entries"
        # The admin's substring search (key, description, value) has trigram GIN indexes
        # where PostgreSQL has pg_trgm: migration 0006, outside the model state.

    def __str__(self) -> str:
        return self.key


class Schema(models.Model):
    """A JSON Schema that every value of a key, or of every key under a namespace, must
    satisfy. `key` is a key ("payments/timeout_ms") or a namespace ending in '/'
    ("payments/"); a value must satisfy every schema that applies to its key."""

    key = models.CharField(
        max_length=257, primary_key=True, validators=[validate_schema_target], db_collation="C"
    )
    schema = models.JSONField()
    description = models.TextField(blank=True, default="")
    version = models.PositiveBigIntegerField()
    created_index = models.BigIntegerField()
    modified_index = models.BigIntegerField()
    updated_by = models.CharField(max_length=150, blank=True, default="")
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "configstore_schema"
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    @property
    def is_namespace(self) -> bool:
        return self.key.endswith("/")


class History(models.Model):
    """The audit history: one immutable row per key an applied command touched (one row for
    a put, a delete or a schema change; one per op of a txn, all with the txn's index and
    request id), committed or rejected. A database trigger refuses UPDATE and DELETE.

    For a committed row, old_* is the state before and new_* after (a delete has no new
    value; a create has no old version). For a rejected row, old_* is the state the command
    met and new_value the value it asked for; new_version is null. A rejected command that
    could not be read at all has operation "malformed" and whatever key it named."""

    COMMITTED, REJECTED = "committed", "rejected"
    OUTCOMES = [(COMMITTED, "committed"), (REJECTED, "rejected")]

    id = models.BigAutoField(primary_key=True)
    index = models.BigIntegerField(help_text="the log index (slot) of the command")
    request_id = models.TextField()
    command = models.CharField(
        max_length=16, help_text="put, delete, txn, put_schema, delete_schema or malformed"
    )
    operation = models.CharField(
        max_length=16, help_text="what happened to this key: put, delete, put_schema, ..."
    )
    key = models.CharField(max_length=257, blank=True, default="", db_collation="C")
    old_value = models.JSONField(null=True, blank=True)
    new_value = models.JSONField(null=True, blank=True)
    old_version = models.PositiveBigIntegerField(null=True, blank=True)
    new_version = models.PositiveBigIntegerField(null=True, blank=True)
    actor = models.CharField(max_length=150, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    node = models.CharField(max_length=64, blank=True, default="", help_text="took the request")
    outcome = models.CharField(max_length=16, choices=OUTCOMES)
    error = models.CharField(max_length=32, blank=True, default="", help_text="rejection code")
    detail = models.TextField(blank=True, default="", help_text="why it was rejected")
    at = models.DateTimeField(
        null=True, help_text="when the request was taken (the submitting node's clock)"
    )
    idempotency_key = models.TextField(
        blank=True, default="", help_text="the request's idempotency key: <actor>:<client key>"
    )

    class Meta:
        db_table = "configstore_history"
        ordering = ["index", "id"]
        verbose_name_plural = "history"
        # Every list of history rows is ordered by (index, id), forwards (the API) or
        # backwards (the admin), and paged by keyset: each filter has a btree that ends in
        # (index, id), so a page is a range scan of its own length whatever the table's.
        # key: equality and LIKE 'prefix%' (collation "C"). The admin's substring search has
        # trigram GIN indexes where PostgreSQL has pg_trgm (migration 0006).
        indexes = [
            models.Index(fields=["index", "id"], name="configstore_history_order"),
            models.Index(fields=["key", "index", "id"], name="configstore_history_key_order"),
            models.Index(fields=["actor", "index", "id"], name="configstore_history_actor"),
            models.Index(fields=["outcome", "index", "id"], name="configstore_history_outcome"),
            models.Index(fields=["operation", "index", "id"], name="configstore_history_operation"),
            models.Index(fields=["command", "index", "id"], name="configstore_history_command"),
            models.Index(fields=["request_id"], name="configstore_history_request"),
        ]

    def __str__(self) -> str:
        return f"{self.index} {self.operation} {self.key} ({self.outcome})"


class IdempotencyRecord(models.Model):
    """The first command applied under an idempotency key ("<actor>:<client key>"), with its
    fingerprint (configstore.commands.fingerprint) and outcome. Replicated state, written
    only by the applier: a later command under the same key, while this record is live, is
    not applied -- it gets this outcome if its fingerprint is the same, and is rejected
    (idempotency_key_reused) if not. A record is live for IDEMPOTENCY_WINDOW log indexes
    after its own (configstore.statemachine); older ones are ignored, then deleted."""

    key = models.TextField(primary_key=True)
    fingerprint = models.CharField(max_length=64)
    request_id = models.TextField(help_text="the request id of the command that was applied")
    index = models.BigIntegerField(help_text="the log index it was applied at")
    outcome = models.CharField(max_length=16, choices=History.OUTCOMES)
    result = models.JSONField(help_text="the state machine's result for it")

    class Meta:
        db_table = "configstore_idempotency"
        indexes = [models.Index(fields=["index"], name="configstore_idempotency_index")]

    def __str__(self) -> str:
        return f"{self.key} -> {self.request_id} at {self.index} ({self.outcome})"


class PrefixPermission(models.Model):
    """Grants a group rights on every key under `prefix` ("" = every key), in addition to
    the global Django permissions (view/change/delete entry). Example: a group holding
    configstore.view_entry and PrefixPermission(prefix="payments/", can_change=True,
    can_delete=True) may edit payments/ and only read the rest."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="configstore_prefixes")
    prefix = models.CharField(max_length=257, blank=True, default="", validators=[validate_prefix])
    can_view = models.BooleanField(default=True)
    can_change = models.BooleanField(default=False)
    can_delete = models.BooleanField(default=False)

    class Meta:
        db_table = "configstore_prefix_permission"
        ordering = ["group__name", "prefix"]
        constraints = [
            models.UniqueConstraint(fields=["group", "prefix"], name="configstore_prefix_unique")
        ]

    def __str__(self) -> str:
        rights = [
            r
            for r, on in (
                ("view", self.can_view),
                ("change", self.can_change),
                ("delete", self.can_delete),
            )
            if on
        ]
        return f"{self.group}: {self.prefix or '*'} ({', '.join(rights) or 'nothing'})"


class ApiToken(models.Model):
    """An API token. Only the SHA-256 of its secret is stored (the secret is shown once, when
    it is created); `token_id` is its public name in the API, the admin and the history.
    `scope` "read" allows reads only; `prefix`, when not null, restricts the token to keys
    under it (on top of its user's own rights, never beyond them); after `expires_at` it
    authenticates nothing. Replicated: written only by the applier."""

    READ, WRITE = "read", "write"
    SCOPES = [(READ, "read-only"), (WRITE, "read-write")]

    token_id = models.CharField(max_length=32, primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="configstore_tokens"
    )
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the secret")
    scope = models.CharField(max_length=8, choices=SCOPES, default=WRITE)
    prefix = models.CharField(
        max_length=257, null=True, blank=True, help_text="only keys under it (null: any)"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    created_index = models.BigIntegerField()

    class Meta:
        db_table = "configstore_api_token"
        ordering = ["user__username", "name", "token_id"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.token_id})"


class TokenUse(models.Model):
    """When this node last authenticated a request with a token (node-local, not replicated;
    written at most once a minute per token and web process)."""

    token_id = models.CharField(max_length=32, primary_key=True)
    last_used_at = models.DateTimeField()

    class Meta:
        db_table = "configstore_token_use"


class AccessHistory(models.Model):
    """The audit history of identities: one immutable row per access command applied
    (committed or rejected): who changed whose access, what (old and new, never a password
    hash or a token secret), why, at which log index. Like History, append-only."""

    id = models.BigAutoField(primary_key=True)
    index = models.BigIntegerField()
    request_id = models.TextField()
    command = models.CharField(max_length=16, help_text="put_user, delete_user, put_group, ...")
    subject = models.CharField(max_length=200, help_text="user:NAME, group:NAME or token:ID")
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    actor = models.CharField(max_length=150, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    node = models.CharField(max_length=64, blank=True, default="")
    outcome = models.CharField(max_length=16, choices=History.OUTCOMES)
    error = models.CharField(max_length=32, blank=True, default="")
    detail = models.TextField(blank=True, default="")
    at = models.DateTimeField(null=True)

    class Meta:
        db_table = "configstore_access_history"
        ordering = ["index", "id"]
        verbose_name_plural = "access history"
        indexes = [
            models.Index(fields=["index", "id"], name="configstore_access_order"),
            models.Index(fields=["subject", "index", "id"], name="configstore_access_subject"),
        ]
        permissions = [("manage_access", "Can manage users, groups, tokens and permissions")]

    def __str__(self) -> str:
        return f"{self.index} {self.command} {self.subject} ({self.outcome})"
