"""Alert rules and their persisted lifecycle (see docs/kpi-alerts.md)."""
