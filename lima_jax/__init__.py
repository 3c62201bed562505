"""lima_jax: LIMA-style supervised fine-tuning of LLaMA-family models in JAX."""
