"""Ahead-of-time plans for a TPU slice (`python -m lima_jax.plan`): `train` for the training
step, `decode` for generation, `hlo_text` and `hlo_count` for a compiled program's FLOPs and
bytes with every loop weighted by its trip count, `roofline` for splash's own FLOPs and bytes
and the roofline, `common` for what both share."""
