"""The green-mine supervision database (registry, list history, spot checks, rectifications) and its reports."""
