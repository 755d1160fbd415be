"""Alerts in: the Alertmanager payload (parsed and bounded) and what happens to each alert (taken
here, forwarded to its node's inspector, or ignored with the reason)."""
