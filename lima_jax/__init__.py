"""lima_jax: LIMA-style supervised fine-tuning of LLaMA-family models in JAX."""
__version__ = "0.1.0"  # Keep in step with pyproject.toml.
