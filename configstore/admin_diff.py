"""How the admin shows JSON values: pretty-printed, previewed in one line, and compared line by
line. Pure: no Django, no I/O.

One text form everywhere (editor, history, diffs): `pretty`, so that a diff shows exactly
the lines a user sees in the editor.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass

PREVIEW_CHARS = 80


def pretty(value: object) -> str:
    """The value as the editor shows it: 2-space indents, object keys sorted, Unicode kept."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def preview(value: object, limit: int = PREVIEW_CHARS) -> str:
    """The value on one line, cut to at most `limit` characters (ending in '…' if cut)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))
    if len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


@dataclass(frozen=True)
class DiffLine:
    """One line of a diff: kind is "hunk" (an @@ header), "context", "added" or "removed"."""

    kind: str
    text: str

    @property
    def sign(self) -> str:
        return {"added": "+", "removed": "-", "context": " "}.get(self.kind, "")


def text_diff(old: str, new: str, *, context: int = 3) -> list[DiffLine]:
    """A unified line diff of two texts, as typed lines (no file headers). [] if equal."""
    lines: list[DiffLine] = []
    diff = difflib.unified_diff(
        old.splitlines(), new.splitlines(), lineterm="", n=context, fromfile="", tofile=""
    )
    for line in diff:
        if line.startswith(("---", "+++")) and not lines:
            continue  # the two file headers come first, before any hunk
        if line.startswith("@@"):
            lines.append(DiffLine("hunk", line))
        elif line.startswith("+"):
            lines.append(DiffLine("added", line[1:]))
        elif line.startswith("-"):
            lines.append(DiffLine("removed", line[1:]))
        else:
            lines.append(DiffLine("context", line[1:]))
    return lines


def value_diff(
    old: object, new: object, *, old_absent: bool = False, new_absent: bool = False
) -> list[DiffLine]:
    """The diff of two JSON values as `pretty` prints them. An absent side (the key did not
    exist yet, or was deleted) is empty: distinct from the JSON value null."""
    return text_diff("" if old_absent else pretty(old), "" if new_absent else pretty(new))
