"""Webhooks: a task's own `webhook` and users' subscriptions, delivered signed (Standard Webhooks),
durably and with retries, behind an SSRF guard (kit/ssrf.py)."""
