"""The catalog team's loop after a run: decisions about outputs as data (``decisions``) and publishing only what a
person approved (``publish``). Reads and writes the output store only: no model, no GPU, no cluster."""
