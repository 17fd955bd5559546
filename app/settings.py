"""Application settings, read from `SAGE_*` environment variables (one place for every knob)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "dev-insecure-secret-change-me"


class Settings(BaseSettings):
    """Every setting has an environment variable `SAGE_<NAME>` (case-insensitive).

    Defaults give the embedded mode: SQLite and a file-system Celery broker under `data_dir`,
    no servers needed. Point `database_url` at PostgreSQL and `broker_url` at Redis for production.
    """

    model_config = SettingsConfigDict(env_prefix="SAGE_", env_file=".env", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./data")
    database_url: str = ""  # default: sqlite:///<data_dir>/sage.db
    broker_url: str = ""  # default: filesystem:// under <data_dir>/broker
    result_backend: str = ""  # default: db+sqlite:///<data_dir>/celery-results.db, or the Redis broker
    secret_key: str = DEV_SECRET

    # Object storage: "" = the local folder <data_dir>/objects; file:///path; or s3://bucket/prefix
    # (credentials and region from the standard AWS_* variables; endpoint for MinIO and the like).
    storage_url: str = ""
    s3_endpoint_url: str = ""
    s3_multipart_threshold_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Browser downloads of stored files (images) redirect to a presigned URL of the bucket instead
    # of streaming through the web process; the permission check happens before the URL is issued.
    s3_presigned_downloads: bool = False
    s3_presign_ttl_s: int = Field(default=300, gt=0, le=7 * 24 * 3600)
    # Scratch cache of downloaded objects and model weights under <data_dir>/cache (per process
    # folder; safe to delete while the process is stopped).
    cache_max_bytes: int = Field(default=2 * 1024**3, gt=0)

    # Uploads and images
    max_upload_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    max_import_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    # Zip import guards against zip bombs: total uncompressed bytes, members, and the
    # uncompressed/compressed ratio of any member larger than 1 MiB.
    max_import_uncompressed_bytes: int = Field(default=8 * 1024 * 1024 * 1024, gt=0)
    max_import_files: int = Field(default=500_000, gt=0)
    max_zip_ratio: float = Field(default=200.0, gt=1)
    # Request bodies (checked while they stream, before authentication; see app.hardening):
    # JSON and url-encoded forms, and any body sent without credentials.
    max_json_bytes: int = Field(default=1024 * 1024, gt=0)
    max_anonymous_body_bytes: int = Field(default=64 * 1024, gt=0)
    # Heavy renders (overlays, consensus, agreement, synchronous predict) running at once per web
    # process; a request waits up to render_wait_s for a slot, then answers 503 with Retry-After.
    render_slots: int = Field(default=4, ge=1)
    render_wait_s: float = Field(default=10.0, ge=0)
    # Synchronous predicts waiting for a worker at once per web process (they hold no thread).
    predict_max_waiting: int = Field(default=64, ge=1)
    # Background work a project may have queued or running at once: export and batch-predict jobs
    # (rows not touched for 15 min count as abandoned), and asynchronous predicts per web process.
    # Beyond it: 429 with Retry-After. Training runs are one queued or running per project.
    max_queued_jobs_per_project: int = Field(default=20, ge=1)
    # Longest side of an image rendered for display (overlays): bigger images are downscaled first.
    display_max_side: int = Field(default=1024, ge=64)
    # /metrics: when set, scrapes must send `Authorization: Bearer <metrics_token>`.
    metrics_token: str = ""

    # Training options: upper bounds checked before anything is queued.
    max_train_epochs: int = Field(default=10_000, ge=1)
    max_train_image_size: int = Field(default=1024, ge=8)
    max_train_batch_size: int = Field(default=1024, ge=1)

    # Auth
    session_cookie: str = "sage_session"
    session_max_age_s: int = 14 * 24 * 3600
    access_token_ttl_s: int = 24 * 3600
    login_attempts_per_minute: int = 10
    # Failed logins per client address (any usernames) and per username (any addresses) a minute.
    login_attempts_per_address_per_minute: int = 30
    login_attempts_per_username_per_minute: int = 30
    # Personal API tokens created without an expiry get this many days (0 = never expire).
    api_token_default_ttl_days: int = Field(default=90, ge=0)

    # Worker
    broker_polling_interval_s: float = 0.05
    heartbeat_interval_s: float = 5.0
    heartbeat_stale_s: float = 60.0
    max_run_attempts: int = 3
    retrain_check_interval_s: float = 60.0
    predict_timeout_s: float = 30.0
    # How often a training run's owner refreshes its heartbeat and reads the cancel flag; bounds
    # how long `POST /training-runs/{rid}/cancel` takes to stop a run (plus one training step).
    cancel_poll_interval_s: float = Field(default=1.0, gt=0)
    reap_interval_s: float = Field(default=15.0, gt=0)  # beat: how often stale runs are reaped
    # Results of finished batch predictions are deleted from storage this long after the job
    # finished (the job then answers 410); export archives are kept while their model version exists.
    job_result_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    job_result_sweep_interval_s: float = Field(default=3600.0, gt=0)  # beat: how often they are swept
    # Beat: how often stored objects no row uses are swept, and how old (untouched) they must be.
    orphan_sweep_interval_s: float = Field(default=3600.0, gt=0)
    orphan_grace_s: float = Field(default=6 * 3600.0, ge=0)
    orphan_sweep_dry_run: bool = False  # only count orphans (in /metrics and the log)
    # beat: how often images without a prediction of their project's active model (and changed
    # alignments) are swept up; bounds how stale the review orderings get if an event was lost.
    fresh_predictions_interval_s: float = Field(default=60.0, gt=0)
    # `serve` also starts one worker per queue and beat: None = only in embedded mode.
    serve_workers: bool | None = None
    # Grace a child process gets to stop on SIGTERM before it is killed (serve, multi-queue worker).
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Predict worker: concurrent requests (threads) and how they are batched into one forward pass.
    predict_concurrency: int = Field(default=8, ge=1)
    predict_batch_max: int = Field(default=16, ge=1)
    # 0: a batch is whatever queued while the previous forward pass ran (no added latency when idle).
    predict_batch_wait_ms: float = Field(default=0.0, ge=0)
    predict_cache_models: int = Field(default=4, ge=1)  # loaded model versions kept per predict worker
    # Training worker processes run at this `nice` level, so on a shared CPU the predict worker
    # keeps its latency while a run trains (0 = same priority).
    train_nice: int = Field(default=10, ge=0, le=19)
    # Intra-op threads of torch in worker processes; 0 = torch's default (one per core). On a host
    # shared with other jobs, multi-threaded CPU kernels stall whenever a core is taken.
    torch_threads: int = Field(default=0, ge=0)
    # Processes (ranks) per training run: >1 trains with DistributedDataParallel, one rank per GPU
    # of the worker (`sage-studio worker --queues train --gpus 0,1` sets it), or gloo on CPU.
    train_processes: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _refuse_default_secret(self) -> Settings:
        if self.env == "production" and self.secret_key == DEV_SECRET:
            raise ValueError(
                "SAGE_SECRET_KEY is still the development default; set it to a long random value "
                "(for example `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)."
            )
        return self

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'sage.db'}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return self.resolved_data_dir / "broker"

    @property
    def is_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def resolved_result_backend(self) -> str:
        if self.result_backend:
            return self.result_backend
        if self.is_embedded_broker:
            return f"db+sqlite:///{self.resolved_data_dir / 'celery-results.db'}"
        return self.resolved_broker_url


@lru_cache
def get_settings() -> Settings:
    return Settings()
