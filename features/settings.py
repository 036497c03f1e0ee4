"""One typed settings object, read from the environment (prefix ``AFTERSALES_``) and an optional ``.env`` file.

Nothing is read or created at import time: call :func:`get_settings` where settings are needed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every tunable of the service. Override any field with ``AFTERSALES_<FIELD>`` (e.g. ``AFTERSALES_MARKET=US``)."""

    model_config = SettingsConfigDict(env_prefix="AFTERSALES_", env_file=".env", extra="ignore")

    # Where things live
    data_dir: Path = Field(PROJECT_ROOT / "data" / "default", description="Data folder read by commands by default.")
    models_dir: Path = Field(PROJECT_ROOT / "models", description="Local MLflow store, snapshots and model cards.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default: SQLite database models/mlflow.db. A team server: "
        "http://HOST:5000 (see README, Team MLflow on PostgreSQL)."
    )
    mlflow_artifact_root: str | None = Field(
        None, description="Artifact root of new experiments; default: models/artifacts, or, with an http(s) "
        "tracking server, the server's own (it proxies artifacts to its --artifacts-destination)."
    )
    market: str = Field("CN", description="Market whose public holidays and shopping events apply (CN, US, GB, DE, BR).")
    summer_sale: str = Field("07-15", description="Month-day of the configurable summer sale (MM-DD).")
    summer_sale_days: int = Field(3, description="Length of the summer sale in days.")

    # Review decisions
    review_db_url: str | None = Field(None, description="SQLAlchemy URL of the review decision store; default SQLite.")

    # Online feature store for serving
    redis_url: str | None = Field(None, description="redis:// URL of an optional online feature store.")

    # Serving
    api_keys: list[str] = Field(default_factory=list, description="Accepted API keys; empty = no authentication.")
    max_batch_size: int = Field(10_000, description="Largest batch accepted by /v1/tickets/score-batch.")

    # Ticket triage policy thresholds (business settings, not code)
    p1_escalation: float = Field(0.60, description="Escalation probability at or above which a ticket is P1.")
    p2_escalation: float = Field(0.35, description="Escalation probability at or above which a ticket is P2.")
    p3_escalation: float = Field(0.15, description="Escalation probability at or above which a ticket is P3.")
    risk_review_abuse: float = Field(0.70, description="Abuse risk at or above which a refund goes to risk review.")
    auto_approve_max_amount: float = Field(50.0, description="Largest refund that may be auto-approved.")
    high_merchant_risk: float = Field(0.80, description="Merchant risk percentile that marks a risky merchant.")

    # Serial returners
    review_capacity: int = Field(50, description="Accounts the risk team can review per cycle (queue size).")

    # Merchant complaint risk (training/merchant_risk.py)
    merchant_horizon_days: int = Field(60, description="Label window: complaints per order in the days after as-of.")
    merchant_snapshot_every_days: int = Field(14, description="Days between the as-of snapshots training uses.")
    merchant_warmup_days: int = Field(90, description="History before the first training snapshot.")
    merchant_test_fraction: float = Field(0.3, description="Share of the latest matured snapshots held out for test.")
    merchant_min_label_orders: int = Field(20, description="Orders in the label window a merchant needs to be scored.")
    merchant_new_days: int = Field(90, description="Merchants trading fewer days than this are flagged new_merchant.")

    # Serial returners (training/serial_returners.py, features/accounts.py)
    serial_min_labels: int = Field(30, description="Review decisions needed before the supervised model replaces "
                                   "the cold-start detector.")
    serial_pattern_share: float = Field(0.1, description="Share of the review queue reserved per abuse pattern.")
    serial_pattern_min_evidence: float = Field(3.0, description="Evidence (-log10 of the chance for an ordinary "
                                               "account) an account needs to fill a pattern's reserved slot.")
    serial_explore_share: float = Field(0.05, description="Share of the review queue drawn at random just below "
                                        "the top (audit sample that teaches the next model).")
    serial_review_cooldown_days: int = Field(90, description="Days a cleared account stays out of the queue.")
    serial_eval_horizon_days: int = Field(182, description="Evaluation: days between training as-of and scoring.")
    serial_rule_min_returns_90d: int = Field(5, description="Rule baseline: returns in 90 days at or above this...")
    serial_rule_min_return_rate: float = Field(0.5, description="...and a 90-day return rate at or above this.")
    serial_num_threads: int = Field(1, description="LightGBM threads for the serial-returner model.")
    serial_supervised_gate: bool = Field(True, description="Use the supervised serial-returner model only when it "
                                         "beats the cold start on held-out decisions (false: whenever labels allow).")
    serial_learner: Literal["logistic", "boost"] = Field(
        "logistic", description="What the supervised serial-returner model learns from the review decisions: "
        "'logistic', the weight of each pattern's evidence; 'boost', a small LightGBM on every feature (trained with "
        "lightgbm.dask under --engine dask).")

    # Dask engine (features/engine.py; `--engine dask` without `--scheduler` starts a LocalCluster with these)
    dask_workers: int = Field(2, description="Worker processes of the LocalCluster that --engine dask starts.")
    dask_threads_per_worker: int = Field(1, description="Threads per LocalCluster worker.")
    dask_processes: bool = Field(True, description="LocalCluster workers as processes (False: threads of this one).")
    dask_partitions: int = Field(0, description="Entity partitions per table on Dask (0: one per million rows, at "
                                 "least one per worker).")
    dask_min_train_rows: int = Field(50_000, description="Below this many training rows a model trains in this "
                                     "process even under --engine dask (distributing a small fit costs more than it "
                                     "saves: network set-up per fit).")

    # Return-volume forecast (training/return_volume.py, features/return_volume.py)
    return_volume_horizon: int = Field(60, description="Days forecast after the origin by `train` and its backtest.")
    return_volume_backtest_origins: int = Field(10, description="Backtest origins in `aftersales train return-volume`.")
    return_volume_peers: bool = Field(True, description="Run the AutoETS peer in the train backtest (needs statsforecast).")
    return_volume_num_threads: int = Field(1, description="LightGBM and BLAS threads for the return-volume model.")

    # Serving (serving/app.py, serving/service.py)
    max_body_bytes: int = Field(32 * 1024 * 1024, description="Largest request body the service reads (413 above).")
    snapshot_poll_s: float = Field(1.0, description="Seconds between the service's checks of models/snapshots/CURRENT "
                                   "(a new generation is swapped in whole); 0 turns the check off.")

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force (SQLite under models/ unless configured)."""
        return self.mlflow_tracking_uri or f"sqlite:///{(self.models_dir / 'mlflow.db').resolve()}"

    @property
    def tracking_server(self) -> bool:
        """Whether tracking goes to an MLflow server over HTTP (shared by a team) rather than a local store."""
        return self.tracking_uri.split(":", 1)[0].lower() in ("http", "https")

    @property
    def artifact_root(self) -> str | None:
        """Where MLflow stores artifacts for experiments this project creates.

        None with a tracking server and no explicit root: the server chooses (``mlflow-artifacts:/``, proxied to its
        ``--artifacts-destination``), so every team member's artifacts land in one place, not on their own disk.
        """
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        return None if self.tracking_server else (self.models_dir / "artifacts").resolve().as_uri()

    @property
    def cards_dir(self) -> Path:
        """Model cards written at registration: ``cards/<model>/v<version>.md``."""
        return self.models_dir / "cards"

    @property
    def review_db(self) -> str:
        """SQLAlchemy URL of the review decision store."""
        return self.review_db_url or f"sqlite:///{(self.models_dir / 'reviews.db').resolve()}"

    @property
    def snapshots_dir(self) -> Path:
        """Feature snapshots: per model version (``<model>/v<N>``) and the served generations (features/generations.py)."""
        return self.models_dir / "snapshots"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment on first use."""
    return Settings()
