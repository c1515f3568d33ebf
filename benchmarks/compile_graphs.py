"""How many graphs ``torch.compile`` captures for the UNet over a run's timesteps: with the timestep as a Python int
(what the engine passed before) and as a tensor (what ``conditioning.predict_noise`` passes now).

    python benchmarks/compile_graphs.py            # tiny SDXL UNet on CPU, TorchDynamo with the eager backend (seconds)

``dynamic=False`` (the spec's ``compile`` and ``bench_gpu.py --switches``) specialises on every Python int, so each
new timestep is a recompile, and after ``torch._dynamo.config.recompile_limit`` (8) dynamo stops compiling that
frame and runs it eagerly: a "compiled" 50-step run was mostly eager. A 0-d tensor is one graph for every step.
"""

from __future__ import annotations

import warnings

import torch


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    from torch._dynamo.utils import counters

    from tight_pipeline.testing.tiny_models import build_tiny_components

    unet = build_tiny_components()["unet"].eval()
    cfg = unet.config
    z = torch.randn(2, 4, cfg.sample_size, cfg.sample_size)
    states = torch.randn(2, 77, cfg.cross_attention_dim)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.zeros(2, 6)}
    timesteps = list(range(999, 0, -100))
    for kind in ("int", "tensor"):
        torch._dynamo.reset()
        counters.clear()
        unet.compile(backend="eager", dynamic=False)
        with torch.no_grad():
            for t in timesteps:
                unet(z, t if kind == "int" else torch.tensor(t), encoder_hidden_states=states, added_cond_kwargs=added)
        print(f"timestep as {kind:6s}: {len(timesteps)} steps, {counters['stats']['unique_graphs']} graphs captured")


if __name__ == "__main__":
    main()
