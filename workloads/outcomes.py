"""The three ways a saga ends, spelled once for the whole project.

A module of its own that imports nothing, so that every process can read these names, the
Locust process too: it runs gevent-patched and must not load the asyncio-based rest.
"""

COMMITTED = "committed"
COMPENSATED = "compensated"
REJECTED = "rejected"
OUTCOMES = (COMMITTED, COMPENSATED, REJECTED)
