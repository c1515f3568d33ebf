"""Where the project keeps its configs and its local state (embedded MLflow, Ray temp, tiny model)."""

from __future__ import annotations

import os
from pathlib import Path


def configs_dir() -> Path:
    """``$TIGHT_PIPELINE_CONFIGS`` or the package's own ``configs/`` (package data: a wheel install has it too; the
    repository's top-level ``configs`` is a link to it)."""
    env = os.environ.get("TIGHT_PIPELINE_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parent / "configs"


def state_dir() -> Path:
    """``$TIGHT_PIPELINE_HOME`` or ``./.tight-pipeline``: local MLflow DB, Prefect home, tiny model, demo output."""
    path = Path(os.environ.get("TIGHT_PIPELINE_HOME", ".tight-pipeline")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


# Background services of Prefect's server that a temporary, per-process server never needs (no deployments,
# no workers). Turning them off keeps CPU for the model on small machines.
_EPHEMERAL_PREFECT_SERVICES_OFF = (
    "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
    "DB_VACUUM", "TRIGGERS", "CLEANUP_RECONCILER",
)


PREFECT_STARTUP_TIMEOUT_S = 180


def apply_local_defaults() -> None:
    """Offline, quiet, local-by-default environment; call before prefect/mlflow/ray are imported.

    Never overrides what the user set, except ``HF_HUB_OFFLINE=1`` (weights are never downloaded at run time).
    """
    home = state_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get("PREFECT_API_URL"):
        # A first start creates the temporary server's database: about 20 s on a 2-core machine, which is
        # Prefect's own start-up limit, so a fresh-state run failed more often than not. Wait long enough.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(PREFECT_STARTUP_TIMEOUT_S))
        for name in _EPHEMERAL_PREFECT_SERVICES_OFF:
            os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{name}_ENABLED", "false")
