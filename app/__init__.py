"""Ripple: a live counter, presence list and activity feed over PostgreSQL LISTEN/NOTIFY."""
