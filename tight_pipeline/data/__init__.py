"""What a run reads and writes: manifests and variants (what to edit), storage (any fsspec URL, images, masks),
the ``scores/`` Parquet dataset. Imports nothing above itself (no engine, no Ray, Prefect or MLflow)."""
