"""Monitor: KPIs, alert rules and their lifecycle, fed from the stream."""
