import pytest

from agent_service.errors import ConfigError
from agent_service.kit.cron import parse


def test_seed_schedules() -> None:
    assert parse("x", "0 * * * *") == {"minute": {0}, "hour": None}
    assert parse("x", "0 2 * * *") == {"minute": {0}, "hour": {2}}
    assert parse("x", "0 */6 * * *") == {"minute": {0}, "hour": {0, 6, 12, 18}}
    assert parse("x", "15,45 1-3 * * *") == {"minute": {15, 45}, "hour": {1, 2, 3}}


@pytest.mark.parametrize("spec", ["", "0 2 * *", "60 * * * *", "0 24 * * *", "0 2 1 * *", "a b * * *", "*/0 * * * *",
                                  "5-1 * * * *"])
def test_bad_specs_name_the_variable(spec: str) -> None:
    with pytest.raises(ConfigError, match="CRON_CLEANUP_TEMP_FILES"):
        parse("cron_cleanup_temp_files", spec)
