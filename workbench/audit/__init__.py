"""The audit trail: hash-chained ledger, verification, anchors, secret redaction."""

# A reports/ that caches a team's archive appends through its store, in every process that
# appends (kernels included): loading the package installs that route in the ledger.
from workbench.audit import remote as _remote  # noqa: E402, F401
