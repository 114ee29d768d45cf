"""The audit trail: hash-chained ledger, verification, anchors, secret redaction."""
