"""The Tight Inversion method on diffusers models; knows nothing of Ray, Prefect, MLflow or storage.

Reading order: ``specs``/``models`` (what is loaded) → ``conditioning`` (text and image embeds, one network call)
→ ``inversion`` / ``rf_inversion`` (the inversion loops) → ``editing`` (reconstruction and batched CFG edits) →
``region`` (where an edit may change the photo, the composite at its size) → ``items`` (what goes in and comes out)
→ ``engine`` (what every family shares) → ``sdxl`` / ``flux`` (each family's recipe) → ``auto/`` (automatic
strength). ``presets`` holds the settings; ``factory.load_engine`` picks the engine of a model spec.
"""
