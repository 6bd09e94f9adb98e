"""The inspector: a choreography session as a sequence diagram across its roles.

A decentralised saga has no central history; each sidecar serves its roles' events
(`accompanist_py.events`, `GET /sessions/{id}/events`). The inspector asks every sidecar of a
deployment (`Sidecars`), merges the answers into one `Timeline` (messages matched, clocks
corrected where they disagree: `merge`), and draws it: `render_text`, `render_mermaid`,
`render_svg`. `python -m accompanist_py.inspect` is the command line; its `serve` is a web page
(`web.make_app`). See docs/inspector.md.
"""

from accompanist_py.inspect.mermaid import render_mermaid
from accompanist_py.inspect.sidecars import Credentials, Sidecars, urls_of_config
from accompanist_py.inspect.svg import render_svg
from accompanist_py.inspect.text import render_text
from accompanist_py.inspect.timeline import Entry, NodeEvents, Timeline, merge

__all__ = [
    "Credentials",
    "Entry",
    "NodeEvents",
    "Sidecars",
    "Timeline",
    "merge",
    "render_mermaid",
    "render_svg",
    "render_text",
    "urls_of_config",
]
