"""Shared fixtures, one of each per test run: a tiny model, isolated state dirs, one S3 server, one embedded Ray,
one Prefect server (in-process flows use it; CLI subprocesses reach it through ``prefect_env``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="tp-test-home-"))
# Set before prefect / mlflow / ray are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TIGHT_PIPELINE_HOME"] = str(_SESSION_HOME)
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_TMPDIR"] = str(Path(tempfile.gettempdir()) / f"tpray-test-{os.getpid()}")
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


SERVICE_FIXTURES = {"s3", "ray_session", "prefect_harness", "servers"}


def pytest_collection_modifyitems(config, items):
    # Anything that starts a service (S3, Ray, Prefect, MLflow, a browser) is slow: `make test-fast` leaves it out.
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from tight_pipeline.testing.tiny_models import make_tiny_model

    return make_tiny_model(_SESSION_HOME / "models" / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir):
    from tight_pipeline.method.specs import resolve_model_spec

    return resolve_model_spec(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def engine(tiny_spec):
    from tight_pipeline.method.factory import load_engine

    return load_engine(tiny_spec)


@pytest.fixture(scope="session")
def photo():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def s3():
    """A real SeaweedFS S3 server on loopback for the whole session; its env is set before Ray starts so
    that embedded Ray workers inherit the credentials (they are never passed through Ray itself)."""
    from infra.local.services import SeaweedS3

    server = SeaweedS3(_SESSION_HOME / "seaweedfs").start()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_session(s3):
    from tight_pipeline.pipeline.cluster import connect_ray

    ray = connect_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect server for the whole run (a start costs ~25 s on 2 cores); yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        # Prefect's console log handler holds the stream it was made with: make it now, on the session's stderr,
        # not inside a test that swaps the stream (CliRunner closes its own when the command ends).
        from prefect.logging.configuration import setup_logging

        setup_logging()
        yield PREFECT_API_URL.value()


@pytest.fixture
def prefect_env(prefect_harness):
    """Environment for a CLI subprocess that reports to the session's Prefect server instead of starting its own
    temporary one (what a deployment with ``PREFECT_API_URL`` set does)."""
    return {"PREFECT_API_URL": prefect_harness}


@pytest.fixture
def ray_env(ray_session):
    """Environment for a CLI subprocess that attaches to the session's Ray (what ``RAY_ADDRESS`` does on a cluster)
    instead of starting its own."""
    return {"RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
