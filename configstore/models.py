"""The replicated state: configuration entries. Written only by the applier
(configstore.statemachine), identically on every node."""

from django.db import models


class Entry(models.Model):
    key = models.CharField(max_length=256, primary_key=True)
    value = models.JSONField()
    description = models.TextField(blank=True, default="")
    version = models.PositiveBigIntegerField()
    created_index = models.BigIntegerField()
    modified_index = models.BigIntegerField()
    updated_by = models.CharField(max_length=150, blank=True, default="")
    updated_at = models.DateTimeField()

    class Meta:
        db_table = "configstore_entry"
        ordering = ["key"]
        verbose_name_plural = "entries"

    def __str__(self) -> str:
        return self.key
