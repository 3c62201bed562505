"""The logical axis names each parameter and activation carries, spelled once.

layers.py and model.py declare tensors with these tuples and `sharding.RULES` maps every name in
them onto the mesh, so a layer and the rules table cannot drift apart (tests/test_model.py checks
that each name has a rule). The parameter tree they give is in docs/INTERFACES.md.
"""

# Parameters. The scan over layers puts LAYERS in front of every per-layer tensor.
LAYERS = "layers"
NORM = ("norm",)  # an RMSNorm scale [D]
Q = ("embed", "heads", "head_dim")  # [D, H, K]
KV = ("embed", "kv_heads", "head_dim")  # k and v [D, G, K]
O = ("heads", "head_dim", "embed")  # [H, K, D]
Q_BIAS = ("heads", "head_dim")
KV_BIAS = ("kv_heads", "head_dim")
MLP_IN = ("embed", "mlp")  # gate and up [D, F]
MLP_OUT = ("mlp", "embed")  # down [F, D]
MLP_BIAS = ("mlp",)  # gate and up
EMBED_BIAS = ("embed",)  # o and down
EMBEDDING = ("vocab", "embed")  # [V, D], also the tied output projection
LM_HEAD = ("embed", "vocab")  # [D, V]
LORA_RANK = "lora_rank"  # LoRA's rank axis (lima_jax/model/lora.py), on A [in, r] and B [r, out]
# The output projection with its embed axis whole: the fused loss gathers it over 'fsdp' once.
EMBEDDING_GATHERED = ("vocab", None)
LM_HEAD_GATHERED = (None, "vocab")

# Activations.
ACT_EMBED = ("activation_batch", "activation_length", "activation_embed")  # [B, T, D]
ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", None)  # [B, T, H, K]
ACT_KV_HEADS = ("activation_batch", "activation_length", "activation_kv_heads", None)
ACT_MLP = ("activation_batch", "activation_mlp")  # [B * T, F]
ACT_VOCAB = ("activation_batch", "activation_length", "activation_vocab")  # [B, T, V]
