"""A peer's test suite: schemathesis over every operation of the live service (uvicorn + worker).

Checks: no server errors, documented status codes, response schemas and content types. Runs with
an admin API key (see schemathesis.toml), the LLM agent configured against the local fake
OpenAI server, and echo delays capped so that generated inputs cannot make requests slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.environment import ROOT
from tests.support.fake_openai import FakeOpenAI, start_fake_openai
from tests.support.processes import Live, bootstrap_user

# SQLite only: a minute of fuzzing, and the schema it checks is the same on both backends
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.sqlite_only]

MAX_EXAMPLES = 15
# deliberate exclusions, each explained in the README ("schemathesis")
EXCLUDED_CHECKS: tuple[str, ...] = ("positive_data_acceptance",)


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeOpenAI]:
    server = start_fake_openai()
    yield server
    server.close()


@pytest.fixture
def env(env: dict[str, str], fake_llm: FakeOpenAI) -> dict[str, str]:
    return {**env, "ECHO_MAX_DELAY": "0.0005", "SYNC_INVOKE_TIMEOUT": "30", "LLM_BASE_URL": fake_llm.base_url,
            "LLM_API_KEY": "test-key"}


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failures(live_service: Live, env: dict[str, str], tmp_path: Path) -> None:
    key = bootstrap_user(env, "schemathesis@example.com", admin=True)
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    st = Path(sys.executable).with_name("st")
    # the repository's config plus the throwaway admin's key, bound to the apiKeyAuth scheme so that
    # schemathesis never adds a second credential of its own (the service refuses both: 400)
    config = tmp_path / "schemathesis.toml"
    config.write_text((ROOT / "schemathesis.toml").read_text() + f'\n[auth.openapi.apiKeyAuth]\napi_key = "{key}"\n')
    proc = subprocess.run(
        [str(st), "--config-file", str(config), "run", f"{live_service.base}/openapi.json",
         "--phases", "examples,coverage,fuzzing,stateful", "--checks", "all",
         *(["--exclude-checks", ",".join(EXCLUDED_CHECKS)] if EXCLUDED_CHECKS else []),
         "--max-examples", str(MAX_EXAMPLES), "--seed", "20261125", "--request-timeout", "20",
         "--report", "junit", "--report-junit-path", str(out / "schemathesis-junit.xml")],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "API_KEY"} | {"NO_COLOR": "1"},
        capture_output=True, text=True, timeout=560,
    )
    (out / "schemathesis.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "Tested: " in proc.stdout
