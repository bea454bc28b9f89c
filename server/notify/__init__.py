"""Notifications: alert events → rendered bilingual emails → durable outbox → SMTP or .eml files."""
