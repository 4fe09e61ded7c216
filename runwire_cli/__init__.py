"""runwire_cli."""
