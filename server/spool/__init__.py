"""Spool: the durable queue between ingest and the store, dead letters, and agent state."""
