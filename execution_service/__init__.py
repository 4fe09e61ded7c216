"""execution_service."""
