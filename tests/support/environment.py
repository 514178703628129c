"""Where the repository is, and the environment every test service starts from."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TEST_ENV = {
    "APP_ENV": "test",
    "JWT_SECRET": "test-only-secret-0123456789abcdefghijklmnopqrstuvwxyz",
    "LOG_JSON": "true",
    "LOG_LEVEL": "INFO",
    "JOB_RETRY_BACKOFF_BASE": "0.05",
    "JOB_RETRY_BACKOFF_MAX": "0.2",
    "WORKER_POLL_DELAY": "0.02",
    "WORKER_HEALTH_INTERVAL": "1",
    # limits high enough that only the tests about limits meet them (they set their own)
    "RATE_LIMIT_FREE": "100000",
    "RATE_LIMIT_STREAM_FREE": "100000",
    "RATE_LIMIT_LOGIN_PER_IP": "100000",
    "JOB_RATE_LIMIT_ALL": "100000",
    "JOB_RATE_LIMIT_INVOKE": "100000",
    "JOB_RATE_LIMIT_STREAM": "100000",
    "RATE_LIMIT_UNAUTHENTICATED_PER_IP": "100000",
    "LOGIN_FAILURES_BEFORE_DELAY": "100000",
    "JOBS_RUNNING_FREE": "1000",
    "STREAM_MAX_PER_USER": "1000",
}
