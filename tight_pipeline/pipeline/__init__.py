"""The distributed job: ``job`` (config, plan, the Ray Data run), ``actor`` (the worker that loads the model, calls
the engine and writes rows), ``lease`` (one live run per output)."""
