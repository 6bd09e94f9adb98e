"""Where a node keeps what must survive: sessions, inbox, outbox, step journal, transactions.

Two implementations behind one interface. `MemoryStore` is the non-durable default mode.
`SQLiteStore` is the fault-tolerant mode: the same in-memory state, written ahead to one
SQLite file (WAL) by a group-committing writer thread, and reloaded on start.
"""

from accompanist_py.store.memory import MemoryStore, SessionRecord, SessionState, TxnRecord
from accompanist_py.store.sqlite import SQLiteStore

__all__ = ["MemoryStore", "SQLiteStore", "SessionRecord", "SessionState", "TxnRecord"]
