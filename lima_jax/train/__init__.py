"""Fine-tuning: `loop` (train_and_evaluate, read top to bottom), `step` (the pure, jitted train
and eval steps), `loss`, `base_model` (what a run starts from), `fingerprint` (what a resume
may not change), `saving` (when to checkpoint) and `metrics_log`."""
from lima_jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
