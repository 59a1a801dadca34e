"""The tamper-evident audit trail: append-only, hash-chained entries for every mutating action."""
