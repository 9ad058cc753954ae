"""``securemesh.audit``: the tamper-evident Merkle audit log (RFC 6962 / RFC 9162)."""

__all__: list[str] = []
