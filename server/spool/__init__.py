"""Spool: the durable queue between ingest and the store (`batches`), the dead letters (`deadletter`) and the
agent states (`agents`), kept apart, in one SQLite file (`spool`)."""
