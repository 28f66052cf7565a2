"""Embedded default data: deterministic toy datasets written on first use."""
