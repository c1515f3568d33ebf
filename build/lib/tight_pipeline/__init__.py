"""tight-pipeline: Tight Inversion (image-conditioned inversion) for editing product photos at catalog scale."""

__version__ = "0.1.0"
