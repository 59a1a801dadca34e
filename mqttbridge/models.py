"""The bridge owns no tables: the outbox it drains and the rejected-message counters it flushes are
`outbox.models` (below the apps that write them); mqttbridge's migrations 0001/0002 created them and moved them
there."""
