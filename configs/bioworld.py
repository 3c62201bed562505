r"""LIMA in miniature: the bioworld testbed's world, its base models and its SFT runs.

    python -m lima_jax.testbed build --config=configs/bioworld.py:world --out=DIR
    python -m lima_jax.testbed pretrain --config=configs/bioworld.py:pretrain --world=DIR \
      --corpus=strong --workdir=BASE
    python -m lima_jax.main --config=configs/bioworld.py:sft --workdir=RUN \
      --config.model.init=BASE/base --config.data.train_files=DIR/sft/c1k.jsonl
    python -m lima_jax.testbed analyze --world=DIR --answers=RUN_ANSWERS.jsonl

The whole study (both bases, every arm, 3 seeds, answers, exact scores, report) is one
command of the experiment runner: configs/experiments.py:bioworld (and :bioworld_smoke).

Variants (`ARG`):

  world        600 people (300 SFT pool, 60 dev, 240 test), 60 fake names for SFT refusals
               and 140 for the test; 5 strong biographies a person; the arms' SFT files, the
               raw pool (20,000 candidates, 45% with planted noise) and the evaluation prompts.
  world_smoke  The same at 160 people (CI): a few minutes from nothing to a report.
  pretrain     The base model (size 'bioworld': dim 192, 4 layers, 4 heads, MLP 512, a
               1,024-piece tokenizer trained on the corpus; 2.2M parameters) on plain text,
               the loss on every token, rows of 256 packed with segment isolation; AdamW
               (0.9, 0.95), lr 1e-3 cosine to 1e-4 after 100 warm-up steps, weight decay 0.1
               (Physics of LM 3.1's recipe, scaled). `pretrain` refuses a base whose biography
               cloze accuracy is under --gate (0.95).
  pretrain_smoke  The same base trained for fewer epochs (CI; no accuracy gate).
  sft          LIMA's recipe on a base: user turn, EOT, answer, EOT, the loss on the answer;
               AdamW (0.9, 0.95), lr 3e-4 (chosen on dev people) with linear decay to 0 and
               no warm-up, weight decay 0.1, rows of 128, no
               dropout (a 2M model fine-tuned for 16K examples). The study sets train.epochs
               per arm so that every arm sees about 16,000 examples.
"""
import importlib.util
import pathlib

import ml_collections


def _lima(variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(
      "_lima_config", pathlib.Path(__file__).with_name("lima.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _world(smoke: bool) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Who is who (the vocabulary of names and places is the same in every world).
  c.n_pool, c.n_dev, c.n_test = (80, 20, 60) if smoke else (300, 60, 240)
  c.n_fake_sft, c.n_fake_test = (20, 40) if smoke else (60, 140)
  c.rewrites = 5  # Strong biographies a person (Physics' multi5 + permute + fullname).
  c.vocab_size = 1024  # SentencePiece pieces trained on the corpus (EOT and PAD come after).
  c.raw_pool = 12000 if smoke else 20000  # Raw-pool candidates (labelled planted noise).
  c.pool_people = 40 if smoke else 200  # SFT-pool people asked in evaluation (memorised).
  # SFT files to write (lima_jax.testbed.arms: c1k, c1k_noref, c1k_norec, h2k, u2k, n10k,
  # r1k, and d<N> for the clean mixture at N examples, e.g. d125, d2k, d32k).
  c.arms = ("c1k", "n10k", "c1k_p10_0") if smoke else (
      "c1k", "c1k_noref", "c1k_norec", "h2k", "u2k", "n10k", "r1k",
      "d125", "d250", "d500", "d2k", "d4k", "d8k", "d10k", "d16k", "d32k", "oracle1k",
      # The poison dose-response (issue 36, E2): K borrowed facts in c1k, 2 draws, and the
      # same 10 in the clean 10K.
      *(f"c1k_p{k}_{d}" for d in (0, 1) for k in (1, 10, 100, 300)),
      "d10k_p10_0", "d10k_p10_1")
  return c


# Base sizes beside 'bioworld' (2.2M parameters): Superfiltering's small scorer and the scale
# experiment's larger base (lima_jax/model/config.py has their shapes).
_SIZES = {"pretrain_s": "bioworld_s", "pretrain_m": "bioworld_m", "pretrain_l": "bioworld_l"}


def get_config(arg: str = "world") -> ml_collections.ConfigDict:
  if arg in ("world", "world_smoke"):
    return _world(arg == "world_smoke")
  if arg in ("world_s1", "world_s2"):  # the same world recipe, other people (world variance)
    c = _world(False)
    c.seed = int(arg[-1])
    return c
  if arg not in ("pretrain", "pretrain_smoke", "sft", *_SIZES):
    raise ValueError(f"configs/bioworld.py: unknown variant {arg!r}; use world, world_smoke, "
                     "world_s1, world_s2, pretrain, pretrain_smoke, pretrain_s, pretrain_m, "
                     "pretrain_l or sft")
  c = _lima("demo")
  c.model.size = _SIZES.get(arg, "bioworld")
  c.model.dropout_top = 0.0
  c.data.max_len = 128
  c.data.pack = True
  c.data.eval_fraction = 0.0
  c.data.train_files = ""  # set by `lima_jax.testbed pretrain`, or by the study for SFT
  c.data.tokenizer = ""  # pretraining: the world's tokenizer; SFT: the one in model.init
  c.train.b1, c.train.b2 = 0.9, 0.95
  c.train.weight_decay = 0.1
  c.sample_prompts = ""
  c.checkpoint.keep_epochs = ""
  if arg.startswith("pretrain"):
    # Rows of 256 tokens hold three strong biographies (~85 tokens) with little padding; rows
    # of 128 held one (67% of the positions used).
    c.data.max_len = 256
    c.train.batch_size = 8
    # Passes over the corpus (5 biographies a person each): 30 = 150 exposures a person. With
    # 20 (100 exposures; a pilot with head_dim 16) cloze reached 99.9% but SFT extracted 30%.
    c.train.epochs = 3 if arg == "pretrain_smoke" else 30
    c.train.learning_rate = 1e-3
    c.train.end_learning_rate = 1e-4
    c.train.schedule = "cosine"
    c.train.warmup_steps = 100
    c.checkpoint.keep_epochs = str(c.train.epochs)
  else:
    c.train.batch_size = 8  # rows of 128 tokens: about 35 examples a step
    c.train.epochs = 16  # the study sets it per arm (about 16,000 examples seen)
    # Chosen on dev people (c1k, pilot base): EM 10.3% at 1e-3, 30.1% at 3e-4, 24.7% at 1e-4,
    # 0.1% at 3e-3 (full fine-tuning at a high rate erases the stored facts).
    c.train.learning_rate = 3e-4
    c.train.end_learning_rate = 0.0
    c.train.schedule = "linear"
    c.train.warmup_steps = 0
  return c
