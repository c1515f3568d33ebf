"""Variant generation: N styled variants of every catalog item, one inversion each.

    tight-pipeline variants --manifest URL --output URL --n 4 [--styles product]

Variants are derived while the manifest streams through planning (``tight_pipeline.data.variants``): no derived
manifest is written, items may override ``n`` and the style set, and each variant's key is named after its
style, so a resumed run skips done variants and a larger ``n`` adds only the new ones.
"""

from __future__ import annotations

from prefect import flow

from flows.catalog_localization import run_tracked
from flows.tasks import flow_timeout_s
from tight_pipeline.method.specs import resolve_model_spec
from flows.choices import ChecksProfile, Count, Fraction, PresetName, Strength
from tight_pipeline.pipeline.config import JobConfig, default_preset, join_preset


@flow(name="variant-generation", log_prints=True, timeout_seconds=flow_timeout_s())
def variant_generation(manifest: str, output: str, n: int = 4, styles: str = "", preset: PresetName | None = None,
                       strength: Strength | None = None, model: str | None = None, actors: Count = JobConfig.actors,
                       actor_cpus: float = JobConfig.actor_cpus, max_failure_rate: Fraction = JobConfig.max_failure_rate,
                       min_actors: int = JobConfig.min_actors, gpus_per_actor: float | None = JobConfig.gpus_per_actor,
                       batch_size: int = JobConfig.batch_size, actor_wait_s: float = JobConfig.actor_wait_s,
                       recheck_photos: bool = JobConfig.recheck_photos, checks: ChecksProfile = JobConfig.checks) -> dict:
    # none given: the model family's default
    preset = join_preset(default_preset(preset, resolve_model_spec(model)), strength)
    config = JobConfig(manifest=manifest, output=output, preset=preset, model=model, actors=actors,
                       actor_cpus=actor_cpus, max_failure_rate=max_failure_rate, variants=n, styles=styles,
                       min_actors=min_actors, gpus_per_actor=gpus_per_actor, batch_size=batch_size,
                       actor_wait_s=actor_wait_s, recheck_photos=recheck_photos, checks=checks).with_run_id()
    config.variant_request()  # an unknown style set or an impossible n fails here, in one line, before any work
    return run_tracked(config, "variant-generation")
