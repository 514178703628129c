"""Agents: the protocol, the registry and the built-ins."""
