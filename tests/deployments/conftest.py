"""`published_version` lives in tests/conftest.py (the bridge and e2e tests use it too)."""
