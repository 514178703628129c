"""Shared test helpers (not tests): imported by the test modules and conftest.py, never the other way round."""
