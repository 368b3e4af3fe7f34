"""The comparison table: rows with both systems' figures, their ratio (configstore/etcd),
which direction is better, the issue's goals, and the docs section that holds a run.
Pure: formatting only, no measuring."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

BEGIN = "<!-- compare:begin (written by python -m benchmarks.compare --write-docs) -->"
END = "<!-- compare:end -->"


@dataclass(frozen=True)
class Goal:
    """ours/etcd must be at most (lower is better) or at least (higher) `limit`."""

    limit: float
    at_most: bool

    def met(self, ratio: float) -> bool:
        if math.isnan(ratio):
            return False
        return ratio <= self.limit if self.at_most else ratio >= self.limit

    def __str__(self) -> str:
        return f"{'≤' if self.at_most else '≥'} {_factor(self.limit)}"

    def shortfall(self, ratio: float) -> str:
        """How far `ratio` is from the goal, as a factor (e.g. '1.6× too slow')."""
        if math.isnan(ratio) or ratio == 0:
            return "no figure"
        factor = ratio / self.limit if self.at_most else self.limit / ratio
        return f"{factor:.2f}× short of the goal"


@dataclass(frozen=True)
class Row:
    measure: str
    unit: str
    ours: float | None
    etcd: float | None
    #: True when a lower figure is better (latency, time, cost).
    lower_is_better: bool
    goal: Goal | None = None
    digits: int = 1

    @property
    def ratio(self) -> float:
        """configstore / etcd; NaN where either figure is missing or etcd's is zero."""
        if self.ours is None or self.etcd is None or self.etcd == 0:
            return math.nan
        return self.ours / self.etcd

    @property
    def goal_met(self) -> bool | None:
        return None if self.goal is None else self.goal.met(self.ratio)


def _factor(x: float) -> str:
    return f"{x:g}×" if x >= 1 else f"1/{1 / x:g}"


def format_value(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def format_ratio(ratio: float) -> str:
    return "—" if math.isnan(ratio) else f"{ratio:.2f}×"


def cells(row: Row) -> list[str]:
    verdict = "met" if row.goal_met else "MISSED"
    goal = "" if row.goal is None else f"{row.goal} {verdict}"
    return [
        row.measure,
        row.unit,
        format_value(row.ours, row.digits),
        format_value(row.etcd, row.digits),
        format_ratio(row.ratio),
        "lower" if row.lower_is_better else "higher",
        goal,
    ]


HEADER = ["measure", "unit", "configstore", "etcd", "ours/etcd", "better", "goal (ours/etcd)"]
_RIGHT = {2, 3, 4}  # numeric columns


def table(rows: list[Row]) -> str:
    """A Markdown table, padded so that it also reads well in a terminal."""
    body = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in body) for i in range(len(HEADER))]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(widths[i]) if i in _RIGHT else v.ljust(widths[i]) for i, v in enumerate(values)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join("-" * (w - 1) + ":" if i in _RIGHT else "-" * w for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(body[0]), rule, *(line(values) for values in body[1:])])


def goal_lines(rows: list[Row]) -> list[str]:
    """One line per goal: met, or missed and by how much."""
    lines = []
    for row in rows:
        if row.goal is None:
            continue
        verdict = "met" if row.goal_met else f"MISSED, {row.goal.shortfall(row.ratio)}"
        lines.append(
            f"- {row.measure}: configstore/etcd = {format_ratio(row.ratio)}, "
            f"goal {row.goal}: {verdict}"
        )
    return lines


def replace_section(document: str, section: str) -> str:
    """`document` with the text between the BEGIN and END markers replaced by `section`;
    both markers are added at the end when the document has none."""
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip("\n") + "\n\n" + block + "\n"
