"""Revision scripts, loaded by Alembic by path."""
