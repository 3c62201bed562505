"""Ahead-of-time plans for a TPU slice (`python -m lima_jax.plan`): `train` for the training
step, `decode` for generation, `common` for what both share."""
