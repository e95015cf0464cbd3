"""Test support: real processes (app servers, PostgreSQL clusters, PgBouncer) and real clients.

Everything here starts things for real and stops them for certain: every wait is bounded, and
every process is put in its own process group so that stopping it also stops its children.
"""
