"""Where the project keeps its configs and its local state (embedded MLflow, Ray temp, tiny model)."""

from __future__ import annotations

import os
from pathlib import Path


def configs_dir() -> Path:
    """``$TIGHT_PIPELINE_CONFIGS`` or the repository's ``configs/`` folder."""
    env = os.environ.get("TIGHT_PIPELINE_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "configs"


def state_dir() -> Path:
    """``$TIGHT_PIPELINE_HOME`` or ``./.tight-pipeline``: local MLflow DB, Prefect home, tiny model, demo output."""
    path = Path(os.environ.get("TIGHT_PIPELINE_HOME", ".tight-pipeline")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
