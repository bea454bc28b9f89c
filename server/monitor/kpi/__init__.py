"""Green-mine KPIs: counter increments, water reuse, energy, dust, noise (see docs/kpi-alerts.md)."""
