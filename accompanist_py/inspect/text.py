"""The timeline as a text sequence diagram: a lifeline per role, a row per step.

Each row starts with the step's time since the session began (corrected, see
`timeline`). A message is an arrow from the sender's lifeline to the receiver's, drawn
when it was sent, labelled with its kind, seq and how long it took to arrive (dashed: the
outcome protocol's done/abort/decision; ending in `x`: never seen at the receiver). Service
calls and the other events are written at their role's lifeline, one glyph first:

    [op -> status latency]  service call     + committed     x refused
    ~ compensated           ! abort          @ restart, replay
    o started               # finished       . truncated
"""

from __future__ import annotations

from accompanist_py.inspect.diagram import Call, Mark, Message, steps
from accompanist_py.inspect.timeline import Timeline

GLYPHS = {
    "started": "o",
    "committed": "+",
    "refused": "x",
    "compensated": "~",
    "abort": "!",
    "restart": "@",
    "replay": "@",
    "finished": "#",
    "truncated": ".",
}
TIME_WIDTH = 11
MIN_COLUMN = 22
MAX_COLUMN = 30


def render_text(timeline: Timeline) -> str:
    """The text sequence diagram of `timeline`, with a header and each role's final state."""
    drawn = steps(timeline)
    roles = timeline.roles
    labels = [_label(s) for s in drawn]
    arrows = [
        len(text) + 6 for s, text in zip(drawn, labels, strict=True) if isinstance(s, Message)
    ]
    others = [
        len(text) + 2 for s, text in zip(drawn, labels, strict=True) if not isinstance(s, Message)
    ]
    width = max(MIN_COLUMN, *arrows, min(MAX_COLUMN, max(others, default=0)))
    center = {r: TIME_WIDTH + i * width + width // 2 for i, r in enumerate(roles)}
    span = TIME_WIDTH + len(roles) * width

    def lifelines() -> list[str]:
        row = [" "] * span
        for x in center.values():
            row[x] = "│"
        return row

    def put(row: list[str], x: int, text: str) -> None:
        if x + len(text) > len(row):
            row.extend(" " * (x + len(text) - len(row)))
        row[x : x + len(text)] = list(text)

    def named(values: dict[str, str]) -> str:
        row = [" "] * span
        for r, x in center.items():
            put(row, max(0, x - len(values[r]) // 2), values[r])
        return "".join(row).rstrip()

    lines = _header(timeline)
    lines.append(named({r: r for r in roles}))
    for step, text in zip(drawn, labels, strict=True):
        row = lifelines()
        if isinstance(step, Message):
            _arrow(row, center, step, text)
        else:
            put(row, center[step.role], text)
        row[0:TIME_WIDTH] = list(f"{_ms(step.at):>{TIME_WIDTH - 2}}  ")
        lines.append("".join(row).rstrip())
    lines.append(named({r: r for r in roles}))
    lines.append(named({r: timeline.final_state(r) for r in roles}))
    return "\n".join(lines) + "\n"


def _label(step: Message | Call | Mark) -> str:
    if isinstance(step, Message):
        if step.delay_ms is not None:
            return f"{step.label} {step.delay_ms:.1f}ms"
        if not step.seen_received:
            return f"{step.label} lost?" if step.observed else f"{step.label} unseen"
        return step.label
    if isinstance(step, Call):
        return f"[{step.label}]"
    return f"{GLYPHS.get(step.kind, '?')} {step.text}"


def _arrow(row: list[str], center: dict[str, int], m: Message, text: str) -> None:
    if m.sender not in center or m.receiver not in center:
        return
    a, b = center[m.sender], center[m.receiver]
    line = "╌" if m.control else "─"
    lo, hi = min(a, b), max(a, b)
    for x in range(lo + 1, hi):
        row[x] = line
    row[b - 1 if b > a else b + 1] = "x" if not m.seen_received else "▶" if b > a else "◀"
    if not m.seen_sent:
        row[a + 1 if b > a else a - 1] = "?"
    label = f" {text} "
    start = lo + 1 + max(1, (hi - lo - 1 - len(label)) // 2)
    row[start : start + len(label)] = list(label[: max(0, hi - 2 - start)])


def _header(timeline: Timeline) -> list[str]:
    lines = [
        f"session {timeline.session}"
        + (f" ({timeline.choreography})" if timeline.choreography else "")
    ]
    served = ", ".join(f"{r} at {timeline.nodes[r]}" for r in timeline.roles if r in timeline.nodes)
    lines.append(f"events of {served or 'no role'}")
    lines += [f"sidecar {url}: {why}" for url, why in timeline.unreachable.items()]
    lines += [f"note: {n}" for n in timeline.notes]
    lines.append("")
    return lines


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"+{ms:.1f}ms" if ms < 10_000 else f"+{seconds:.2f}s"


__all__ = ["render_text"]
