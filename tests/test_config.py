from pathlib import Path

import pytest

from agent_service.config import Settings, load_settings, settings_fields
from agent_service.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_mirror_the_seed() -> None:
    s = load_settings({}, env_file=None)
    assert (s.job_max_retries, s.job_retry_backoff_max, s.job_time_limit, s.job_soft_time_limit) == (3, 600, 600, 540)
    assert (s.stream_job_time_limit, s.stream_job_soft_time_limit, s.job_result_ttl) == (900, 840, 3600)
    assert s.database_path == "var/agent_service.db" and s.port == 8000 and s.host == "127.0.0.1"


@pytest.mark.parametrize(
    ("env", "name"),
    [({"JOB_MAX_RETRIES": "three"}, "JOB_MAX_RETRIES"), ({"PORT": "70000"}, "PORT"),
     ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"), ({"WORKER_POLL_DELAY": "0"}, "WORKER_POLL_DELAY"),
     ({"JOB_SOFT_TIME_LIMIT": "601"}, "JOB_SOFT_TIME_LIMIT")],
)
def test_bad_value_names_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings(env, env_file=None)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    f = tmp_path / ".env"
    f.write_text("# comment\nJOB_MAX_RETRIES=7\nexport LLM_MODEL='llama3'\nPORT=9000\n")
    s = load_settings({"PORT": "9100"}, env_file=f)
    assert (s.job_max_retries, s.llm_model, s.port) == (7, "llama3", 9100)


def test_empty_optional_value_means_unset() -> None:
    assert load_settings({"REDIS_URL": ""}, env_file=None).redis_url is None


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = {line.split("=", 1)[0].lstrip("# ").strip() for line in text.splitlines() if "=" in line}
    missing = [name for name, _, _ in settings_fields() if name not in documented]
    assert not missing, f".env.example lacks {missing}"
