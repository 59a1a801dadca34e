"""The embedded MQTT broker: device credentials, topic ACL and an amqtt broker that enforces them.

No Django import here, so the broker can run inside the web process or on its own; the
Django side only supplies the function that checks credentials.
"""
