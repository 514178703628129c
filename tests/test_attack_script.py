"""scripts/attack.py against a running service with the production limits, as anyone would rerun it.

The suite's environment raises several limits so that only the tests about them meet them; here
they are back at their defaults (the header deadline is shortened so the slowloris row takes two
seconds, not ten). Every row of the table must say `ok`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.environment import ROOT
from tests.support.processes import Live, bootstrap_user

pytestmark = [pytest.mark.e2e, pytest.mark.sqlite_only]  # child processes; the attacks are not about SQL

DEFAULT_LIMITS = {
    "RATE_LIMIT_FREE": "100", "RATE_LIMIT_LOGIN_PER_IP": "20", "RATE_LIMIT_UNAUTHENTICATED_PER_IP": "60",
    "LOGIN_FAILURES_BEFORE_DELAY": "5", "STREAM_MAX_PER_USER": "20", "MAX_API_KEYS_PER_USER": "20",
    "HTTP_HEADER_TIMEOUT": "2",
}


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    return {**env, **DEFAULT_LIMITS}


@pytest.mark.timeout(180)
def test_every_attack_of_the_script_gets_the_expected_answer(live_service: Live, env: dict[str, str]) -> None:
    key = bootstrap_user(env, "attacker@example.com")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "attack.py"), "--base-url", live_service.base, "--api-key", key],
        capture_output=True, text=True, timeout=150,
    )
    table = proc.stdout
    rows = [line for line in table.splitlines()[2:] if line.strip()]
    assert len(rows) == 13, table + proc.stderr
    failed = [row for row in rows if not row.rstrip().endswith("| ok")]
    assert not failed and proc.returncode == 0, table + proc.stderr[-2000:]
