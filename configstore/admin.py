"""The Django admin of the config store.

Entries and schemas are replicated: their add, change, delete, history and revert pages
submit commands through consensus (configstore.admin_views), never save a row. The audit
history is read-only. Users, groups (with their prefix permissions), API tokens and the
access history are configstore.admin_access's pages: replicated too, through consensus.
The cluster page (admin_views.cluster_view, at /admin/cluster/) is linked from the index.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils.html import format_html

from configstore import permissions, selectors, services
from configstore.admin_diff import pretty, preview
from configstore.admin_forms import SchemaForm
from configstore.admin_paging import BoundedList, choices_filter
from configstore.admin_views import ReplicatedAdmin, may_anywhere
from configstore.commands import SCHEMA_OPS, WRITE_OPS
from configstore.models import Entry, History, Schema
from configstore.permissions import CHANGE, DELETE, VIEW
from configstore.validation import InvalidValue, validate_prefix

admin.site.site_header = "configstore"
admin.site.site_title = "configstore admin"
admin.site.index_title = "Replicated configuration"
admin.site.site_url = None  # no public site beside the admin and the API
# admin/index.html itself is django.contrib.admin's (it comes first in INSTALLED_APPS).
admin.site.index_template = "admin/configstore/site_index.html"

PREVIEW_TITLE_CHARS = 2000


def _value_cell(value) -> str:
    text = pretty(value)
    if len(text) > PREVIEW_TITLE_CHARS:
        text = text[: PREVIEW_TITLE_CHARS - 1] + "…"
    return format_html('<code class="cs-preview" title="{}">{}</code>', text, preview(value))


class NamespaceFilter(admin.SimpleListFilter):
    """Browse by namespace, as in Consul's KV UI: the namespaces above the current one and
    the ones directly under it. ?prefix= takes any prefix."""

    title = "namespace"
    parameter_name = "prefix"

    def lookups(self, request, model_admin):
        prefix = self._prefix()
        current = prefix if prefix.endswith("/") else prefix.rpartition("/")[0] + "/"
        current = "" if current == "/" else current
        parts = current.split("/")[:-1]
        above = ["/".join(parts[: i + 1]) + "/" for i in range(len(parts))]
        below = selectors.entry_namespaces(
            prefix=current, restrict=permissions.readable_prefixes(request.user)
        )
        return [(p, p) for p in above + below]

    def _prefix(self) -> str:
        try:
            return validate_prefix(self.value() or "")
        except InvalidValue:
            return ""

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        try:
            prefix = validate_prefix(self.value())
        except InvalidValue as error:
            raise admin.options.IncorrectLookupParameters(str(error)) from None
        return queryset.filter(key__startswith=prefix)


@admin.register(Entry)
class EntryAdmin(BoundedList, ReplicatedAdmin):
    list_display = ("key", "value_preview", "version", "modified_index", "updated_by", "updated_at")
    list_filter = (NamespaceFilter,)
    search_fields = ("key", "description", "value")
    search_help_text = "Searches keys, descriptions and values (as JSON text)."
    list_per_page = 50  # the admin renders a row in ~0.4 ms of CPU: a page stays ~25 ms

    @admin.display(description="value")
    def value_preview(self, entry: Entry) -> str:
        return _value_cell(entry.value)

    def get_queryset(self, request):
        return selectors.entry_list(restrict=permissions.readable_prefixes(request.user))

    # Django's permission hooks, answered by key: global permissions or per-prefix ones.
    def has_module_permission(self, request) -> bool:
        return may_anywhere(request.user, VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return may_anywhere(request.user, VIEW)
        return permissions.has_key_permission(request.user, VIEW, obj.key)

    def has_add_permission(self, request) -> bool:
        return may_anywhere(request.user, CHANGE)

    def has_change_permission(self, request, obj=None) -> bool:
        if obj is None:
            return may_anywhere(request.user, CHANGE)
        return permissions.has_key_permission(request.user, CHANGE, obj.key)

    def has_delete_permission(self, request, obj=None) -> bool:
        if obj is None:
            return may_anywhere(request.user, DELETE)
        return permissions.has_key_permission(request.user, DELETE, obj.key)

    # ReplicatedAdmin's hooks.
    def current(self, key):
        return selectors.entry_get(key)

    def may(self, user, action, key):
        return permissions.has_key_permission(user, action, key)

    def document(self, entry):
        return entry.value

    def put(self, *, add, document, **kwargs):
        written = services.entry_put(value=document, create_only=add, **kwargs)
        return written.entry, written

    def delete(self, **kwargs):
        return services.entry_delete(**kwargs)

    def form_extra(self, request, key):
        found = []
        if key:
            for target, schema in selectors.schemas_for_key(key):
                url = ""
                if permissions.has_schema_permission(request.user, VIEW, target):
                    url = reverse("admin:configstore_schema_change", args=[quote(target)])
                found.append({"key": target, "pretty": pretty(schema), "url": url})
        return {"schemas": found}


@admin.register(Schema)
class SchemaAdmin(BoundedList, ReplicatedAdmin):
    """JSON Schemas attached to a key or a namespace; written through consensus too."""

    form_class = SchemaForm
    document_field = "schema"
    schema_history = True
    list_display = (
        "key",
        "schema_preview",
        "version",
        "modified_index",
        "updated_by",
        "updated_at",
    )
    search_fields = ("key", "description")

    @admin.display(description="schema")
    def schema_preview(self, schema: Schema) -> str:
        return _value_cell(schema.schema)

    def get_queryset(self, request):
        return selectors.schema_list(restrict=permissions.readable_prefixes(request.user))

    def has_module_permission(self, request) -> bool:
        return may_anywhere(request.user, VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None:
            return may_anywhere(request.user, VIEW)
        return permissions.has_schema_permission(request.user, VIEW, obj.key)

    def has_add_permission(self, request) -> bool:
        return request.user.has_perm("configstore.change_schema")

    def has_change_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("configstore.change_schema")

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("configstore.delete_schema")

    def current(self, key):
        return selectors.schema_get(key)

    def may(self, user, action, key):
        return permissions.has_schema_permission(user, action, key)

    def document(self, schema):
        return schema.schema

    def put(self, *, add, document, **kwargs):
        if add:  # create only: a schema's "must not exist" is expected version 0
            kwargs["expected_version"] = 0
        written = services.schema_put(schema=document, **kwargs)
        return written.schema, written

    def delete(self, **kwargs):
        return services.schema_delete(**kwargs)


@admin.register(History)
class HistoryAdmin(BoundedList, admin.ModelAdmin):
    """The audit history: every command the cluster applied, committed or rejected, as
    every node recorded it. Read-only: nobody adds, changes or deletes it."""

    list_display = (
        "index",
        "key_link",
        "operation",
        "outcome",
        "new_version",
        "actor",
        "reason",
        "node",
        "at",
    )
    list_filter = (
        "outcome",
        choices_filter("operation", ("put", "delete", *SCHEMA_OPS, "malformed")),
        choices_filter("command", (*WRITE_OPS, *SCHEMA_OPS, "malformed")),
    )
    search_fields = ("key", "actor", "reason", "request_id")
    search_help_text = "Searches keys, actors, reasons and request ids."
    ordering = ("-index", "-id")
    list_per_page = 50  # the admin renders a row in ~0.4 ms of CPU: a page stays ~25 ms
    actions = None

    @admin.display(description="key", ordering="key")
    def key_link(self, row: History) -> str:
        if not row.key:
            return "-"
        schema = row.operation in ("put_schema", "delete_schema") or row.key.endswith("/")
        name = "schema" if schema else "entry"
        url = reverse(f"admin:configstore_{name}_history", args=[quote(row.key)])
        return format_html('<a href="{}">{}</a>', url, row.key)

    def get_queryset(self, request):
        restrict = permissions.readable_prefixes(request.user)
        return selectors.history_list(restrict=restrict).order_by("-index", "-id")

    def has_module_permission(self, request) -> bool:
        return may_anywhere(request.user, VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        if obj is None or not obj.key:
            return may_anywhere(request.user, VIEW)
        return permissions.has_key_permission(request.user, VIEW, obj.key)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


from configstore import admin_access  # noqa: E402,F401 - registers the identities' pages
