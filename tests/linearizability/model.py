"""The sequential specification of one entry of the store: what a read, a put and a delete
do to a key, and what they answer, applied one at a time.

These are configstore.statemachine's rules for a single-key write (`_single_refusal`, then
`_apply_writes`), restated: the checker must accept exactly what the store may do.

    state      None (the key does not exist) or (value, version); `value` is the value's
               canonical JSON text (history.canonical)
    version    1 when the key is created, +1 on every put to an existing key (even of the
               same value); a delete removes the key, and a later put creates it at 1 again
    read       ok with (value, version), or not_found
    put        refused, with conflict and the current version (0: absent), when its
               condition fails: create_only and the key exists; must_exist and it does not;
               expected_version is not the current version (0: "must not exist").
               Otherwise ok, at the current version + 1
    delete     not_found if the key does not exist (whatever the expected version); conflict
               with the current version if expected_version is given and is not it;
               otherwise ok with the version deleted, and the key is gone

A refused write changes nothing. Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import NamedTuple

from tests.linearizability.history import CONFLICT, NOT_FOUND, OK, PUT, READ, canonical

State = tuple[str, int] | None
INITIAL: State = None  # every key starts absent


class Request(NamedTuple):
    """What an operation asks: its kind and input."""

    kind: str
    value: str | None = None  # put: the canonical JSON text of the value written
    expected_version: int | None = None
    create_only: bool = False
    must_exist: bool = False


class Response(NamedTuple):
    """What an operation is told. `version` None in an observed response means "not
    recorded" and matches any version."""

    outcome: str
    value: str | None = None  # read: the canonical JSON text of the value read
    version: int | None = None


def request_of(op) -> Request:
    """The Request of a history.Operation."""
    value = canonical(op.value) if op.kind == PUT else None
    return Request(op.kind, value, op.expected_version, op.create_only, op.must_exist)


def response_of(op) -> Response | None:
    """The Response a history.Operation observed; None when its outcome is unknown."""
    if op.unknown:
        return None
    value = canonical(op.value) if op.kind == READ and op.outcome == OK else None
    return Response(op.outcome, value, op.version)


def apply(state: State, request: Request) -> tuple[Response, State]:
    """What the store answers to `request` in `state`, and the state after it."""
    current = state[1] if state is not None else 0
    if request.kind == READ:
        if state is None:
            return Response(NOT_FOUND), state
        return Response(OK, state[0], current), state
    if request.kind == PUT:
        refused = (
            (request.create_only and current)
            or (request.must_exist and not current)
            or (request.expected_version is not None and request.expected_version != current)
        )
        if refused:
            return Response(CONFLICT, version=current), state
        return Response(OK, version=current + 1), (request.value, current + 1)
    if not current:
        return Response(NOT_FOUND), state
    if request.expected_version is not None and request.expected_version != current:
        return Response(CONFLICT, version=current), state
    return Response(OK, version=current), None


def step(state: State, request: Request, observed: Response | None) -> tuple[bool, State]:
    """Whether an operation that asked `request` and was told `observed` can take effect in
    `state`, and the state after it. An unknown outcome (observed None) matches whatever
    the store would answer: the operation took effect, once, with its input."""
    actual, after = apply(state, request)
    if observed is None:
        return True, after
    legal = (
        observed.outcome == actual.outcome
        and observed.value == actual.value
        and (observed.version is None or observed.version == actual.version)
    )
    return legal, after
