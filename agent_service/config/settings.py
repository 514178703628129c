"""The settings: one frozen msgspec Struct; each field is the upper-case environment variable of
the same name. Read them with `load_settings` (config/loading.py)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from agent_service.config.rules import check_url, is_loopback, is_origin
from agent_service.errors import ConfigError

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    # --- process -------------------------------------------------------------------------
    # production unless told otherwise: only `dev` and the test suite set development/test
    app_env: Literal["development", "test", "production"] = "production"
    host: str = "127.0.0.1"
    port: Port = 8000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool | None = None  # None: JSON when stdout is not a TTY
    var_dir: str = "var"

    # --- stores --------------------------------------------------------------------------
    redis_url: str | None = None  # None: `dev` starts an embedded server
    redis_key_prefix: str = "agent-service:"  # every key the project owns (arq's own keys aside)
    redis_timeout: PositiveFloat = 2.0  # connect and per-command timeout: a frozen Redis costs a request this much
    redis_max_connections: PositiveInt = 64  # per process (the follower hub's reader is one more)
    database_url: str | None = None  # postgresql://… (PaaS add-ons set it): PostgreSQL instead of SQLite
    database_path: str = "var/agent_service.db"  # the SQLite file when DATABASE_URL is unset
    db_busy_timeout_ms: PositiveInt = 5000
    db_pool_min: NonNegInt = 0  # 0: no background reconnect loop (and its log noise) while the server is down
    db_pool_max: PositiveInt = 10
    db_acquire_timeout: PositiveFloat = 5.0  # waiting longer for a pooled connection is a 503
    db_command_timeout: PositiveFloat = 30.0
    db_start_timeout: NonNegFloat = 30.0  # at start, wait this long for the database before giving up

    # --- HTTP ----------------------------------------------------------------------------
    max_body_bytes: PositiveInt = 1_048_576
    sync_invoke_timeout: PositiveFloat = 120.0
    public_base_url: str | None = None  # for absolute status URLs behind a proxy
    # browser origins allowed to call the API (comma-separated, e.g. https://app.example.com); `*` for any
    # origin without credentials; empty: no cross-origin access
    cors_origins: str = ""
    stream_token_ttl: Annotated[int, msgspec.Meta(ge=5, le=60)] = 60  # s to open an EventSource with ?token=
    http_max_header_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 16_384  # request line + headers; beyond: 431
    http_header_timeout: PositiveFloat = 10.0  # a request's headers must arrive within this (slowloris)
    http_max_connections: PositiveInt = 2000  # concurrent connections per web process; beyond: 503
    http_keepalive_timeout: PositiveFloat = 5.0

    # --- live streams (SSE and WebSocket followers) -------------------------------------------
    stream_max_per_user: PositiveInt = 20  # open followers per user across every web process; beyond: 429
    stream_max_per_process: PositiveInt = 2000  # open followers per web process; beyond: 429
    stream_max_seconds: PositiveFloat = 600.0  # a follower ends cleanly (resumable) after this long
    stream_time_limit: PositiveFloat = 600.0  # /agents/{id}/stream ends with an error event after this long

    # --- agents --------------------------------------------------------------------------
    default_agent: str = "echo"
    echo_max_delay: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 60.0  # per chunk; at most 5 outside development
    echo_max_chars: PositiveInt = 100_000  # at most 20 000 outside development
    agents: str = ""  # extra agents, comma-separated `module:attr` paths
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout: PositiveFloat = 60.0
    llm_system_prompt: str = "You are a helpful assistant."

    # --- jobs (mirrors the Celery seed) -------------------------------------------------
    queue_name: str = ""  # empty: "<REDIS_KEY_PREFIX>queue"
    worker_max_jobs: PositiveInt = 50
    worker_poll_delay: PositiveFloat = 0.05
    worker_health_interval: PositiveFloat = 5.0
    # running jobs per user at once, by tier (fairness: one user's burst cannot take every slot)
    jobs_running_free: PositiveInt = 5
    jobs_running_pro: PositiveInt = 20
    jobs_running_enterprise: PositiveInt = 50
    job_max_retries: NonNegInt = 3
    job_max_worker_losses: PositiveInt = 3  # a job whose worker dies this often fails as worker_lost
    job_lease_seconds: Annotated[float, msgspec.Meta(ge=3)] = 30.0  # a dead worker's job runs again within this
    worker_drain_seconds: NonNegFloat = 25.0  # SIGTERM: running jobs may finish this long, then are re-queued
    worker_outage_exit_seconds: PositiveFloat = 300.0  # Redis gone this long: exit non-zero (a supervisor restarts)
    job_retry_backoff_base: PositiveFloat = 1.0
    job_retry_backoff_max: PositiveFloat = 600.0
    job_time_limit: PositiveFloat = 600.0
    job_soft_time_limit: PositiveFloat = 540.0
    stream_job_time_limit: PositiveFloat = 900.0
    stream_job_soft_time_limit: PositiveFloat = 840.0
    job_result_ttl: PositiveInt = 3600

    # --- identity ------------------------------------------------------------------------
    jwt_secret: str | None = None  # required outside development
    jwt_issuer: str = "agent-service"
    jwt_audience: str = "agent-service"
    access_token_ttl: PositiveInt = 900
    refresh_token_ttl: PositiveInt = 30 * 24 * 3600
    jwt_jwks_url: str | None = None  # optional external OIDC issuer (RS256/ES256)
    jwt_external_issuer: str | None = None
    jwt_external_audience: str | None = None
    default_tier: Literal["free", "pro", "enterprise"] = "free"
    max_api_keys_per_user: PositiveInt = 20  # live (unrevoked) keys a user may hold
    # s a web process may reuse an API key's or user's row without reading SQL (changes made through the API
    # reach every process at once over Redis pub/sub; this bounds any other change); 0: read it on every request
    auth_cache_ttl: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    login_failures_before_delay: PositiveInt = 5  # per account, any IP: then each try waits longer
    login_failure_delay_max: PositiveFloat = 60.0  # the longest an account's login is held back, s
    trusted_proxies: str = ""  # comma-separated IPs/CIDRs whose X-Forwarded-For is believed
    dev_admin_email: str = "admin@localhost"
    # the first admin of a fresh deployment (created once, by `migrate` and at web start; never logged)
    bootstrap_admin_email: str | None = None
    bootstrap_admin_password: str | None = None

    # --- limits (per minute, shared by every process through Redis) -----------------------
    rate_limit_enabled: bool = True
    rate_limit_free: PositiveInt = 100
    rate_limit_pro: PositiveInt = 1000
    rate_limit_enterprise: PositiveInt = 10000
    rate_limit_stream_free: PositiveInt = 50
    rate_limit_stream_pro: PositiveInt = 500
    rate_limit_stream_enterprise: PositiveInt = 5000
    rate_limit_login_per_ip: PositiveInt = 20
    rate_limit_unauthenticated_per_ip: PositiveInt = 60  # requests with missing or bad credentials
    job_rate_limit_all: PositiveInt = 1000
    job_rate_limit_invoke: PositiveInt = 100
    job_rate_limit_stream: PositiveInt = 50
    metrics_token: str | None = None  # when set, /metrics needs `Authorization: Bearer <token>`

    # --- observability (off unless set; needs the `observability` extra) --------------------
    sentry_dsn: str | None = None  # web 500s and crashed jobs to Sentry (kit/error_reporting.py)
    sentry_environment: str | None = None  # None: APP_ENV
    otel_exporter_otlp_endpoint: str | None = None  # OTLP/HTTP base URL; traces to …/v1/traces (kit/tracing.py)
    otel_service_name: str = "agent-service"

    # --- webhooks (agent_service/webhooks) ------------------------------------------------
    # loopback and private addresses as webhook targets (`dev` sets it; cloud metadata addresses stay refused)
    webhook_allow_private_networks: bool = False
    webhook_timeout: PositiveFloat = 10.0  # one delivery attempt, DNS to the last byte read
    webhook_max_response_bytes: PositiveInt = 4096  # read at most this much of a receiver's answer
    # s before each retry (each ±10 % jitter); after the last one the delivery has failed (about a day)
    webhook_retry_schedule: str = "5,30,120,600,1800,3600,7200,14400,28800,32400"
    webhook_disable_after_hours: PositiveFloat = 24.0  # a subscription failing this long is disabled
    webhook_poll_seconds: Annotated[int, msgspec.Meta(ge=1, le=30)] = 2  # due retries are looked for this often
    webhook_concurrency: PositiveInt = 10  # attempts in flight per delivery pass
    webhook_max_subscriptions: PositiveInt = 20  # subscriptions a user may hold

    # --- batches and usage (agent_service/tasks/batches.py, agent_service/usage) ----------
    batch_max_items: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000  # invocations in one invoke-batch
    batch_max_body_bytes: PositiveInt = 16 * 1_048_576  # an invoke-batch body (MAX_BODY_BYTES is one call's)
    # JSON {"<model>": {"input": <USD per million tokens>, "output": <…>}}: each run's cost; empty: no costs
    model_prices: str = ""
    # tokens a user may use per calendar month (UTC), by tier; 0: unlimited (a user's own budget wins)
    budget_tokens_free: NonNegInt = 0
    budget_tokens_pro: NonNegInt = 0
    budget_tokens_enterprise: NonNegInt = 0
    budget_reserve_tokens: PositiveInt = 2000  # held per submission of a budgeted user until its run reports

    # --- sessions, audit, maintenance ----------------------------------------------------
    session_max_messages: PositiveInt = 100
    session_expiry_hours: PositiveFloat = 24.0
    audit_log_retention_days: PositiveInt = 90
    audit_archive_dir: str = "var/audit-archive"
    audit_flush_interval: PositiveFloat = 0.5
    audit_batch_size: PositiveInt = 200
    temp_dir: str = "var/tmp"
    temp_file_max_age_hours: PositiveFloat = 24.0
    cron_cleanup_expired_sessions: str = "0 * * * *"
    cron_archive_old_audit_logs: str = "0 2 * * *"
    cron_cleanup_token_blacklist: str = "0 */6 * * *"
    cron_cleanup_temp_files: str = "0 3 * * *"

    def __post_init__(self) -> None:
        if not self.queue_name:
            msgspec.structs.force_setattr(self, "queue_name", f"{self.redis_key_prefix}queue")
        if self.job_soft_time_limit >= self.job_time_limit:
            raise ValueError("JOB_SOFT_TIME_LIMIT must be below JOB_TIME_LIMIT")
        if self.stream_job_soft_time_limit >= self.stream_job_time_limit:
            raise ValueError("STREAM_JOB_SOFT_TIME_LIMIT must be below STREAM_JOB_TIME_LIMIT")
        if self.redis_url is not None:
            check_url("REDIS_URL", self.redis_url, ("redis", "rediss", "unix"))
        if self.database_url is not None:
            check_url("DATABASE_URL", self.database_url, ("postgresql", "postgres"))
        origins = self.cors_origin_list
        if "*" in origins and len(origins) > 1:
            raise ValueError("CORS_ORIGINS is either `*` or a list of origins, not both")
        for origin in origins:
            if origin != "*" and not is_origin(origin):
                raise ValueError(f"CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port]: no path, query, "
                                 "fragment or user)")
        if not all(d > 0 for d in self.webhook_retry_delays):
            raise ValueError("WEBHOOK_RETRY_SCHEDULE is a comma-separated list of seconds, each above 0")
        if self.model_prices and not self.model_price_table:
            raise ValueError('MODEL_PRICES is JSON {"<model>": {"input": <USD per 1M tokens>, "output": <…>}}')
        if bool(self.bootstrap_admin_email) != bool(self.bootstrap_admin_password):
            raise ValueError("BOOTSTRAP_ADMIN_EMAIL and BOOTSTRAP_ADMIN_PASSWORD go together")

    def require_stores(self) -> None:
        """Outside development a process that needs Redis and SQL must be told where they are:
        a PaaS machine's local disk and localhost are never the deployment's stores."""
        if self.is_dev:
            return
        if not self.redis_url:
            raise ConfigError("REDIS_URL is not set (required when APP_ENV=production)")
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set (required when APP_ENV=production: every machine must "
                              "share one PostgreSQL)")

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """WEBHOOK_RETRY_SCHEDULE as seconds; () if it is not a list of numbers (refused at start)."""
        try:
            return tuple(float(part) for part in self.webhook_retry_schedule.split(","))
        except ValueError:
            return ()

    @property
    def model_price_table(self) -> dict[str, tuple[float, float]]:
        """MODEL_PRICES as model → (input, output) USD per million tokens; {} if unset or not of that
        shape (refused at start)."""
        try:
            table = msgspec.json.decode(self.model_prices or "{}", type=dict[str, dict[str, float]])
        except msgspec.DecodeError:
            return {}
        if not all(set(p) <= {"input", "output"} and min(p.values(), default=0) >= 0 for p in table.values()):
            return {}
        return {m: (p.get("input", 0.0), p.get("output", 0.0)) for m, p in table.items()}

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    def check_bind(self) -> None:
        """Development defaults (a generated secret, uncapped demo agent) are for this machine only."""
        if self.app_env == "development" and not is_loopback(self.host):
            raise ConfigError(f"development mode listens on loopback only (HOST={self.host}); use HOST=127.0.0.1, "
                              "or APP_ENV=production with its required settings to serve other machines")

    @property
    def is_dev(self) -> bool:
        return self.app_env != "production"
