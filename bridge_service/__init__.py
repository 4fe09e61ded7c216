"""bridge_service."""
