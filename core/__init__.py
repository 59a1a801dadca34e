"""Cross-cutting plumbing: roles, request ids, the API error body, pagination and health checks."""
