"""Facades over agents and tasks for external protocols: A2A (a2a*.py), MCP (mcp*.py) and AG-UI
(agui*.py), with the JSON-RPC 2.0 envelope A2A and MCP share (jsonrpc.py)."""
