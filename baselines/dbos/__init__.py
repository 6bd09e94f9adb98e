"""DBOS Transact as a baseline: every workload's saga as a DBOS workflow (`saga`).

The settings live here, apart from `saga`, so that the harness can report them without
importing DBOS itself.
"""

# What the system database trades, as the sidecars' store does: WAL, and no fsync per commit
# (durable against a killed process, which is what the benchmark does to it; not against a
# power cut). Why: baselines/dbos/README.md.
SQLITE_PRAGMAS = ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON")
