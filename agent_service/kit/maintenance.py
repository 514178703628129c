"""Maintenance jobs as declarations: each domain declares its own (name, schedule setting, body)
in its `jobs.py`, beside the body; the worker turns them into arq cron jobs and the admin API
lists and triggers them. The body returns a tagged msgspec Struct: the job's result type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from agent_service.kit.deps import Deps


@dataclass(frozen=True, kw_only=True)
class MaintenanceJob:
    name: str
    schedule_setting: str  # the Settings field holding its cron schedule ("minute hour * * *", UTC)
    run: Callable[[Deps], Awaitable[msgspec.Struct]]

    def function_name(self, key_prefix: str) -> str:
        """Its arq function (and cron) name. arq keys a cron run by `<name>:<slot>` across the whole
        Redis, so the prefix keeps two deployments sharing one Redis from skipping each other's runs."""
        return f"{key_prefix}{self.name}"

    def schedule(self, deps: Deps) -> str:
        value: str = getattr(deps.settings, self.schedule_setting)
        return value


def registry(deps: Deps) -> tuple[MaintenanceJob, ...]:
    """The jobs of this deployment; the entry points provide them (`deps.provide(registry, …)`)."""
    return ()


def find(deps: Deps, name: str) -> MaintenanceJob | None:
    return next((j for j in deps.part(registry) if j.name == name), None)
