"""Ahead-of-time plans for a TPU slice (`python -m lima_jax.plan`): `train` for the training
step, `decode` for generation, `roofline` for FLOPs, bytes and the roofline read from
compiled programs, `common` for what both share."""
