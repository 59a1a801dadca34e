"""One installation's processes, wired together: `manage.py serve`, `demo`, `mqtt_broker`, and `/healthz`.

The composition root of the apps (it may import any of them; none imports it), so that `core/` stays below
the apps it serves (tests/core/test_import_graph.py).
"""
