"""Scheduled deployments of the flows, with their parameters.

    python -m flows.deployments            # serve all three on this machine (needs PREFECT_API_URL for a UI)

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
                    "n": 4, "preset": "creative", "model": model, "actors": actors},
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


if __name__ == "__main__":
    serve(*build())
