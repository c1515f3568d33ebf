"""The Tight Inversion method on diffusers models; knows nothing of Ray, Prefect or MLflow.

Reading order: ``models`` (what is loaded) → ``conditioning`` (text and image embeds, one UNet call) →
``inversion`` (DDIM and ReNoise loops) → ``editing`` (reconstruction and batched CFG edits) →
``runner`` (one item end to end, with scores and timings).
"""
