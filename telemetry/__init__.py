"""Telemetry ingest and rollups (filled by the telemetry issue)."""
