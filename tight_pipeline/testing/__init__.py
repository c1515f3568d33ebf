"""Random-weight models of the real layouts (tiny SDXL / SD / FLUX with adapters) for tests, CI and CPU demos."""
