"""One serializer per input and output shape. Inputs only check the shape (types, required
fields, no unknown fields); what a key or a value may be is the services' business."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from rest_framework import serializers
from rest_framework.settings import api_settings

from configstore.api.openapi import MAX_BIGINT
from configstore.commands import MAX_DESCRIPTION_LENGTH, MAX_REASON_LENGTH
from configstore.models import Entry, History, Schema
from configstore.selectors import ENTRY_FIELDS
from configstore.validation import InvalidValue, check_json


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know: a typo ("valeu") is an error, not a silent no-op.
    The OpenAPI schema of every input is written out in configstore.api.openapi."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {api_settings.NON_FIELD_ERRORS_KEY: [f"unknown field(s): {', '.join(unknown)}"]}
                )
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A JSON string, not a number or a boolean turned into one (DRF's CharField would)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer, not a string or boolean turned into one. A number with no fractional
    part (`3.0`) is the integer it equals, as JSON Schema's `integer` type (and so the
    OpenAPI contract) says; any other float is refused."""

    def to_internal_value(self, data):
        if isinstance(data, float) and data.is_integer():
            data = int(data)
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class StoredJSONField(serializers.JSONField):
    """Any JSON value the store can keep (configstore.validation.check_json: no NUL, finite
    numbers, nesting at most 100): refused with the body's other shape errors, before any
    header is looked at."""

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        try:
            check_json(data, self.field_name or "value")
        except InvalidValue as error:
            raise serializers.ValidationError(str(error)) from None
        return data


def _reason():
    return StrictCharField(
        required=False, allow_blank=True, max_length=MAX_REASON_LENGTH, trim_whitespace=False
    )


def _description():
    return StrictCharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        max_length=MAX_DESCRIPTION_LENGTH,
        trim_whitespace=False,
    )


def _key():
    return StrictCharField(trim_whitespace=False, max_length=1024)


# ------------------------------------------------------------------------------ outputs


class EntrySerializer(serializers.ModelSerializer):
    value = serializers.JSONField(help_text="any JSON")

    class Meta:
        model = Entry
        fields = list(ENTRY_FIELDS)


@cache
def _entry_fields() -> dict:
    return dict(EntrySerializer().fields)


def entry_data(entry: Entry) -> dict:
    """EntrySerializer(entry).data, without building the serializer's fields again for
    every response (a ModelSerializer introspects its model each time it is made)."""
    data = {}
    for name, field in _entry_fields().items():
        value = field.get_attribute(entry)
        data[name] = None if value is None else field.to_representation(value)
    return data


class SchemaSerializer(serializers.ModelSerializer):
    schema = serializers.JSONField(help_text="a JSON Schema (Draft 2020-12 by default)")

    class Meta:
        model = Schema
        fields = [
            "key",
            "schema",
            "description",
            "version",
            "created_index",
            "modified_index",
            "updated_by",
            "updated_at",
        ]


class HistorySerializer(serializers.ModelSerializer):
    old_value = serializers.JSONField(allow_null=True)
    new_value = serializers.JSONField(allow_null=True)

    class Meta:
        model = History
        fields = [
            "index",
            "request_id",
            "command",
            "operation",
            "key",
            "old_value",
            "new_value",
            "old_version",
            "new_version",
            "actor",
            "reason",
            "node",
            "outcome",
            "error",
            "detail",
            "at",
        ]


HISTORY_CSV_FIELDS = HistorySerializer.Meta.fields


@cache
def page_serializer(row: type[serializers.Serializer]) -> type[serializers.Serializer]:
    """The shape of one page of a keyset-paginated list of `row`s (configstore.api.pagination):
    {"next", "next_cursor", "results"}; a component "<Row>Page" in the OpenAPI schema (one
    class per row class: the schema names it once)."""
    name = row.__name__.removesuffix("Serializer") + "Page"
    return type(
        name,
        (serializers.Serializer,),
        {
            "next": serializers.URLField(
                allow_null=True,
                help_text="the URL of the next page (this one's filters and the cursor); "
                "null on the last page",
            ),
            "next_cursor": serializers.CharField(
                allow_null=True,
                help_text="the next page's ?cursor= (opaque); null on the last page",
            ),
            "results": row(many=True),
        },
    )


class TxnResultSerializer(serializers.Serializer):
    op = serializers.ChoiceField(choices=["put", "delete"])
    key = serializers.CharField()
    version = serializers.IntegerField(help_text="put: the new version; delete: the deleted one")


class TxnResponseSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="the log index the txn committed at")
    request_id = serializers.CharField()
    results = TxnResultSerializer(many=True)


class WatchResponseSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="pass as since_index to continue")
    events = HistorySerializer(many=True)


class RequestOutcomeSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    outcome = serializers.ChoiceField(choices=["committed", "rejected"])
    index = serializers.IntegerField()
    result = serializers.JSONField()


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="a stable code: invalid, version_conflict, ...")
    detail = serializers.CharField()


# ------------------------------------------------------------------------------- inputs


class PutEntrySerializer(StrictSerializer):
    value = StoredJSONField(allow_null=True, help_text="any JSON (null included)")
    reason = _reason()
    description = _description()


class DeleteEntrySerializer(StrictSerializer):
    reason = _reason()


class TxnCheckSerializer(StrictSerializer):
    key = _key()
    version = StrictIntegerField(
        min_value=0, max_value=MAX_BIGINT, help_text="0: the key must not exist"
    )


class TxnOpSerializer(StrictSerializer):
    op = serializers.ChoiceField(choices=["put", "delete"])
    key = _key()
    value = StoredJSONField(required=False, allow_null=True)
    description = _description()

    def validate(self, attrs):
        if attrs["op"] == "put" and "value" not in attrs:
            raise serializers.ValidationError({"value": "a put needs a value"})
        if attrs["op"] == "delete" and ("value" in attrs or attrs.get("description") is not None):
            raise serializers.ValidationError("a delete takes no value or description")
        return attrs


class TxnSerializer(StrictSerializer):
    checks = TxnCheckSerializer(many=True, required=False)
    ops = TxnOpSerializer(many=True, allow_empty=False)
    reason = _reason()


class PutSchemaSerializer(StrictSerializer):
    schema = StoredJSONField(help_text="a JSON Schema")
    reason = _reason()
    description = _description()
