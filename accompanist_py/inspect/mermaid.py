"""The timeline as a Mermaid `sequenceDiagram`.

Participants are the roles, each followed by its service. Messages are arrows (dashed for
the outcome protocol's done/abort/decision, a cross when never seen at the receiver), a
service call is a request to the role's service and its answer with status and latency, and
the other events are notes over their role. From the first abort on, the diagram sits in a
red `rect`: the compensation phase; restarts are notes in their own colour block.
"""

from __future__ import annotations

import re

from accompanist_py.inspect.diagram import Call, Mark, Message, steps
from accompanist_py.inspect.timeline import Timeline

COMPENSATION = "rgba(255, 120, 120, 0.15)"
RESTART = "rgba(120, 160, 255, 0.2)"
ENTITIES = {"#": "#35;", ";": "#59;"}


def render_mermaid(timeline: Timeline) -> str:
    """Mermaid source for `timeline` (participant ids are r0.., s0..; names are aliases)."""
    ids = {role: f"r{i}" for i, role in enumerate(timeline.roles)}
    services = {role: f"s{i}" for i, role in enumerate(timeline.roles)}
    called = {s.role for s in steps(timeline) if isinstance(s, Call)}
    lines = ["sequenceDiagram"]
    for role in timeline.roles:
        lines.append(f"    participant {ids[role]} as {_text(role)}")
        if role in called:
            lines.append(f"    participant {services[role]} as {_text(role)}'s service")
    indent = "    "
    in_compensation = False
    for step in steps(timeline):
        if isinstance(step, Mark) and step.kind == "abort" and not in_compensation:
            lines.append(f"{indent}rect {COMPENSATION}")
            indent += "    "
            in_compensation = True
            lines.append(f"{indent}Note over {_span(ids, timeline.roles)}: compensation")
        if isinstance(step, Message):
            if step.sender not in ids or step.receiver not in ids:
                continue
            arrow = "-x" if not step.seen_received else ("-->>" if step.control else "->>")
            label = f"{step.message} seq {step.seq}"
            if step.delay_ms is not None:
                label += f" ({step.delay_ms:.1f} ms)"
            elif not step.seen_sent:
                label += " (send not recorded)"
            lines.append(f"{indent}{ids[step.sender]}{arrow}{ids[step.receiver]}: {_text(label)}")
        elif isinstance(step, Call):
            me, svc = ids[step.role], services[step.role]
            lines.append(f"{indent}{me}->>{svc}: {_text(step.operation)}")
            if step.status is None:
                lines.append(f"{indent}Note over {svc}: no answer recorded")
            else:
                tries = f", {step.attempts} attempts" if (step.attempts or 1) > 1 else ""
                latency = f"{step.latency_ms:.1f} ms" if step.latency_ms is not None else "?"
                lines.append(f"{indent}{svc}-->>{me}: {_text(f'{step.status} {latency}{tries}')}")
        elif step.kind in ("restart", "replay"):
            lines += [
                f"{indent}rect {RESTART}",
                f"{indent}    Note over {ids[step.role]}: {_text(step.text)}",
                f"{indent}end",
            ]
        else:
            lines.append(f"{indent}Note over {ids[step.role]}: {_text(step.text)}")
    if in_compensation:
        lines.append("    end")
    final = ", ".join(f"{r} {timeline.final_state(r)}" for r in timeline.roles)
    if timeline.roles:
        lines.append(f"    Note over {_span(ids, timeline.roles)}: {_text('final: ' + final)}")
    return "\n".join(lines) + "\n"


def _span(ids: dict[str, str], roles: list[str]) -> str:
    return ids[roles[0]] if len(roles) == 1 else f"{ids[roles[0]]},{ids[roles[-1]]}"


def _text(value: str) -> str:
    """Text Mermaid shows as is: '#' and ';' as its entity codes, no line breaks."""
    return re.sub(r"[#;\n\r]", lambda m: ENTITIES.get(m.group(), " "), value)


__all__ = ["render_mermaid"]
