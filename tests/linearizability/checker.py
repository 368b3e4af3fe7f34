"""Is a history of the store's entries linearizable?

    result = check(history)          # a History, or any iterable of Operations
    result.ok                        # True iff every key's history is linearizable
    result.key                       # the first key that is not (None if there is none)
    print(result.describe())         # per failing key: the longest linearizable prefix
                                     # found, the state after it, and the operations that
                                     # could not take effect next

    python -m tests.linearizability.checker HISTORY.json [--max-steps N]
        prints the verdict; exit 0 linearizable, 1 not linearizable, 2 unreadable file,
        3 undecided (the search hit --max-steps)

A history is linearizable iff each key's operations are (linearizability is local --
Herlihy & Wing's P-compositionality -- and every operation touches one key), so each key is
checked on its own, against the sequential model of one entry (tests.linearizability.model).

The search, for one key, is Wing & Gong's with Lowe's just-in-time linearization, as in
Porcupine. The operations' calls and returns form one list in time order (a call and a
return at the same instant count as overlapping). At each point of the search the
candidates are the operations called before the first return still in the list: one of
them must take effect next. A candidate the model allows in the current state is
linearized: its call and return leave the list (in O(1), by dancing links) and the search
goes on from there; when no candidate is allowed, it backtracks. Every (set of linearized
operations, model state) reached is remembered, and never explored twice: two orders
that reach the same set and the same state have the same futures.

Operations with an unknown outcome have no return: they may take effect at any point after
their call, or never. They are kept in a list of their own, are candidates once called,
are tried after the operations with a known outcome, and are never needed for the verdict:
the search succeeds once every known-outcome operation is linearized (the unknown ones
left over take effect at the end, unseen, or never). Reads with an unknown outcome
constrain nothing and are dropped.

Unknown-outcome writes are what makes a search expensive: each can take effect at any
later point. Five reductions keep it small; none changes the verdict (the tests check them
against a search by brute force):
- an operation that leaves the state as it found it (a read, or a refused write) and is
  allowed now is linearized now, with no alternatives tried: any linearization that
  places it later is still one with it moved here (it is already a candidate, and it
  changes nothing), so if this branch fails, so does every other from this point;
- an unknown-outcome write is never linearized where it would change nothing (its
  condition fails): that is the same as its never taking effect, which is always allowed;
- a value that no read returned is only ever compared with the values reads returned, so
  all such values are one value to the search (UNREAD), and more states coincide;
- of the pending unknown-outcome writes that would lead to the same state, only the least
  capable is tried: a compare-and-set or a create (it takes effect at one version only)
  before a put that needs the key to exist, before an unconditional put; a delete with an
  expected version before one without. A linearization that uses a more capable one here
  can use the less capable one here instead, and the more capable one wherever it used
  the less capable one later: it is still pending, and takes effect alike wherever the
  less capable one does;
- a point is not entered if one with the same known-outcome operations linearized and
  the same state, but only some of its unknown-outcome ones, led nowhere: whatever
  completes this point would complete that one, the extra ones never taking effect (only
  the first DOMINANCE_SCAN such points are compared).
A search may still take long (deciding linearizability is NP-complete); `max_steps` bounds
it, and a key that exceeds it is undecided.
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from tests.linearizability import model
from tests.linearizability.history import (
    CONFLICT,
    NOT_FOUND,
    PUT,
    READ,
    History,
    InvalidHistory,
    Operation,
)

# Stands for every value that no read of the key returned: not a JSON text, so it equals
# no value read.
UNREAD = "\x00unread"
# How many of the points that led nowhere with the same known-outcome operations and state
# a new point is compared with, to skip it if it only adds unknown-outcome operations.
DOMINANCE_SCAN = 32


class Verdict(enum.Enum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "not linearizable"
    UNDECIDED = "undecided: the search hit its step budget"


@dataclass(frozen=True)
class Failure:
    """Why one key's history is not linearizable: the deepest point the search reached.

    `linearized` is the longest linearizable prefix found, in its linearization order (an
    unknown-outcome write in it is one that took effect there); `state` the model state
    after it; `pending` the known-outcome operations called by then and not yet
    linearized, none of which the model allows next; `blocking` the first of them to
    return: it had to take effect before its return, and could not. (The deepest point is
    the one with the most known-outcome operations linearized.)"""

    key: str
    linearized: tuple[Operation, ...]
    state: model.State
    pending: tuple[Operation, ...]
    blocking: Operation
    operations: int  # the key's operations, unknown reads excluded

    def describe(self, last: int = 12) -> str:
        shown = self.linearized[-last:]
        lines = [
            f"key {self.key!r}: not linearizable",
            f"  the longest linearizable prefix found has {len(self.linearized)} of "
            f"{self.operations} operations"
            + (f"; its last {len(shown)}:" if len(shown) < len(self.linearized) else ":"),
        ]
        lines += [f"    {op.describe()}" for op in shown]
        if self.state is None:
            lines.append("  after it the key does not exist, and none of these can take effect:")
        else:
            lines.append(
                f"  after it the value is {self.state[0]} at version {self.state[1]}, "
                "and none of these can take effect:"
            )
        for op in self.pending:
            mark = "   <- returned first: had to take effect by then" if op is self.blocking else ""
            lines.append(f"    {op.describe()}{mark}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    failures: tuple[Failure, ...]  # the keys that are not linearizable, in key order
    undecided: tuple[str, ...]  # the keys whose search hit max_steps, in key order
    keys: int
    operations: int  # checked: unknown reads are dropped

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def key(self) -> str | None:
        """The first key that is not linearizable (else the first undecided one)."""
        if self.failures:
            return self.failures[0].key
        return self.undecided[0] if self.undecided else None

    def describe(self) -> str:
        keys = "1 key" if self.keys == 1 else f"{self.keys} keys"
        lines = [f"{self.verdict.value} ({self.operations} operations on {keys})"]
        lines += [failure.describe() for failure in self.failures]
        if self.undecided:
            lines.append(f"undecided keys: {', '.join(map(repr, self.undecided))}")
        return "\n".join(lines)


def check(history: History | Iterable[Operation], *, max_steps: int | None = None) -> Result:
    """Check every key of `history`. `max_steps` bounds the states each key's search may
    visit (None: no bound); a key that exhausts it is undecided, not a violation."""
    operations = history.operations if isinstance(history, History) else tuple(history)
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in operations:
        if not isinstance(op, Operation):
            raise TypeError(f"not an Operation: {op!r}")
        if not (op.unknown and op.kind == READ):
            by_key[op.key].append(op)
    failures, undecided = [], []
    for key in sorted(by_key):
        verdict, failure = _Search(key, by_key[key], max_steps).run()
        if verdict is Verdict.VIOLATION:
            failures.append(failure)
        elif verdict is Verdict.UNDECIDED:
            undecided.append(key)
    if failures:
        verdict = Verdict.VIOLATION
    elif undecided:
        verdict = Verdict.UNDECIDED
    else:
        verdict = Verdict.LINEARIZABLE
    return Result(
        verdict,
        tuple(failures),
        tuple(undecided),
        keys=len(by_key),
        operations=sum(len(ops) for ops in by_key.values()),
    )


class _Search:
    """The search over one key's operations (see the module docstring).

    Operation i is bit i of the set of linearized operations. The known-outcome operations'
    calls and returns are nodes 1..2k of a doubly linked list in time order, between the
    sentinels 0 and 2k+1; the unknown-outcome operations' calls are nodes 1..u of another,
    in call order. Linearizing an operation unlinks its nodes, undoing it relinks them: in
    last-out-first-in order, which is what keeps the links right."""

    def __init__(self, key: str, ops: list[Operation], max_steps: int | None) -> None:
        self.key = key
        self.ops = ops
        self.max_steps = max_steps
        self.responses = [model.response_of(op) for op in ops]
        read = {r.value for r in self.responses if r is not None and r.value is not None}
        self.requests = [model.request_of(op) for op in ops]
        self.requests = [
            r._replace(value=UNREAD) if r.kind == PUT and r.value not in read else r
            for r in self.requests
        ]
        # Leaves the state as it found it whenever it is allowed.
        self.unchanging = [
            not op.unknown and (op.kind == READ or op.outcome in (CONFLICT, NOT_FOUND))
            for op in ops
        ]
        self.unknown = [op.unknown for op in ops]
        self.bit = [1 << i for i in range(len(ops))]
        self.unknown_mask = sum(self.bit[i] for i, op in enumerate(ops) if op.unknown)
        self.known_mask = (1 << len(ops)) - 1 - self.unknown_mask

        known = [i for i, op in enumerate(ops) if not op.unknown]
        # (time, 0 call / 1 return, operation): calls sort before returns at the same time.
        events = sorted([(ops[i].call, 0, i) for i in known] + [(ops[i].ret, 1, i) for i in known])
        self.tail = len(events) + 1
        self.event_op = [-1] + [i for _, _, i in events] + [-1]
        self.event_is_return = [False] + [kind == 1 for _, kind, _ in events] + [True]
        self.event_time = [0.0] + [time for time, _, _ in events] + [0.0]
        self.next = list(range(1, self.tail + 1)) + [0]
        self.prev = [0] + list(range(self.tail))
        self.call_node: dict[int, int] = {}
        self.return_node: dict[int, int] = {}
        for node, (_, kind, i) in enumerate(events, start=1):
            (self.return_node if kind else self.call_node)[i] = node

        unknown = sorted((ops[i].call, i) for i, op in enumerate(ops) if op.unknown)
        self.unknown_tail = len(unknown) + 1
        self.unknown_op = [-1] + [i for _, i in unknown] + [-1]
        self.unknown_call = [0.0] + [call for call, _ in unknown] + [0.0]
        self.unknown_next = list(range(1, self.unknown_tail + 1)) + [0]
        self.unknown_prev = [0] + list(range(self.unknown_tail))
        self.unknown_node = {i: node for node, (_, i) in enumerate(unknown, start=1)}
        # How many states an unknown-outcome write can take effect in, as a rank: a
        # compare-and-set (or a create, which is one at version 0) only in one version, a
        # write that needs the key to exist in all that have it, an unconditional one in all.
        self.rank = [
            0 if op.expected_version is not None or op.create_only else 1 if op.must_exist else 2
            for op in ops
        ]
        self.entered: set[tuple[int, model.State]] = set()  # (linearized, state)
        # (known-outcome operations linearized, state) -> the sets of unknown-outcome ones
        # linearized with them at points that led nowhere.
        self.failed: dict[tuple[int, model.State], list[int]] = {}

    # ------------------------------------------------------------------ the linked lists

    def _unlink(self, node: int, next_: list[int], prev: list[int]) -> None:
        next_[prev[node]] = next_[node]
        prev[next_[node]] = prev[node]

    def _relink(self, node: int, next_: list[int], prev: list[int]) -> None:
        next_[prev[node]] = node
        prev[next_[node]] = node

    def _lift(self, i: int) -> None:
        if i in self.unknown_node:
            self._unlink(self.unknown_node[i], self.unknown_next, self.unknown_prev)
        else:
            self._unlink(self.call_node[i], self.next, self.prev)
            self._unlink(self.return_node[i], self.next, self.prev)

    def _unlift(self, i: int) -> None:
        if i in self.unknown_node:
            self._relink(self.unknown_node[i], self.unknown_next, self.unknown_prev)
        else:
            self._relink(self.return_node[i], self.next, self.prev)
            self._relink(self.call_node[i], self.next, self.prev)

    def _candidates(self) -> tuple[list[int], list[int], int]:
        """The operations that may take effect next, as (those that change nothing, the
        others), and the operation whose return bounds them. The list of known outcomes
        must not be empty."""
        unchanging, changing = [], []
        node = self.next[0]
        while not self.event_is_return[node]:
            i = self.event_op[node]
            (unchanging if self.unchanging[i] else changing).append(i)
            node = self.next[node]
        bound = self.event_time[node]
        unknown = self.unknown_next[0]
        while unknown != self.unknown_tail and self.unknown_call[unknown] <= bound:
            changing.append(self.unknown_op[unknown])
            unknown = self.unknown_next[unknown]
        return unchanging, changing, self.event_op[node]

    def _alternatives(self, state: model.State, changing: list[int]) -> list[int]:
        """The candidates worth trying in `state`: every known-outcome one; of the
        unknown-outcome ones, for each state they would lead to, the least capable (see
        the module docstring), and none that would change nothing."""
        alternatives, least = [], {}
        for i in changing:
            if not self.unknown[i]:
                alternatives.append(i)
                continue
            after = model.apply(state, self.requests[i])[1]
            if after != state and (after not in least or self.rank[i] < least[after][0]):
                least[after] = (self.rank[i], i)
        return alternatives + sorted(i for _, i in least.values())

    # ---------------------------------------------------------------------------- search

    def _enter(self, linearized: int, state: model.State) -> bool:
        """Record the point (linearized, state), unless it is no use to enter: it was
        entered before, or a point with the same known-outcome operations and state but
        fewer unknown-outcome ones led nowhere (whatever completes this point would
        complete that one, with the extra operations never taking effect)."""
        if (linearized, state) in self.entered:
            return False
        unknown = linearized & self.unknown_mask
        if unknown:
            failed = self.failed.get((linearized & self.known_mask, state), ())
            for other, _ in zip(failed, range(DOMINANCE_SCAN), strict=False):
                if not (other & ~unknown):
                    return False
        self.entered.add((linearized, state))
        return True

    def _failed(self, linearized: int, state: model.State) -> None:
        """Record that all that follows the point (linearized, state) was explored in
        vain."""
        key = (linearized & self.known_mask, state)
        self.failed.setdefault(key, []).append(linearized & self.unknown_mask)

    def run(self) -> tuple[Verdict, Failure | None]:
        """Search once; the failure (the deepest dead end) comes with a violation."""
        state: model.State = model.INITIAL
        linearized = 0  # the set, as bits
        # One frame per linearized operation: (operation, state and set before it, the
        # alternatives left at that point, the next one to try). Alternatives None: it was
        # linearized without alternatives, so backtracking past it backtracks further.
        stack: list[tuple[int, model.State, int, list[int] | None, int]] = []
        # The dead end with the most known-outcome operations linearized: (how many, the
        # order they and the unknown-outcome ones were linearized in).
        deepest: tuple[int, list[int]] | None = None
        alternatives: list[int] = []
        tried = 0
        fresh = True  # at a point not visited before: its candidates are still to be listed
        steps = 0
        step = model.step

        while self.next[0] != self.tail:
            if self.max_steps is not None and steps >= self.max_steps:
                return Verdict.UNDECIDED, None
            if fresh:
                unchanging, changing, _ = self._candidates()
                forced = next(
                    (i for i in unchanging if step(state, self.requests[i], self.responses[i])[0]),
                    None,
                )
                if forced is None:
                    alternatives = self._alternatives(state, changing)
                else:
                    after = linearized | self.bit[forced]
                    if self._enter(after, state):
                        stack.append((forced, state, linearized, None, 0))
                        self._lift(forced)
                        linearized = after
                        steps += 1
                        continue
                    alternatives = []  # explored before, from another order: a dead end
                tried = 0
            fresh = False
            while tried < len(alternatives):
                i = alternatives[tried]
                tried += 1
                allowed, after_state = step(state, self.requests[i], self.responses[i])
                if not allowed or (after_state == state and self.unknown[i]):
                    continue
                after = linearized | self.bit[i]
                if not self._enter(after, after_state):
                    continue
                stack.append((i, state, linearized, alternatives, tried))
                self._lift(i)
                state, linearized = after_state, after
                steps += 1
                fresh = True
                break
            if fresh:
                continue
            # A dead end. The deepest is the failure's report: there, no known-outcome
            # candidate was skipped as entered before (that point lies deeper: it would
            # have led to a dead end with more of them linearized), so none can take effect.
            known = (linearized & self.known_mask).bit_count()
            if deepest is None or known > deepest[0]:
                deepest = (known, [frame[0] for frame in stack])
            while True:
                if not stack:
                    return Verdict.VIOLATION, self._failure(deepest)
                self._failed(linearized, state)
                i, state, linearized, frame_alternatives, frame_tried = stack.pop()
                self._unlift(i)
                if frame_alternatives is not None:
                    alternatives, tried = frame_alternatives, frame_tried
                    break
        return Verdict.LINEARIZABLE, None

    def _failure(self, deepest: tuple[int, list[int]]) -> Failure:
        _, order = deepest
        state = model.INITIAL  # replayed with the real values (the search's may be UNREAD)
        for i in order:
            state = model.apply(state, model.request_of(self.ops[i]))[1]
        for i in order:  # back to the deepest point, to list its candidates
            self._lift(i)
        unchanging, changing, blocking = self._candidates()
        known = [i for i in unchanging + changing if not self.unknown[i]]
        pending = sorted(known, key=lambda i: (self.ops[i].call, i))
        for i in reversed(order):
            self._unlift(i)
        return Failure(
            key=self.key,
            linearized=tuple(self.ops[i] for i in order),
            state=state,
            pending=tuple(self.ops[i] for i in pending),
            blocking=self.ops[blocking],
            operations=len(self.ops),
        )


# ------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.linearizability.checker",
        description="Check that a saved history of the config store is linearizable.",
    )
    parser.add_argument("history", help="a history file (tests.linearizability.history)")
    parser.add_argument(
        "--max-steps", type=int, default=None, help="bound the search per key (default: none)"
    )
    args = parser.parse_args(argv)
    try:
        history = History.load(args.history)
    except (OSError, InvalidHistory) as error:
        print(f"cannot read {args.history}: {error}", file=sys.stderr)
        return 2
    if history.meta:
        print(f"meta: {history.meta}")
    result = check(history, max_steps=args.max_steps)
    print(result.describe())
    return {Verdict.LINEARIZABLE: 0, Verdict.VIOLATION: 1, Verdict.UNDECIDED: 3}[result.verdict]


if __name__ == "__main__":
    sys.exit(main())
