"""The timeline as an SVG sequence diagram, for the inspector's web page.

Drawn on the server, so that the page needs no library: a lifeline per role (`g.lifeline`),
a row per step: messages as arrows (`g.message`, dashed for the outcome protocol, `lost`
when never received), service calls as boxes on their role's lifeline with the status and
latency (`g.call`), and marks (`g.mark.<kind>`) for the other events, compensations, aborts
and restarts in their own colours; each role's final state under its lifeline
(`text.final`). Every element carries data-* attributes so that a test can find it.
"""

from __future__ import annotations

from html import escape

from accompanist_py.inspect.diagram import Call, Mark, Message, steps
from accompanist_py.inspect.timeline import Timeline

LANE = 210
ROW = 28
TOP = 50
LEFT = 80
COLOURS = {
    "started": "#555",
    "committed": "#2a7d2a",
    "refused": "#c0392b",
    "compensated": "#d35400",
    "abort": "#c0392b",
    "restart": "#1f5fbf",
    "replay": "#1f5fbf",
    "finished": "#333",
    "truncated": "#999",
}
STYLE = """
.lifeline line{stroke:#999;stroke-dasharray:4 3}
.lifeline text,.final{font:bold 14px sans-serif;text-anchor:middle}
.message line{stroke:#222;stroke-width:1.4}
.message.control line{stroke-dasharray:6 3;stroke:#666}
.message.lost line{stroke:#c0392b}
.message text,.call text,.mark text{font:12px sans-serif}
.message text{text-anchor:middle}
.call rect{fill:#eef4ff;stroke:#4a6fa5}
.call.refused rect{fill:#fdecea;stroke:#c0392b}
.call.open rect{fill:#fff;stroke:#c0392b;stroke-dasharray:3 2}
.call text{text-anchor:middle}
.time{font:11px monospace;fill:#777}
.mark.restart line,.mark.replay line{stroke:#1f5fbf;stroke-width:2}
"""


def render_svg(timeline: Timeline) -> str:
    """An `<svg>` element (no XML prolog, ready to inline in HTML) for `timeline`."""
    drawn = steps(timeline)
    x = {role: LEFT + LANE // 2 + i * LANE for i, role in enumerate(timeline.roles)}
    width = LEFT + LANE * max(1, len(timeline.roles))
    bottom = TOP + ROW * (len(drawn) + 1)
    height = bottom + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sequence" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" data-session="{_a(timeline.session)}">',
        f"<style>{STYLE}</style>",
        '<defs><marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#222"/>'
        "</marker></defs>",
    ]
    for role, cx in x.items():
        out.append(
            f'<g class="lifeline" data-role="{_a(role)}"><text x="{cx}" y="{TOP - 20}">'
            f'{escape(role)}</text><line x1="{cx}" y1="{TOP - 10}" x2="{cx}" y2="{bottom}"/></g>'
        )
    for i, step in enumerate(drawn):
        y = TOP + ROW * (i + 1)
        out.append(f'<text class="time" x="4" y="{y + 4}">+{step.at * 1000:.1f}ms</text>')
        if isinstance(step, Message):
            out.append(_message(step, x, y))
        elif isinstance(step, Call):
            out.append(_call(step, x[step.role], y))
        else:
            out.append(_mark(step, x[step.role], y))
    for role, cx in x.items():
        state = timeline.final_state(role)
        out.append(
            f'<text class="final" data-role="{_a(role)}" data-state="{_a(state)}" x="{cx}" '
            f'y="{bottom + 25}">{escape(state)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _message(m: Message, x: dict[str, int], y: int) -> str:
    if m.sender not in x or m.receiver not in x:
        return ""
    classes = "message" + (" control" if m.control else "") + ("" if m.seen_received else " lost")
    a, b = x[m.sender], x[m.receiver]
    end = b - 4 if b > a else b + 4
    label = m.label + (f" ({m.delay_ms:.1f} ms)" if m.delay_ms is not None else "")
    if not m.seen_received:
        label += " not received"
    return (
        f'<g class="{classes}" data-from="{_a(m.sender)}" data-to="{_a(m.receiver)}" '
        f'data-kind="{_a(m.message)}" data-seq="{_a(str(m.seq))}">'
        f'<line x1="{a}" y1="{y}" x2="{end}" y2="{y}" marker-end="url(#head)"/>'
        f'<text x="{(a + b) // 2}" y="{y - 5}">{escape(label)}</text></g>'
    )


def _call(c: Call, cx: int, y: int) -> str:
    status = c.status or "open"
    classes = (
        "call"
        + (" refused" if c.status == "refused" else "")
        + (" open" if c.status is None else "")
    )
    latency = f"{c.latency_ms:.1f}" if c.latency_ms is not None else ""
    return (
        f'<g class="{classes}" data-role="{_a(c.role)}" data-operation="{_a(c.operation)}" '
        f'data-status="{_a(status)}" data-latency-ms="{latency}">'
        f'<rect x="{cx - LANE // 2 + 12}" y="{y - 11}" width="{LANE - 24}" height="20" rx="3"/>'
        f'<text x="{cx}" y="{y + 4}">{escape(c.label)}</text></g>'
    )


def _mark(m: Mark, cx: int, y: int) -> str:
    colour = COLOURS.get(m.kind, "#333")
    across = ""
    if m.kind in ("restart", "replay"):
        across = (
            f'<line x1="{cx - LANE // 2 + 6}" y1="{y - 8}" x2="{cx + LANE // 2 - 6}" y2="{y - 8}"/>'
        )
    return (
        f'<g class="mark {_a(m.kind)}" data-role="{_a(m.role)}">{across}'
        f'<circle cx="{cx}" cy="{y}" r="5" fill="{colour}"/>'
        f'<text x="{cx + 9}" y="{y + 4}" fill="{colour}">{escape(m.text)}</text></g>'
    )


def _a(value: str) -> str:
    return escape(value, quote=True)


__all__ = ["render_svg"]
