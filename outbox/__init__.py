"""The bridge's tables that the apps below it write: the transactional outbox of MQTT messages to devices
(`OutboxMessage`, queued by `outbox_enqueue`/`outbox_enqueue_many` in the transaction that needs them) and
the counters of device messages refused (`RejectedMessageCount`). The bridge (`mqttbridge/`) drains the one
and flushes the other; this app imports no other."""
