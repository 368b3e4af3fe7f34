"""A node's durable Paxos state, in the node's own PostgreSQL database.

Written only by the node's worker (consensus.runtime), in one transaction per core step;
the web tier reads `AppliedRequest` to find the outcome of what it submitted.
"""

from django.db import models


class AcceptorState(models.Model):
    """The acceptor's promise: one row (id=1). It never goes down."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    promised_round = models.BigIntegerField(default=0)
    promised_node = models.CharField(max_length=64, default="")

    class Meta:
        db_table = "consensus_acceptor_state"


class AcceptedSlot(models.Model):
    """The value this acceptor accepted in a slot, and the ballot it accepted it at."""

    slot = models.BigIntegerField(primary_key=True)
    ballot_round = models.BigIntegerField()
    ballot_node = models.CharField(max_length=64)
    value = models.JSONField()

    class Meta:
        db_table = "consensus_accepted_slot"


class ChosenSlot(models.Model):
    """The chosen log: the value chosen in each slot this node has learned."""

    slot = models.BigIntegerField(primary_key=True)
    value = models.JSONField()

    class Meta:
        db_table = "consensus_chosen_slot"


class AppliedState(models.Model):
    """The state machine's applied index: one row (id=1), advanced in the same transaction
    that applies each slot."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    applied_index = models.BigIntegerField(default=0)
    #: The log is pruned through this slot (consensus.host, compaction): no accepted value
    #: and no chosen entry is kept at or below it; a snapshot covers it.
    compacted_through = models.BigIntegerField(default=0, db_default=0)

    class Meta:
        db_table = "consensus_applied_state"


class AppliedRequest(models.Model):
    """One row per request id ever applied: dedup of retries, and the outcome a submitter
    (or anyone holding the request id) looks up."""

    COMMITTED = "committed"
    REJECTED = "rejected"

    request_id = models.CharField(max_length=128, primary_key=True)
    slot = models.BigIntegerField(db_index=True)
    outcome = models.CharField(
        max_length=16, choices=[(COMMITTED, COMMITTED), (REJECTED, REJECTED)]
    )
    result = models.JSONField(default=dict)
    applied_at = models.DateTimeField()

    class Meta:
        db_table = "consensus_applied_request"
