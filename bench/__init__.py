"""Runwire's benchmark suite: ``python -m bench`` (or ``make bench``).

It starts the system the way ``make run`` does (four service processes), drives
it with real WebSocket clients running ``scripted`` runs, measures the same load
against a minimal baseline chain built from the same libraries, and writes a
JSON file, a Markdown table and a PNG chart per run. See ``bench/README.md``.
"""
