"""The admin's pages for the replicated models (entries and schemas): add, change, delete,
history and revert, plus the cluster page.

Every write is a command the services submit through consensus; nothing here saves a
replicated row (the applier alone writes them, on every node). A page returns only once
this node has applied the command, and its message names the log index it committed at.
When the cluster cannot commit, the form comes back with the user's input and says so;
when the state moved on since the form was loaded, the save is refused as a conflict and
the page shows what changed meanwhile, by whom, as a diff.

Reads are of this node's applied state (stale reads): the admin stays readable when the
cluster has no quorum, and a form loaded from a lagging node can only ever conflict, never
overwrite a newer value.

The service exceptions are mapped to what the user sees once, in `_failure`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from configstore import conf, exceptions, permissions, selectors, services, transfer
from configstore.admin_diff import pretty, value_diff
from configstore.admin_forms import EntryForm, ReasonForm, idempotency_key, tracking
from configstore.models import History, PrefixPermission
from configstore.permissions import CHANGE, DELETE, VIEW
from consensus import api as consensus

TEMPLATES = "admin/configstore/"
HISTORY_PAGE_SIZE = 50
CONFLICT_CHANGES_SHOWN = 20
_NOTHING = object()


@dataclass(frozen=True)
class Failure:
    """Why nothing (or maybe nothing) was committed, as the page tells it."""

    title: str
    text: str
    request_id: str | None = None
    #: "unavailable" (the cluster), "not_confirmed" (may still commit), "refused" (input)
    kind: str = "refused"


def _failure(error: exceptions.ConfigstoreError) -> Failure:
    """The one mapping of service errors (other than conflicts) to what the admin shows."""
    node = consensus.node_id()
    if isinstance(error, exceptions.NoQuorum):
        return Failure(
            "Nothing was committed: the cluster has no quorum.",
            f"Node {node} cannot reach a majority of the cluster, so your change was not "
            "submitted. Your input is kept below: save again once a majority of the nodes is "
            "up (see the cluster status).",
            error.request_id,
            "unavailable",
        )
    if isinstance(error, exceptions.NotConfirmed):
        seconds = conf.store().write_timeout
        return Failure(
            "Not confirmed in time: your change may still commit.",
            f"It was submitted as request {error.request_id}, but node {node} did not see it "
            f"committed within {seconds:g} s. Check the history for that request before "
            "changing anything else. Saving this form again, unchanged, retries the same "
            "request: it is applied at most once.",
            error.request_id,
            "not_confirmed",
        )
    if isinstance(error, exceptions.IdempotencyKeyReused):
        return Failure(
            "Nothing was committed.",
            "An earlier save of this form was already applied with other content. Reload the "
            "page to edit the current version.",
            error.request_id,
        )
    text = error.detail
    if error.index is not None:
        text += f" (rejected by the cluster at log index {error.index}, request {error.request_id})"
    return Failure("Nothing was committed.", text, error.request_id)


def _history_url(**params) -> str:
    return reverse("admin:configstore_history_changelist") + "?" + urlencode(params)


class ReplicatedAdmin(admin.ModelAdmin):
    """The admin of a replicated model. Its add, change, delete and history pages are its
    own (ModelAdmin's would save rows): subclasses say how to read, check and write."""

    #: The form's field holding the JSON document ("value" or "schema").
    document_field = "value"
    #: Whether key_history is the schema's (put_schema/delete_schema) or the entry's.
    schema_history = False
    form_class: type = EntryForm
    actions = None  # no bulk actions: Django's "delete selected" would delete rows directly

    # ---------------------------------------------------------------- subclass hooks

    def current(self, key: str):
        raise NotImplementedError

    def may(self, user, action: str, key: str) -> bool:
        raise NotImplementedError

    def document(self, obj) -> Any:
        raise NotImplementedError

    def put(self, *, add: bool, **kwargs):
        """Submit a put; returns (the written object, the services' result)."""
        raise NotImplementedError

    def delete(self, **kwargs):
        raise NotImplementedError

    def form_extra(self, request, key: str | None) -> dict:
        """More context for the form page (e.g. the schemas that apply)."""
        return {}

    # ---------------------------------------------------------------- never write rows

    def save_model(self, request, obj, form, change):
        raise PermissionDenied("replicated rows are written by the applier only")

    def delete_model(self, request, obj):
        raise PermissionDenied("replicated rows are written by the applier only")

    def delete_queryset(self, request, queryset):
        raise PermissionDenied("replicated rows are written by the applier only")

    # ---------------------------------------------------------------- URLs

    def get_urls(self):
        return [
            path(
                "<path:object_id>/revert/<int:history_id>/",
                self.admin_site.admin_view(self.revert_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_revert",
            ),
            *super().get_urls(),
        ]

    def _url(self, name: str, *args) -> str:
        return reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_{name}", args=args)

    def _changelist(self, request) -> str:
        """The list, with the filters and search it was left with (Django's
        _changelist_filters, carried in the change page's URL)."""
        filters = request.GET.get("_changelist_filters")
        return self._url("changelist") + (f"?{filters}" if filters else "")

    def _context(self, request, **extra) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "node_id": consensus.node_id(),
            "applied_index": selectors.applied_index(),
            "document_field": self.document_field,
            "changelist_url": self._url("changelist"),
            **extra,
        }

    def _missing(self, request, key: str) -> HttpResponseRedirect:
        name = self.opts.verbose_name
        if selectors.key_history(key, schema=self.schema_history).exists():
            messages.warning(
                request,
                f"The {name} “{key}” does not exist (any more): its history is kept.",
            )
            return HttpResponseRedirect(self._url("history", quote(key)))
        messages.warning(request, f"The {name} “{key}” does not exist. Perhaps it was deleted?")
        return HttpResponseRedirect(self._url("changelist"))

    # ---------------------------------------------------------------- add and change

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        return self._form_view(request, None)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return self._form_view(request, unquote(object_id))

    def _form_view(self, request, key: str | None):
        add = key is None
        user = request.user
        current = None
        if not add:
            if not self.may(user, VIEW, key):
                raise PermissionDenied
            current = self.current(key)
            if current is None and request.method != "POST":
                return self._missing(request, key)
            # A POST for a key deleted meanwhile goes on: the save is refused as a conflict.
        editable = add or self.may(user, CHANGE, key)
        if request.method == "POST" and not editable:
            raise PermissionDenied
        failure = conflict = None
        if request.method == "POST":
            form = self.form_class(request.POST, add=add)
            if form.is_valid():
                target = form.cleaned_data["key"] if add else key
                if add and not self.may(user, CHANGE, target):
                    form.add_error("key", f"You may not add keys there: {target}")
                else:
                    try:
                        return self._save(request, form, target, add)
                    except exceptions.VersionConflict as error:
                        conflict = self._conflict(
                            error,
                            target,
                            form.cleaned_data,
                            mine=form.cleaned_data[self.document_field],
                            add=add,
                        )
                        form = self._rebind(form, conflict, add)
                    except exceptions.ConfigstoreError as error:
                        failure = self._form_failure(form, error)
            if add:  # show the schemas of the key that was asked for
                key = form.data.get("key") or None
        else:
            if add:
                initial = tracking(0, selectors.applied_index())
                if request.GET.get("key"):
                    initial["key"] = key = request.GET["key"]
                form = self.form_class(initial=initial, add=True)
            else:
                form = self.form_class(
                    initial={
                        self.document_field: self.document(current),
                        "description": current.description,
                        **tracking(current.version, current.modified_index),
                    },
                    add=False,
                )
        context = self._context(
            request,
            title=("Add " if add else ("Change " if editable else "View "))
            + self.opts.verbose_name,
            add=add,
            editable=editable,
            original=current,
            key=key,
            form=form,
            failure=failure,
            conflict=conflict,
            document_pretty=pretty(self.document(current)) if current is not None else "",
            may_delete=current is not None and self.may(user, DELETE, current.key),
            history_url=self._url("history", quote(key)) if not add else "",
            delete_url=self._url("delete", quote(current.key)) if current is not None else "",
            **self.form_extra(request, key),
        )
        return TemplateResponse(request, TEMPLATES + "replicated_form.html", context)

    def _save(self, request, form, key: str, add: bool) -> HttpResponseRedirect:
        data = form.cleaned_data
        document, expected = data[self.document_field], data["expected_version"]
        rid = idempotency_key(
            data["token"],
            "put",
            key,
            document,
            data["description"],
            expected,
            data["reason"],
        )
        self._precheck(request.user, rid, key, 0 if add else expected, add=add)
        written, result = self.put(
            add=add,
            key=key,
            document=document,
            actor=services.actor_of(request),
            reason=data["reason"],
            description=data["description"],
            expected_version=None if add else expected,
            idempotency_key=rid,
        )
        verb = "created" if result.created else "saved"
        message = (
            f"“{key}” {verb}: version {written.version}, committed at log index {result.index}."
        )
        log = self.log_addition if result.created else self.log_change
        log(request, written, f"{verb} at log index {result.index}: {data['reason']}")
        messages.success(request, message)
        if "_continue" in request.POST:
            return HttpResponseRedirect(self._url("change", quote(key)))
        if "_addanother" in request.POST:
            return HttpResponseRedirect(self._url("add"))
        return HttpResponseRedirect(self._changelist(request))

    def _precheck(self, user, rid: str, key: str, expected: int, *, add: bool = False) -> None:
        """Refuse, without submitting, a write this node already knows to conflict: its
        version is not the one the form was loaded at. (The applier decides for certain; this
        spares a log slot and a rejected history row.) A retry of a request that was already
        applied skips it: the services return that request's outcome."""
        if services.idempotent_outcome(actor=user.get_username(), idempotency_key=rid) is not None:
            return
        current = self.current(key)
        version = current.version if current is not None else 0
        if version != expected:
            if add:
                detail = f"{key} already exists (version {version}): nothing was submitted"
            else:
                detail = (
                    f"{key} is at version {version}, not {expected} as expected: "
                    "nothing was submitted"
                )
            raise exceptions.VersionConflict(
                detail, key=key, expected_version=expected, current_version=version
            )

    def _form_failure(self, form, error: exceptions.ConfigstoreError) -> Failure | None:
        """Put an input error on its field; return the failure to show for the others."""
        field = getattr(error, "field", None)
        if field == "value" or isinstance(error, exceptions.TooLarge):
            field = self.document_field
        if (
            isinstance(error, exceptions.InvalidInput | exceptions.TooLarge)
            and field in form.fields
        ):
            text = error.detail
            if error.index is not None:
                text += f" (rejected by the cluster at log index {error.index})"
            form.add_error(field, text)
            return None
        return _failure(error)

    # ---------------------------------------------------------------- conflicts

    def _conflict(
        self,
        error: exceptions.VersionConflict,
        key: str,
        data: dict,
        *,
        mine: Any = _NOTHING,
        add: bool = False,
    ) -> dict:
        """What the page shows of a conflict: the version the form was loaded at, the
        current one, who changed it since (the committed history after the form's index)
        and how (diffs), and what saving `mine` now would change (a delete has no `mine`)."""
        loaded_index = data["loaded_index"]
        current = self.current(key)
        changes = list(
            selectors.key_history(key, schema=self.schema_history).filter(
                outcome=History.COMMITTED, index__gt=loaded_index
            )
        )
        if changes:
            base, base_absent = changes[0].old_value, changes[0].old_version is None
        else:  # nothing recorded since the form's index: compare with the current state
            base = self.document(current) if current is not None else None
            base_absent = current is None
        current_doc = self.document(current) if current is not None else None
        return {
            "key": key,
            "add": add,
            "expected_version": data["expected_version"],
            "current": current,
            "current_version": current.version if current is not None else 0,
            "current_pretty": pretty(current_doc) if current is not None else "",
            "changes": changes[-CONFLICT_CHANGES_SHOWN:],
            "changes_hidden": max(0, len(changes) - CONFLICT_CHANGES_SHOWN),
            "meanwhile_diff": value_diff(
                base, current_doc, old_absent=base_absent, new_absent=current is None
            ),
            "yours_diff": (
                value_diff(current_doc, mine, old_absent=current is None)
                if mine is not _NOTHING
                else None
            ),
            "rejected_index": error.index,
            "request_id": error.request_id,
            "current_url": self._url("change", quote(key)) if current is not None else "",
            "history_url": self._url("history", quote(key)),
        }

    def _rebind(self, form, conflict: dict, add: bool):
        """The form again, with the user's input, now based on the current version: saving
        it again is a deliberate overwrite of what the page showed (an add stays an add)."""
        if add:
            return form
        data = form.data.copy()
        current = conflict["current"]
        data["expected_version"] = str(conflict["current_version"])
        data["loaded_index"] = str(
            current.modified_index if current is not None else selectors.applied_index()
        )
        rebound = type(form)(data, add=add)
        rebound.is_valid()
        return rebound

    # ---------------------------------------------------------------- delete

    def delete_view(self, request, object_id, extra_context=None):
        key = unquote(object_id)
        user = request.user
        if not self.may(user, VIEW, key):
            raise PermissionDenied
        current = self.current(key)
        if current is None and request.method != "POST":
            return self._missing(request, key)
        if not self.may(user, DELETE, key):
            raise PermissionDenied
        failure = conflict = None
        if request.method == "POST":
            form = ReasonForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                rid = idempotency_key(
                    data["token"], "delete", key, data["expected_version"], data["reason"]
                )
                try:
                    self._precheck(user, rid, key, data["expected_version"])
                    deleted = self.delete(
                        key=key,
                        actor=services.actor_of(request),
                        reason=data["reason"],
                        expected_version=data["expected_version"],
                        idempotency_key=rid,
                    )
                except exceptions.VersionConflict as error:
                    conflict = self._conflict(error, key, data)
                    form = self._rebind(form, conflict, False)
                    current = conflict["current"]
                except exceptions.ConfigstoreError as error:
                    failure = self._form_failure(form, error)
                else:
                    if current is not None:
                        self.log_deletions(request, [current])
                    messages.success(
                        request,
                        f"“{key}” deleted (it was version {deleted.version}): committed at "
                        f"log index {deleted.index}.",
                    )
                    return HttpResponseRedirect(self._changelist(request))
        else:
            form = ReasonForm(initial=tracking(current.version, current.modified_index))
        context = self._context(
            request,
            title=f"Delete {self.opts.verbose_name} “{key}”",
            key=key,
            original=current,
            document_pretty=pretty(self.document(current)) if current is not None else "",
            form=form,
            failure=failure,
            conflict=conflict,
            history_url=self._url("history", quote(key)),
            change_url=self._url("change", quote(key)),
        )
        return TemplateResponse(request, TEMPLATES + "replicated_delete.html", context)

    # ---------------------------------------------------------------- history and revert

    def history_view(self, request, object_id, extra_context=None):
        key = unquote(object_id)
        user = request.user
        if not self.may(user, VIEW, key):
            raise PermissionDenied
        current = self.current(key)
        rows = selectors.key_history(key, schema=self.schema_history).order_by("-index", "-id")
        if current is None and not rows.exists():
            return self._missing(request, key)
        page = Paginator(rows, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
        may_change = self.may(user, CHANGE, key)
        current_text = pretty(self.document(current)) if current is not None else None
        items = []
        for row in page:
            committed = row.outcome == History.COMMITTED
            put = row.operation in ("put", "put_schema")
            items.append(
                {
                    "row": row,
                    "what": _what(row),
                    "diff": value_diff(
                        row.old_value,
                        row.new_value,
                        old_absent=row.old_version is None,
                        new_absent=not put,
                    )
                    if committed
                    else None,
                    "revert_url": self._url("revert", quote(key), row.id)
                    if committed and put and may_change and pretty(row.new_value) != current_text
                    else "",
                    "request_url": _history_url(request_id=row.request_id),
                }
            )
        context = self._context(
            request,
            title=f"History of “{key}”",
            key=key,
            original=current,
            items=items,
            page=page,
            change_url=self._url("change", quote(key)) if current is not None else "",
        )
        return TemplateResponse(request, TEMPLATES + "replicated_history.html", context)

    def revert_view(self, request, object_id, history_id):
        key = unquote(object_id)
        user = request.user
        if not self.may(user, CHANGE, key):
            raise PermissionDenied
        row = (
            selectors.key_history(key, schema=self.schema_history)
            .filter(id=history_id, outcome=History.COMMITTED, operation__in=("put", "put_schema"))
            .first()
        )
        if row is None:
            raise Http404(f"no committed value of {key} with history id {history_id}")
        current = self.current(key)
        failure = conflict = None
        if request.method == "POST":
            form = ReasonForm(request.POST)
            if form.is_valid():
                data = form.cleaned_data
                expected = data["expected_version"]
                rid = idempotency_key(
                    data["token"], "revert", key, row.id, expected, data["reason"]
                )
                try:
                    self._precheck(user, rid, key, expected)
                    written, result = self.put(
                        add=False,
                        key=key,
                        document=row.new_value,
                        actor=services.actor_of(request),
                        reason=data["reason"],
                        description=None,
                        expected_version=expected,
                        idempotency_key=rid,
                    )
                except exceptions.VersionConflict as error:
                    conflict = self._conflict(error, key, data, mine=row.new_value)
                    form = self._rebind(form, conflict, False)
                    current = conflict["current"]
                except exceptions.ConfigstoreError as error:
                    failure = self._form_failure(form, error)
                else:
                    self.log_change(
                        request, written, f"reverted at log index {result.index}: {data['reason']}"
                    )
                    messages.success(
                        request,
                        f"“{key}” reverted to the value of log index {row.index}: version "
                        f"{written.version}, committed at log index {result.index}.",
                    )
                    return HttpResponseRedirect(self._url("history", quote(key)))
        else:
            form = ReasonForm(
                initial=tracking(
                    current.version if current is not None else 0,
                    current.modified_index if current is not None else selectors.applied_index(),
                )
            )
        current_doc = self.document(current) if current is not None else None
        context = self._context(
            request,
            title=f"Revert “{key}” to the value of log index {row.index}",
            key=key,
            original=current,
            row=row,
            value_pretty=pretty(row.new_value),
            diff=value_diff(current_doc, row.new_value, old_absent=current is None),
            form=form,
            failure=failure,
            conflict=conflict,
            history_url=self._url("history", quote(key)),
        )
        return TemplateResponse(request, TEMPLATES + "revert.html", context)


def _what(row: History) -> str:
    if row.outcome != History.COMMITTED:
        return f"rejected: {row.error or 'refused'}"
    if row.operation in ("delete", "delete_schema"):
        return "deleted"
    return "created" if row.old_version is None else "changed"


# ------------------------------------------------------------------------- cluster page


def cluster_view(request):
    """Every node as it last published itself: reachability, role, the leader it follows,
    ballots, chosen (commit) and applied index, lag, and when it last heard each peer."""
    state = consensus.cluster_status()
    quorum, _ = consensus.node_has_quorum()
    now = time.time()
    nodes = []
    for node in state["nodes"]:
        peers = node.get("peers") or {}
        nodes.append(
            {
                **node,
                "is_leader": node["node_id"] == state["leader"],
                "is_here": node["node_id"] == consensus.node_id(),
                "age": round(now - node["time"], 1) if node.get("time") else None,
                "contacts": [
                    {"peer": peer, "seconds": None if seconds is None else round(seconds, 1)}
                    for peer, seconds in sorted(peers.items())
                ],
            }
        )
    refresh = request.GET.get("refresh", "")
    context = {
        **admin.site.each_context(request),
        "title": "Cluster status",
        "state": state,
        "nodes": nodes,
        "node_id": consensus.node_id(),
        "here_has_quorum": quorum,
        "refresh": int(refresh) if refresh.isdigit() and 0 < int(refresh) <= 60 else 0,
        "served": transfer.served(),
    }
    return TemplateResponse(request, TEMPLATES + "cluster.html", context)


def may_anywhere(user, action: str) -> bool:
    """Whether `user` may do `action` on some key (an add or a list page is allowed)."""
    if not (user.is_active and user.is_authenticated):
        return False
    if action == VIEW:
        return permissions.may_read_anything(user)
    if user.has_perm(f"configstore.{action}_entry"):
        return True
    flag = {CHANGE: "can_change", DELETE: "can_delete"}[action]
    return PrefixPermission.objects.filter(group__user=user, **{flag: True}).exists()
