"""Processes we own: /proc identity, the ownership ledger and its warden, Prefect's temporary server."""
