"""synthaug: diffusion-generated training images for imbalanced and few-shot classification."""

__version__ = "0.1.0"
