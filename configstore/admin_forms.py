"""The admin's forms. They check only what a form can (JSON syntax, required fields); the
services check everything else (key syntax, sizes, schemas) and the admin maps their
exceptions onto these forms' fields (configstore.admin_views).

Every form that writes carries, in hidden fields, the version it was loaded at
(`expected_version`, 0: the key did not exist), the log index of that state
(`loaded_index`, to show what changed since) and a random `token`. The idempotency key of a
save is derived from the token and the exact command (`idempotency_key`): submitting the
same form twice (a double click, or "save again" after a timeout, through any node) is one
request, applied at most once; changing anything makes it a new request.
"""

from __future__ import annotations

import hashlib
import json
import secrets

from django import forms

from configstore import commands
from configstore.admin_diff import pretty
from configstore.validation import loads


class RawJSON(str):
    """Text exactly as the user typed it: shown back unchanged when a form is re-rendered."""


class JSONEditor(forms.Textarea):
    """A textarea that admin.js turns into a JSON editor: validated as you type (the error
    shown inline, with its line and column), with a Format button."""

    def __init__(self, attrs=None):
        defaults = {
            "class": "cs-json-editor vLargeTextField",
            "rows": 14,
            "spellcheck": "false",
            "autocomplete": "off",
            "data-json-editor": "",
        }
        super().__init__({**defaults, **(attrs or {})})


class JSONValueField(forms.Field):
    """Any JSON value (null, 0, "", [] and {} included), parsed strictly: no NaN or Infinity.
    Cleans to the parsed value; an empty text is "required"."""

    widget = JSONEditor
    default_error_messages = {
        "required": 'Enter a JSON value (for example 42, "text", true, null, [1, 2] or '
        '{"key": "value"}).',
        "invalid": "Not valid JSON: %(error)s",
    }

    def to_python(self, text):
        if text is None or not str(text).strip():
            raise forms.ValidationError(self.error_messages["required"], code="required")
        try:
            return loads(text)
        except (ValueError, RecursionError) as error:
            raise forms.ValidationError(
                self.error_messages["invalid"], code="invalid", params={"error": error}
            ) from None

    def validate(self, value) -> None:
        pass  # to_python refused empty text; every parsed value (null too) is a value

    def bound_data(self, data, initial):
        return RawJSON(data) if data is not None else None

    def prepare_value(self, value):
        if isinstance(value, RawJSON):
            return value
        return pretty(value)


class _Tracked(forms.Form):
    """The hidden fields of every form that writes."""

    expected_version = forms.IntegerField(widget=forms.HiddenInput, min_value=0)
    loaded_index = forms.IntegerField(widget=forms.HiddenInput, min_value=0)
    token = forms.RegexField(regex=r"^[0-9a-f]{32}$", widget=forms.HiddenInput)

    def __init__(self, *args, add: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not add:
            self.fields.pop("key", None)  # a change names its key in the URL


REASON_HELP = "Why: recorded in the history with your change, with your name and the time."


def reason_field() -> forms.CharField:
    return forms.CharField(
        max_length=commands.MAX_REASON_LENGTH,
        strip=True,
        help_text=REASON_HELP,
        widget=forms.TextInput(attrs={"class": "vLargeTextField", "autocomplete": "off"}),
    )


class EntryForm(_Tracked):
    """Add (the key is asked for) or change (the key is fixed) an entry."""

    key = forms.CharField(
        max_length=256,
        help_text="Letters, digits and . _ - /; '/' makes namespaces, e.g. payments/timeout_ms.",
        widget=forms.TextInput(attrs={"class": "vTextField", "autocomplete": "off"}),
    )
    value = JSONValueField(help_text="Any JSON value. Checked as you type and again on save.")
    description = forms.CharField(
        required=False,
        max_length=commands.MAX_DESCRIPTION_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2, "class": "vLargeTextField"}),
    )
    reason = reason_field()


class SchemaForm(_Tracked):
    key = forms.CharField(
        max_length=257,
        help_text="A key (payments/timeout_ms), or a namespace ending in '/' (payments/): "
        "then every key under it must satisfy the schema.",
        widget=forms.TextInput(attrs={"class": "vTextField", "autocomplete": "off"}),
    )
    schema = JSONValueField(
        help_text="A JSON Schema (Draft 2020-12 unless $schema names another). Current values "
        "under it must already satisfy it."
    )
    description = forms.CharField(
        required=False,
        max_length=commands.MAX_DESCRIPTION_LENGTH,
        widget=forms.Textarea(attrs={"rows": 2, "class": "vLargeTextField"}),
    )
    reason = reason_field()


class ReasonForm(_Tracked):
    """Delete and revert: nothing to enter but the reason."""

    reason = reason_field()


def new_token() -> str:
    return secrets.token_hex(16)


def tracking(version: int, index: int) -> dict:
    """Initial values of the hidden fields of a form loaded now, at `version` (0: absent) of
    the state of log index `index`."""
    return {"expected_version": version, "loaded_index": index, "token": new_token()}


def idempotency_key(token: str, *parts: object) -> str:
    """The idempotency key of a command submitted from a form: the same form (token) with the
    same content is the same request (the services namespace it by the username)."""
    digest = hashlib.sha256(
        json.dumps([token, *parts], sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()
    return f"admin.{digest[:32]}"
