"""agent-service: AI agents behind an HTTP API, with background jobs on arq."""

__version__ = "0.1.0"
