"""Training, probes and evaluations of the catalog demo model; its generator and weights are the product's
(``tight_pipeline/demo_model``)."""
