"""The operator UI (server-rendered Django templates)."""
