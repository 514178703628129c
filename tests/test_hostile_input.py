"""Hostile input gets a precise 4xx, never a 500 (findings of the security review)."""

from __future__ import annotations

import pytest

from agent_service.kit.io import MAX_DEPTH, too_deep
from tests.support.apps import Client
from tests.support.problems import assert_problem

JSON = {"content-type": "application/json"}


def test_depth_scan_ignores_brackets_inside_strings() -> None:
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert not too_deep(b'{"message": "' + b"[" * 500 + b'"}')
    assert not too_deep(b'{"a": "\\\\", "b": [[1]]}')  # an escaped backslash ends before the quote


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 100_000])
@pytest.mark.sqlite_only  # refused while parsing the body: no SQL in it
async def test_deeply_nested_json_is_a_400_not_a_500(client: Client, depth: int) -> None:
    body = b'{"message": "x", "metadata": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    for path in ("/api/v1/agents/echo/invoke", "/api/v1/agents/echo/invoke-async"):
        problem = assert_problem(await client.post(path, content=body, headers=JSON), 400, "json_too_deep")
        assert "Traceback" not in str(problem) and "Recursion" not in str(problem)
