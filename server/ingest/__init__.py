"""Ingest: subscribe, validate, spool, acknowledge."""
