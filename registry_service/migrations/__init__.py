"""Alembic scripts of the registry schema (a package so that wheels ship them)."""
