"""Safety invariants, checked after every simulated step (DESIGN.md "Invariants").

The checker sees only what the cores hand to durable storage and to the state machine,
and keeps its own record of history, so it judges the protocol by its effects:
- a slot is chosen when a quorum of acceptors durably accepted the same (slot, ballot);
  at most one value may ever be chosen per slot;
- a value a node learns as chosen, or applies, is the one the acceptors chose;
- applied logs agree slot by slot and each node applies every slot once, in order, across
  its crashes (so each log is a prefix of any longer one);
- an acceptor's promise never goes down, across crashes, and it never accepts below it;
- persist before send: a Promise or Accepted leaves a node only once the promise or the
  accepted value it reports is durable there;
- every chosen command was submitted by a client, and no request id is applied twice
  on a node;
- compaction prunes only slots the node applied and its latest snapshot covers;
- an installed snapshot is above the node's applied index, holds exactly the history
  every node applied through its index, and leaves the node's promise and its votes above
  the index as they were.
"""

from __future__ import annotations

from consensus.paxos import Accepted, Ballot, Command, DurableState, Message, Promise, Ready, Value


class Violation(AssertionError):
    """A safety or liveness property failed."""


class Checker:
    def __init__(self, ids: tuple[str, ...], quorum: int) -> None:
        self.quorum = quorum
        self.max_promised = dict.fromkeys(ids, Ballot.ZERO)
        self.votes: dict[tuple[int, Ballot], tuple[Value, set[str]]] = {}
        self.chosen: dict[int, Value] = {}
        self.applied: dict[int, Value] = {}
        #: The request ids each slot applied (the history), as the first node applied it.
        self.history: dict[int, tuple[str, ...]] = {}
        #: The last slot each node applied, as the checker saw it (across its crashes).
        self.applied_through = dict.fromkeys(ids, 0)
        self.submitted: dict[str, Command] = {}
        self.last_chosen_slot = 0

    def on_submit(self, command: Command) -> None:
        self.submitted[command.request_id] = command

    def on_restart(self, node: str, state: DurableState) -> None:
        if state.promised < self.max_promised[node]:
            raise Violation(
                f"{node} restarted with promise {state.promised} below the "
                f"{self.max_promised[node]} it had promised before the crash"
            )

    def on_persist(self, node: str, before: DurableState, ready: Ready, now: float) -> None:
        promised = before.promised
        if ready.promised is not None:
            if ready.promised <= self.max_promised[node]:
                raise Violation(
                    f"{node} lowered or repeated its promise: {self.max_promised[node]} -> "
                    f"{ready.promised} at t={now:.3f}"
                )
            promised = ready.promised
            self.max_promised[node] = ready.promised
        for slot, ballot, value in ready.accepted:
            if ballot < promised:
                raise Violation(
                    f"{node} accepted slot {slot} at ballot {ballot} below its promise "
                    f"{promised} at t={now:.3f}"
                )
            self._vote(node, slot, ballot, value, now)

    def on_send(self, node: str, durable: DurableState, message: Message, now: float) -> None:
        kind = type(message)
        if kind is Accepted:
            for slot in message.slots:
                held = durable.accepted.get(slot)
                if held is None or held[0] < message.ballot:
                    raise Violation(
                        f"{node} sent Accepted for slot {slot} at ballot {message.ballot} "
                        f"before persisting it (durable: {held and held[0]}) at t={now:.3f}"
                    )
        elif kind is Promise and durable.promised < message.ballot:
            raise Violation(
                f"{node} sent a Promise of {message.ballot} before persisting it (durable: "
                f"{durable.promised}) at t={now:.3f}"
            )

    def on_learned(self, node: str, chosen: list[tuple[int, Value]]) -> None:
        for slot, value in chosen:
            truth = self.chosen.get(slot)
            if truth is None:
                raise Violation(f"{node} learned slot {slot} as chosen, but no quorum chose it")
            if truth != value:
                raise Violation(f"{node} learned slot {slot} = {value}, but {truth} was chosen")

    def _vote(self, node: str, slot: int, ballot: Ballot, value: Value, now: float) -> None:
        key = (slot, ballot)
        if key not in self.votes:
            self.votes[key] = (value, set())
        proposed, voters = self.votes[key]
        if proposed != value:
            raise Violation(f"two values proposed for slot {slot} in ballot {ballot}")
        voters.add(node)
        if len(voters) >= self.quorum:
            chosen = self.chosen.get(slot)
            if chosen is None:
                self.chosen[slot] = value
                self.last_chosen_slot = max(self.last_chosen_slot, slot)
                for command in value.commands:
                    if self.submitted.get(command.request_id) != command:
                        raise Violation(f"slot {slot} chose {command}, which no client submitted")
            elif chosen != value:
                raise Violation(
                    f"two values chosen for slot {slot}: {chosen} and then {value} "
                    f"(ballot {ballot}) at t={now:.3f}"
                )

    def on_apply(
        self, node: str, slot: int, value: Value, fresh: list[Command], applied_ids: set[str]
    ) -> None:
        through = self.applied_through[node]
        if slot <= through:
            raise Violation(f"{node} applied slot {slot} again (it applied through {through})")
        if slot != through + 1:
            raise Violation(f"{node} applied slot {slot} after {through}: out of order")
        self.applied_through[node] = slot
        if self.chosen.get(slot) != value:
            raise Violation(f"{node} applied slot {slot} = {value}, chosen {self.chosen.get(slot)}")
        reference = self.applied.setdefault(slot, value)
        if reference != value:
            raise Violation(
                f"applied logs diverge at slot {slot}: {reference} vs {value} on {node}"
            )
        seen = set()
        for command in fresh:
            if command.request_id in applied_ids or command.request_id in seen:
                raise Violation(f"{node} applied request {command.request_id} twice")
            seen.add(command.request_id)
        ids = tuple(c.request_id for c in fresh)
        if self.history.setdefault(slot, ids) != ids:
            raise Violation(
                f"histories diverge at slot {slot}: {self.history[slot]} vs {ids} on {node}"
            )

    def on_compact(self, node: str, through: int, snapshot_index: int) -> None:
        applied = self.applied_through[node]
        if through > applied:
            raise Violation(f"{node} compacted its log through {through}, applied only {applied}")
        if through > snapshot_index:
            raise Violation(
                f"{node} compacted its log through {through}, beyond its latest snapshot "
                f"at {snapshot_index}"
            )

    def on_install(self, node: str, snapshot, durable: DurableState, votes: dict) -> None:
        """After `node` installed `snapshot`; `votes`: its accepted slots above the
        snapshot's index before the install."""
        index, through = snapshot.index, self.applied_through[node]
        if index <= through:
            raise Violation(
                f"{node} installed a snapshot at {index}, at or below the {through} it "
                "applied: its state went back"
            )
        expected = tuple((slot, self.history.get(slot)) for slot in range(1, index + 1))
        if snapshot.applied_log != expected:
            raise Violation(f"{node} installed a snapshot at {index} whose history differs")
        if durable.promised < self.max_promised[node]:
            raise Violation(
                f"{node} installed a snapshot and its promise went from "
                f"{self.max_promised[node]} down to {durable.promised}"
            )
        lost = sorted(s for s, vote in votes.items() if durable.accepted.get(s) != vote)
        if lost:
            raise Violation(f"{node} installed a snapshot at {index} and lost its votes {lost[:5]}")
        self.applied_through[node] = index
