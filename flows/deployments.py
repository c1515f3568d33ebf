"""Scheduled deployments of the flows, with their parameters.

    tight-pipeline deploy                  # register all three with the Prefect server at PREFECT_API_URL
    tight-pipeline deploy --serve          # register and run them from this process (blocks)
    python -m flows.deployments            # the same as --serve

The same deployments are declared for a work pool in ``infra/prefect/prefect.yaml`` (``prefect deploy --all``).
Parameters come from the environment so that one file serves staging and production:
TP_CATALOG_MANIFEST, TP_CATALOG_OUTPUT, TP_VARIANTS_MANIFEST, TP_VARIANTS_OUTPUT, TP_MODEL, TP_ACTORS.
"""

from __future__ import annotations

import os

from prefect import serve

from flows.catalog_localization import catalog_localization
from flows.tradeoff_benchmark import tradeoff_benchmark
from flows.variant_generation import variant_generation


def build():
    model = os.environ.get("TP_MODEL") or None
    actors = int(os.environ.get("TP_ACTORS", "1"))
    catalog = catalog_localization.to_deployment(
        name="nightly-localization",
        cron="0 2 * * *",  # 02:00 every night
        parameters={"manifest": os.environ.get("TP_CATALOG_MANIFEST", "s3://catalog/manifests/localization.jsonl"),
                    "output": os.environ.get("TP_CATALOG_OUTPUT", "s3://catalog/localized"),
                    "preset": "balanced", "model": model, "actors": actors, "max_failure_rate": 0.05},
        tags=["tight-pipeline", "catalog"],
    )
    variants = variant_generation.to_deployment(
        name="weekly-variants",
        cron="0 4 * * 1",  # Mondays 04:00
        parameters={"manifest": os.environ.get("TP_VARIANTS_MANIFEST", "s3://catalog/manifests/variants.jsonl"),
                    "output": os.environ.get("TP_VARIANTS_OUTPUT", "s3://catalog/variants"),
                    "n": 4, "styles": os.environ.get("TP_VARIANTS_STYLES", "product"), "preset": "creative", "model": model, "actors": actors},
        tags=["tight-pipeline", "variants"],
    )
    tradeoff = tradeoff_benchmark.to_deployment(
        name="monthly-tradeoff",
        cron="0 6 1 * *",
        parameters={"manifest": os.environ.get("TP_CATALOG_MANIFEST", "s3://catalog/manifests/localization.jsonl"),
                    "output": os.environ.get("TP_TRADEOFF_OUTPUT", "s3://catalog/tradeoff"),
                    "sample": 32, "model": model},
        tags=["tight-pipeline", "presets"],
    )
    return [catalog, variants, tradeoff]


def register(deployments=None) -> list[dict]:
    """Register the deployments with the configured Prefect server (no worker needed to list them: the
    Deployments page shows them with their schedules and parameters, and the server schedules their runs).
    Returns name, id and schedule of each."""
    out = []
    for deployment in deployments or build():
        deployment_id = deployment.apply()
        crons = [getattr(s.schedule, "cron", None) for s in (deployment.schedules or [])]
        out.append({"flow": deployment.flow_name, "name": deployment.name, "id": str(deployment_id),
                    "cron": ", ".join(c for c in crons if c)})
    return out


if __name__ == "__main__":
    serve(*build())
