"""arq entry point: `arq agent_service.worker.WorkerSettings`.

Agent jobs and the cron maintenance jobs run in this one process. `python -m agent_service
worker` runs the same settings on FastWorker, which starts the next job as soon as a slot frees.
"""

from agent_service.config import load_settings
from agent_service.worker_settings import build_worker_settings

WorkerSettings = build_worker_settings(load_settings())
