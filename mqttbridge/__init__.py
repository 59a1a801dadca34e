"""The control plane's MQTT edge: the bridge that applies device messages, and the outbox publisher."""
