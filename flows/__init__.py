"""Prefect flows: orchestration only. The work itself lives in ``tight_pipeline`` (which never imports this).

- ``catalog_localization``: items × locales of a manifest (the main flow; ``tight-pipeline run``);
- ``variant_generation``: N styled variants per item;
- ``tradeoff_benchmark``: a sweep of adapter scales on a sample, to choose presets;
- ``deployments``: cron schedules and parameters (``python -m flows.deployments``).
"""
