"""The application layer, on top of the library: Prefect flows (orchestration only) and the console entry point.
The work itself lives in ``tight_pipeline``, which never imports this package.

- ``cli``: the ``tight-pipeline`` command (runs the library directly, or the flows);
- ``catalog_localization``: items × locales of a manifest (the main flow; ``tight-pipeline run``);
- ``variant_generation``: N styled variants per item (``tight-pipeline variants``);
- ``tradeoff_benchmark``: a sweep of adapter scales on a sample, to choose presets;
- ``deployments``: cron schedules and parameters (``tight-pipeline deploy``).
"""
