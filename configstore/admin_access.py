"""The admin's pages for the replicated identities: users (and their passwords), groups
with their prefix permissions, API tokens, and the access history.

Django's own UserAdmin and GroupAdmin, except that a save never writes a row: it submits
an access command through consensus (configstore.access) and returns once this node
applied it, saying at which log index; the applier writes the rows, on every node. When
the cluster cannot commit, the page says so and nothing changes. Only superusers and
holders of configstore.manage_access see these pages.
"""

from __future__ import annotations

from contextvars import ContextVar

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminPasswordChangeForm as OwnPasswordChangeForm
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.forms import AdminPasswordChangeForm
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Group, Permission, User
from django.contrib.auth.views import PasswordChangeView
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.urls import reverse

from configstore import access, exceptions, permissions
from configstore.admin_paging import BoundedList, choices_filter
from configstore.admin_views import _failure
from configstore.commands import ACCESS_OPS, GRANTABLE
from configstore.models import AccessHistory, ApiToken, PrefixPermission
from configstore.services import Actor, actor_of

_request: ContextVar = ContextVar("configstore_admin_request", default=None)


class NotCommitted(Exception):
    """A change the cluster did not commit; its text is what the page shows."""


def _submit(request, call):
    try:
        done = call()
    except exceptions.ConfigstoreError as error:
        failure = _failure(error)
        raise NotCommitted(f"{failure.title} {failure.text}") from None
    messages.info(request, f"Committed through the cluster at log index {done.index}.")
    return done


def grantable_permissions():
    codenames = [p.split(".", 1)[1] for p in GRANTABLE]
    return Permission.objects.filter(content_type__app_label="configstore", codename__in=codenames)


def _perm_names(perms) -> list[str]:
    return sorted(f"configstore.{p.codename}" for p in perms)


class ThroughConsensus:
    """ModelAdmin mixin: saves and deletes go through consensus (subclasses submit in
    save_model / save_related / delete_model and raise NotCommitted when the cluster does
    not commit); pages outside Django's atomic block (a change waits for the cluster)."""

    actions = None  # no bulk delete: it would delete rows directly

    def has_module_permission(self, request) -> bool:
        return permissions.may_manage_access(request.user)

    def has_view_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)

    def has_add_permission(self, request) -> bool:
        return permissions.may_manage_access(request.user)

    def has_change_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)

    def has_delete_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return self._changeform_view(request, object_id, form_url, extra_context)
        except NotCommitted as error:
            messages.error(request, str(error))
            return HttpResponseRedirect(request.get_full_path())

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return self._delete_view(request, object_id, extra_context)
        except NotCommitted as error:
            messages.error(request, str(error))
            return HttpResponseRedirect(request.get_full_path())

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name in ("permissions", "user_permissions"):
            kwargs["queryset"] = grantable_permissions()
        return super().formfield_for_manytomany(db_field, request, **kwargs)


class _ReplicatedPassword:
    """A password form whose validation commits the new hash through consensus (a failure
    is a form error: nothing changed) and whose save writes nothing."""

    password_field = "password1"

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        usable = cleaned.get("set_usable_password", True)
        hashed = make_password(cleaned[self.password_field] if usable else None)
        request = _request.get()
        actor = actor_of(request) if request else Actor(self.user.get_username(), "session")
        try:
            access.put_user(
                username=self.user.get_username(),
                password_hash=hashed,
                must_exist=True,
                actor=actor,
                reason="password changed in the admin",
            )
        except exceptions.ConfigstoreError as error:
            failure = _failure(error)
            # On the password field: the admin's password pages show no form-wide errors.
            raise ValidationError(
                {self.password_field: f"{failure.title} {failure.text}"}
            ) from None
        self.user.password = hashed
        return cleaned

    def set_password_and_save(self, user, *args, commit=True, **kwargs):
        return user  # committed by clean()


class ReplicatedAdminPasswordChangeForm(_ReplicatedPassword, AdminPasswordChangeForm):
    pass


class ReplicatedOwnPasswordChangeForm(_ReplicatedPassword, OwnPasswordChangeForm):
    password_field = "new_password1"


def password_change(request):
    """The admin's "change my password" page, committing through consensus."""
    token = _request.set(request)
    try:
        return PasswordChangeView.as_view(
            form_class=ReplicatedOwnPasswordChangeForm,
            success_url=reverse("admin:password_change_done"),
            extra_context=admin.site.each_context(request),
            template_name="registration/password_change_form.html",
        )(request)
    finally:
        _request.reset(token)


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class ReplicatedUserAdmin(ThroughConsensus, UserAdmin):
    change_password_form = ReplicatedAdminPasswordChangeForm

    def get_readonly_fields(self, request, obj=None):
        return ("username", "last_login", "date_joined") if obj else ()

    def user_change_password(self, request, id, form_url=""):
        token = _request.set(request)
        try:
            return super().user_change_password(request, id, form_url)
        finally:
            _request.reset(token)

    def save_model(self, request, obj, form, change) -> None:
        actor = actor_of(request)
        if not change:
            _submit(
                request,
                lambda: access.put_user(
                    username=obj.username,
                    password_hash=obj.password,
                    create_only=True,
                    actor=actor,
                    reason="added in the admin",
                ),
            )
            obj.pk = User.objects.get(username=obj.username).pk
            return
        data = form.cleaned_data
        _submit(
            request,
            lambda: access.put_user(
                username=obj.username,
                is_active=obj.is_active,
                is_staff=obj.is_staff,
                is_superuser=obj.is_superuser,
                email=obj.email,
                first_name=obj.first_name,
                last_name=obj.last_name,
                groups=sorted(g.name for g in data.get("groups", [])),
                permissions=_perm_names(data.get("user_permissions", [])),
                must_exist=True,
                actor=actor,
                reason="changed in the admin",
            ),
        )

    def save_related(self, request, form, formsets, change) -> None:
        pass  # groups and permissions went with the user's command

    def delete_model(self, request, obj) -> None:
        _submit(
            request,
            lambda: access.delete_user(
                username=obj.username, actor=actor_of(request), reason="deleted in the admin"
            ),
        )


class PrefixInline(admin.TabularInline):
    model = PrefixPermission
    fields = ("prefix", "can_view", "can_change", "can_delete")
    extra = 1

    def has_add_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)

    has_change_permission = has_delete_permission = has_add_permission

    def has_view_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)


@admin.register(Group)
class ReplicatedGroupAdmin(ThroughConsensus, GroupAdmin):
    inlines = [PrefixInline]

    def get_readonly_fields(self, request, obj=None):
        return ("name",) if obj else ()

    def save_model(self, request, obj, form, change) -> None:
        pass  # the group and its prefix permissions go as one command, in save_related

    def save_related(self, request, form, formsets, change) -> None:
        prefixes = []
        for formset in formsets:
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
            for row in formset.forms:
                data = getattr(row, "cleaned_data", None)
                if not data or data.get("DELETE") or data.get("prefix") is None:
                    continue
                prefixes.append(
                    {
                        "prefix": data["prefix"],
                        "view": data["can_view"],
                        "change": data["can_change"],
                        "delete": data["can_delete"],
                    }
                )
        name = form.instance.name
        _submit(
            request,
            lambda: access.put_group(
                name=name,
                permissions=_perm_names(form.cleaned_data.get("permissions", [])),
                prefixes=prefixes,
                create_only=not change,
                actor=actor_of(request),
                reason="changed in the admin",
            ),
        )
        form.instance.pk = Group.objects.get(name=name).pk

    def delete_model(self, request, obj) -> None:
        _submit(
            request,
            lambda: access.delete_group(
                name=obj.name, actor=actor_of(request), reason="deleted in the admin"
            ),
        )


class TokenForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name", "scope", "prefix", "expires_at")


@admin.register(ApiToken)
class ApiTokenAdmin(ThroughConsensus, admin.ModelAdmin):
    form = TokenForm
    list_display = ("token_id", "user", "name", "scope", "prefix", "expires_at", "created_at")
    list_filter = ("scope",)
    search_fields = ("token_id", "name", "user__username")

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # tokens never change: revoke one and create another

    def save_model(self, request, obj, form, change) -> None:
        done = _submit(
            request,
            lambda: access.create_token(
                username=obj.user.username,
                name=obj.name,
                scope=obj.scope,
                prefix=obj.prefix or None,
                expires_at=obj.expires_at,
                actor=actor_of(request),
                reason="created in the admin",
            ),
        )
        obj.pk = done.subject.split(":", 1)[1]
        messages.warning(
            request,
            f"The token's secret, shown only now (it is stored only as a hash): {done.secret}",
        )

    def delete_model(self, request, obj) -> None:
        _submit(
            request,
            lambda: access.delete_token(
                token_id=obj.token_id, actor=actor_of(request), reason="revoked in the admin"
            ),
        )


class ReadOnlyForManagers:
    """ModelAdmin mixin: a list and pages that access managers may read, nobody change."""

    actions = None

    def has_module_permission(self, request) -> bool:
        return permissions.may_manage_access(request.user)

    def has_view_permission(self, request, obj=None) -> bool:
        return permissions.may_manage_access(request.user)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AccessHistory)
class AccessHistoryAdmin(BoundedList, ReadOnlyForManagers, admin.ModelAdmin):
    list_display = ("index", "command", "subject", "outcome", "error", "actor", "node", "at")
    list_filter = (choices_filter("command", (*ACCESS_OPS, "malformed")), "outcome")
    search_fields = ("subject", "actor", "request_id")


@admin.register(PrefixPermission)
class PrefixPermissionAdmin(ReadOnlyForManagers, admin.ModelAdmin):
    """Every prefix permission, read-only: they are edited on their group's page, and
    committed with the group through consensus."""

    list_display = ("group", "prefix_shown", "can_view", "can_change", "can_delete")
    list_filter = ("group",)
    search_fields = ("prefix", "group__name")

    @admin.display(description="prefix", ordering="prefix")
    def prefix_shown(self, row: PrefixPermission) -> str:
        return row.prefix or "(every key)"
