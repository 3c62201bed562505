r"""Studies: arms of LIMA-style ablations, each curate -> train -> answer -> judge.

    python -m lima_jax.experiment run --config=configs/experiments.py:NAME --workdir=DIR \
      [--only=ARM,...] [--executor=local|ray] [--dry_run]
    python -m lima_jax.experiment report --workdir=DIR

Every step is a command of the project's own CLIs (lima_jax.curate, lima_jax.main,
lima_jax.eval), recorded in DIR/manifest.json with the hash of its inputs; a rerun skips what
is done, redoes a step whose inputs changed (its old output moved to OUTPUT.stale-HASH) and
resumes a killed one (training from its checkpoints, judging from its store).

Studies (`NAME`):

  tiny            The demo model (model size 'tiny', 2 epochs), two arms: all 314 demo
                  conversations against 100 chosen at random; judge_free plus lima_pairwise
                  through the scripted local judge (lima_jax.eval.scripted_judge, started by
                  the runner; not a judge of quality). About a minute an arm on 2 cores.
                  Expected: both arms complete, `report` gives one row an arm.
  dropout_epochs  LIMA's residual dropout 0 / 0.1 / 0.2 / 0.3 (arms dropout_0 ... dropout_30)
                  on the demo model, every epoch checkpoint (4, 8, 12) answered and judged
                  (judge_free, and lima_pairwise against dropout_0 through the scripted
                  judge): the ablation LIMA ran on 7B. For real: --config.base=configs/lima.py:7b
                  --config.judge.base_url=URL --config.judge.model=NAME
                  --config.judge.scripted=False.
  lima_paper_7b   Section 5 of the paper: 2K filtered Stack Exchange vs 2K wikiHow vs 2K
                  unfiltered Stack Exchange, and filtered Stack Exchange at 2K-32K, on 7B,
                  graded 1-6 (lima_likert, 5 samples). Needs your pools: --config.pools.*
                  (the run says how to make each one that is missing).
  shared_data     Runnable on the shared data: LIMA's 1,000 against 1K chosen from the 12K
                  Alpaca+Dolly pool by each selector (quality, diverse, longest), a random 1K
                  and all 12K, on a base model and judge you give:
                    --config.base_overrides='("model.init=/ckpt/llama-7b",)'
                    --config.judge.base_url=URL --config.judge.model=NAME
                  Plan it first: --dry_run prints every command and the judging estimate.

  bioworld        LIMA in miniature (lima_jax/testbed, configs/bioworld.py; docs/testbed.md):
                  a synthetic world of 600 people, a 2.2M-parameter base
                  pretrained on their biographies (and a weak base on one fixed biography
                  each), then SFT arms scored by exact match on 240 test people no SFT file
                  mentions. Core arms at 3 seeds: c1k (curated), h2k (homogeneous), u2k
                  (unfiltered), n10k (noisy), r1k (random raw), d2k and d32k (clean, quantity),
                  weak_c1k (the weak base). Each arm trains round(16,000 / size) epochs, at
                  least one (n10k sees 20,000 examples, d32k 32,000).
                    python -m lima_jax.experiment run --config=configs/experiments.py:bioworld \
                      --workdir=DIR
                    python -m lima_jax.experiment report --workdir=DIR
                    python -m lima_jax.testbed verdict --study=DIR
                  Predictions, frozen before the first full run (lima_jax.testbed.analysis.
                  PREDICTIONS; EM = exact match of the whole answer on test people):
                    P1a c1k EM >= 80%; P1b c1k within 5 points of the best strong-base arm;
                    P1c weak_c1k EM <= 25%; P2 d32k - d2k inside +-3 points (95% interval);
                    P3 c1k - n10k >= 5 points; P4 d2k - h2k >= 5 points on held-out question
                    forms; P5 d2k - u2k >= 3 points (differences: interval above 0, clustered
                    by test person).
                  Measured (benchmarks/results/bioworld_v2/, the world since issue 36: EM
                  over visible, paraphrase and novel forms): d2k 28.5%, d32k 27.1, c1k 24.2,
                  n10k 20.9, u2k 15.6, r1k 11.8, h2k 8.2, weak_c1k 0.0; P1b, P1c, P2, P4 and
                  P5 held, P1a and P3 failed (the old world's figures: docs/testbed.md).
  bioworld_sweep  bioworld plus the quantity sweep d125 ... d16k (LIMA's Figure 6), c1k
                  without its refusals (c1k_noref) or its format examples (c1k_norec), and 1K
                  of the raw pool chosen by each curate selector (random1k, quality1k,
                  longest1k, diverse1k); same world and bases, so a DIR that ran bioworld
                  reuses them. Measured at 3 seeds (benchmarks/results/bioworld_sweep/, 53 min
                  on top of bioworld): a plateau at 2K-16K (d4k 54.2%), c1k_noref 51.4,
                  and every curate preset's 1K at 1.7-22.4%.
  bioworld_e1     Issue 36, E1: can a selector that asks a model see a planted wrong fact? 1K of
                  the 20K raw pool (45% planted noise) by: random; IFD as published (the
                  highest IFD below 1) scored by the base (ifd_base1k), by a c1k-warmed
                  checkpoint (ifd_warm1k: prepare step `warm`, 4 epochs of c1k) and by a
                  0.7M base (ifd_small1k, Superfiltering); the lowest answer loss under the
                  base (loss1k); knowledge consistency under the base (consistency1k: the
                  worst answer token read as plain text); influence toward clean dev people
                  from the warmed checkpoint (influence1k, LESS); the clean-only oracle 1K
                  (oracle1k, the labels: the ceiling); c1k for reference. 3 seeds each.
                    python -m lima_jax.experiment run --config=configs/experiments.py:bioworld_e1 \
                      --workdir=DIR
                    python -m lima_jax.testbed selection --study=DIR
                  Predictions, frozen before the first run (lima_jax.testbed.selection.
                  PREDICTIONS; precision and AUROC against the pool's planted labels):
                    E1a consistency1k and loss1k each remove >= 90% of the borrowed and of the
                        other-attribute rows, with AUROC >= 0.95 on each kind;
                    E1b consistency1k and loss1k each land within 3 points of oracle1k (EM);
                    E1c ifd_base1k holds borrowed rows above their pool share and scores at
                        or below random1k;
                    E1d influence1k lands between random1k and oracle1k.
                    Refuted if ifd_base1k holds fewer borrowed rows than random1k, or
                    loss1k's AUROC on borrowed rows is under 0.8.
                  Measured at 3 seeds (benchmarks/results/bioworld_e1/, 73 min): E1a and E1b
                  failed, E1c and E1d held, R2 refuted (loss1k's AUROC on borrowed rows
                  0.689); EM influence1k 21.9 (precision 96.1%), random1k 11.2,
                  consistency1k 11.1, loss1k 11.0, ifd_base1k 7.6, oracle1k 27.2.
  bioworld_e2     Issue 36, E2: how much bad data does it take? c1k with K clean rows turned
                  into borrowed facts (K = 0, 1, 10, 100, 300: 0.1% to 30%), 2 draws of
                  which rows x 3 order seeds; the same 10 bad rows in the clean 10K
                  (d10k_p10_D beside d10k). Answers include each poisoned fact asked of its
                  person (eval/prompts_poison.jsonl).
                    python -m lima_jax.experiment run --config=configs/experiments.py:bioworld_e2 \
                      --workdir=DIR
                    python -m lima_jax.testbed verdict --study=DIR
                  Predictions, frozen before the first run (lima_jax.testbed.dose.PREDICTIONS):
                    E2a EM on test people falls about linearly in the poisoned fraction;
                    E2b K = 1 and K = 10 each within 1.5 points of K = 0;
                    E2c K = 100 costs 3-8 points;
                    E2d the poisoned facts flip for most of their people (the answer states
                        the borrowed value), equally in 1K and 10K.
                    Refuted if 10 rows cost >= 3 points, or 100 rows cost < 1.
                  Measured at 3 seeds (benchmarks/results/bioworld_e2/, 97 min): E2a and E2b
                  held, E2c and E2d failed, not refuted. EM cost: K = 1 -0.0, K = 10 -0.4,
                  K = 100 -2.9 [-3.4, -2.3], K = 300 -7.1 points; about half the poisoned facts
                  flip in the 1K arms, 13% of the same 10 in d10k.
  bioworld_e3     Issue 36, E3: does a larger base close the gap? A 6.9M base (size
                  bioworld_m: dim 256, 6 layers, 3.1x the parameters; same world, same 150
                  exposures, same 95% cloze gate) beside the 2.2M one, each fine-tuned on d250,
                  d500, c1k, d2k, d8k and n10k at 2 seeds (the larger base's arms end in _m).
                  The third size (15M, bioworld_l; arms end in _l) is one name away:
                    python -m lima_jax.experiment run --config=configs/experiments.py:bioworld_e3_l \
                      --workdir=DIR
                  Frozen, competing predictions (lima_jax.testbed.scale.PREDICTIONS):
                    E3a the plateau rises, c1k comes within 3 points of d2k, and c1k - n10k
                        widens;
                    E3b the plateau moves less than 3 points (storage and extraction, not
                        capacity, limit it).
  bioworld_fair   Issue 36, fairness to the large arms: d2k, d32k and n10k trained for the
                  same steps as c1k (ARM_eq, data.epoch_examples=1000: each of 16 epochs a
                  fresh 1,000 of the arm's rows, so 16,000 examples seen, most of them once)
                  beside the core arms (about 16,000 examples seen by repeating the set); and
                  c1k, d2k and d32k at learning rates 1e-4, 3e-4 (the core's) and 1e-3
                  (ARM_lr1e4, ARM_lr3e4, ARM_lr1e3), answering the dev people's prompts too,
                  so each family's rate is chosen on dev people; 3 seeds each.
                    python -m lima_jax.experiment run --config=configs/experiments.py:bioworld_fair \
                      --workdir=DIR
                    python -m lima_jax.testbed verdict --study=DIR
                  The verdict's report/fair.{json,md} reads P1b (c1k within 5 points of the
                  best arm) and P2 (d32k - d2k within 3 points) again on the matched-step
                  arms and on each family's chosen rate.
                  Predictions, frozen before the first run (lima_jax.testbed.fair.PREDICTIONS):
                    F1 matched steps leave P1b's and P2's outcomes as they are;
                    F2 per-arm rates chosen on dev people leave them as they are.
                  Measured, matched steps only (--only=d2k_eq,d32k_eq,n10k_eq;
                  benchmarks/results/bioworld_fair_eq/, 23 min): F1 held (P2 at matched
                  steps: d32k_eq - d2k_eq = -0.5 [-1.4, +0.4]).
  bioworld_worlds Issue 36, world variance: the core arms c1k, d2k, d32k, n10k and u2k on the
                  worlds of seeds 1 and 2 (arms ARM_w1, ARM_w2: their own people, tokenizer,
                  strong base and prompts) beside world 0's (the same arms as bioworld), 3
                  seeds. The verdict's report/worlds.md gives each arm's EM per world and the
                  paired differences per world and pooled over worlds (two-level bootstrap:
                  worlds, then test people), so the intervals cover world and base too.
  bioworld_lora   Issue 36 with issue 38's adapters: c1k, d2k, d32k and n10k fine-tuned with
                  LoRA (rank 16, alpha 32, every projection; learning rate 1e-3, not tuned:
                  adapters usually want a higher rate than full fine-tuning) beside full
                  fine-tuning (arms ARM_lora and ARM), 3 seeds; the verdict's lora section
                  gives both EMs, their paired difference and the cloze each kept.
                  Predictions, frozen before the first run (lima_jax.testbed.adapters):
                    L1 every LoRA arm keeps biography cloze >= 97% after SFT;
                    L2 with LoRA d32k no longer falls below d2k (the interval of
                       d32k_lora - d2k_lora reaches 0).
                  Measured at 3 seeds (benchmarks/results/bioworld_lora/, 38 min): L1 failed
                  (cloze after LoRA 81.6-94.3%, within 2.3 points of full fine-tuning's), L2
                  held (d32k_lora - d2k_lora +2.1 [+1.2, +3.0]); EM c1k_lora 23.7, d2k_lora
                  27.5, d32k_lora 29.6, n10k_lora 21.7.
  bioworld_smoke  CI's version: 160 people, a short pretraining, c1k against 1K drawn from
                  n10k (data.subset_size), one seed, one SFT epoch; checks the pipeline and
                  the splits, not the claims.

Arms (`config.arms.NAME`): `data` (training files, comma-separated) or `curate` (a
configs/curate.py preset) with `pool`, `n` and `curate_seed`; `overrides` (training config
fields, 'a.b=value' strings, after the study's `base_overrides`); `seeds` (training seeds: an
arm with 3 seeds is 3 runs, reported as one with intervals over seeds and prompts); `n_examples`
(for the score-against-data-size figure; default: `n`, else the data's row count). Or `model`:
a checkpoint (e.g. made by `python -m lima_jax.convert from-hf|from-gguf|from-llama2c`, by a
prepare step: `model="{base}/ckpt"`) answered and judged as it is, with no curate or train
step: steps ARM/base/answer and ARM/base/PROTOCOL, the report's row at epoch 0. It may be the
`baseline_arm` (every trained arm's seeds and epochs are judged against its one answer set).
`format` ('lima' or 'chat_template'; `_arm(fmt=...)`): the format the arm's checkpoints answer
in, default the checkpoint's own. `prompts`: the prompts file the arm's answer steps answer,
default the study's `prompts`; it may name prepare steps as `prompts` does (a study of several
worlds: `_arm(data="{world_s1}/sft/c1k.jsonl", prompts="{world_s1}/eval/prompts.jsonl")`). A
pairwise protocol judges an arm only against a `baseline_arm` on the same prompts (the plan
refuses it otherwise), and the report's `pairs` skip, with a note, two arms on different ones.

Prepare steps (`config.prepare.NAME = _prep(command=(...), files=(...), after=(...))`): run
once a study, before any arm (a synthetic world, a pretrained base), each after the steps
it names or lists in `after` (otherwise in the order written):

    c.prepare.world = _prep(command=("python", "-m", "lima_jax.testbed", "build",
                                     "--config=configs/bioworld.py:world", "--out={out}"),
                            files=("configs/bioworld.py",))
    c.prepare.base = _prep(command=("python", "-m", "lima_jax.testbed", "pretrain",
                                    "--world={world}", "--workdir={out}"))
    c.arms.c1k = _arm(data="{world}/sft/c1k.jsonl", overrides=("model.init={base}/base",))
    c.prompts = "{world}/eval/prompts.jsonl"

In a command, `{out}` is the step's own directory (DIR/prepare/NAME, made for it), `{NAME}`
another step's directory (the step then follows it, as it does the steps in `after`),
`{workdir}` the study's DIR; a command starting with "python" runs under the runner's own
interpreter. The step is cached like every other: by its command, the content of its `files`
and the hashes of the steps it follows; a changed one is redone, and so is everything that
names it, transitively. The arms' `data`, `pool`, `overrides`, `curate_overrides` and the
study's `base_overrides`, `prompts` and `eval_overrides` may name `{NAME}` (and `{workdir}`):
the arm's steps then follow that prepare step (editing the world retrains the arms).
`--only=ARM` runs the prepare steps the arm names (and those they follow); `--dry_run` lists
them. Only an identifier in braces is a placeholder (other braces, as in `python -c`
code, stay); `{{NAME}}` is a literal `{NAME}`; an unknown `{NAME}` is an error naming the
field.

Report (`config.report`): `metric` is PROTOCOL.FIELD of results.json (any field, e.g.
`judge_free.exact_rate:set=test`), the figures' value and the paired differences' score;
`fields` are more columns of the table, 'FIELD' (every protocol that has it) or
'PROTOCOL.FIELD'; `pairs` are 'ARM_A-ARM_B' paired differences.
"""
import ml_collections

SHARED = "../shared/data"
POOL_12K = f"{SHARED}/instruct/alpaca_random_9k.json,{SHARED}/instruct/dolly_filtered_3k.json"


def _arm(data: str = "", curate: str = "", pool="", n: int = 0, overrides=(),
         seeds=(0,), curate_seed: int = 0, n_examples: int = 0, curate_overrides=(),
         hint: str = "", model: str = "", fmt: str = "", prompts: str = ""):
  a = ml_collections.ConfigDict()
  a.hint = hint  # Said when the arm's files are missing: how to make them.
  # A checkpoint answered and judged as it is, with no training (a converted base model as
  # the baseline); set, the arm takes no data, curate, pool or overrides.
  a.model = model
  # The conversation format its checkpoints answer in: '' the checkpoint's own (what it was
  # trained in; a converted model's template), 'lima' or 'chat_template'.
  a.format = fmt
  # The prompts its answer steps answer: '' the study's `prompts`; else a file, which may name
  # prepare steps ("{world_s1}/eval/prompts.jsonl": the answer steps then follow world_s1). A
  # pairwise protocol needs the arm and the baseline_arm on the same prompts; the report pairs
  # only arms that answered the same prompts.
  a.prompts = prompts
  a.data = data  # Training files ('' when curated).
  a.curate = curate  # configs/curate.py preset ('' = use `data` as it is).
  a.pool = pool  # Curation pool files (comma-separated; may be a reference to `pools`).
  a.n = n  # Records to choose.
  a.curate_seed = curate_seed
  a.curate_overrides = tuple(curate_overrides)  # More 'field=value' for lima_jax.curate.
  a.overrides = tuple(overrides)  # Training 'field=value' overrides, after base_overrides.
  a.seeds = tuple(seeds)
  a.n_examples = n_examples or n  # x of the data-size figure (0: not on it).
  return a


def _prep(command, files=(), after=()):
  p = ml_collections.ConfigDict()
  p.command = tuple(command)  # Argument list; {out}, {workdir}, {NAME} filled in.
  p.files = tuple(files)  # Inputs hashed by content (the step is redone when they change).
  p.after = tuple(after)  # Earlier prepare steps it follows (besides those it names).
  return p


def get_config(name: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = name
  c.base = "configs/lima.py:demo"  # The training config every arm starts from.
  c.base_overrides = ()  # Training 'field=value' for every arm.
  c.prompts = "data/demo/prompts.jsonl"  # Test prompts every checkpoint answers.
  c.samples = 1  # Answers a prompt (LIMA's 1-6 ratings: 5, sampled).
  # LIMA's decoding; max_new_tokens bounds the answer step's time.
  c.generate = ml_collections.ConfigDict(dict(
      max_new_tokens=2048, temperature=0.7, top_p=0.9, repetition_penalty=1.2, greedy=False,
      batch_size=8, seed=0))
  # Epochs whose checkpoints are answered and judged: '' the last, 'all', or '5-10' / '4,8'.
  c.epochs = ""
  # configs/eval.py protocols run on every answered checkpoint. Pairwise ones (lima_pairwise,
  # alpaca_eval, mt_bench in pairwise mode) judge each arm against `baseline_arm`'s answers
  # of the same seed and epoch.
  c.protocols = ("judge_free",)
  c.baseline_arm = ""
  c.eval_overrides = ()  # More 'field=value' for every lima_jax.eval run.
  # Named steps run once before any arm, each after those it names (see the docstring).
  c.prepare = ml_collections.ConfigDict(sort_keys=False)
  c.judge = ml_collections.ConfigDict()
  c.judge.base_url = ""
  c.judge.model = ""
  c.judge.api_key_env = "OPENAI_API_KEY"
  # True: the runner starts lima_jax.eval.scripted_judge on 127.0.0.1 for the run (a stand-in
  # that prefers answers sharing words with the question: for pipelines, not for verdicts).
  c.judge.scripted = False
  c.report = ml_collections.ConfigDict()
  # The figures' metric: PROTOCOL.FIELD of results.json (docs/INTERFACES.md).
  c.report.metric = "judge_free.stopped_rate"
  # More table columns: 'FIELD' or 'PROTOCOL.FIELD', e.g. 'exact_rate:template=heldout'.
  c.report.fields = ()
  # Paired differences to print: 'ARM_A-ARM_B' on the prompts both answered.
  c.report.pairs = ()
  # The score-against-examples figure's line (LIMA's Figure 6): arms of one data mixture at
  # several sizes. Empty: every arm with a size (fine when the arms differ only in size).
  c.report.size_arms = ()
  c.report.bootstrap_rounds = 2000
  # Where steps run under --executor=ray (docs/studies.md); the local executor ignores them,
  # and no step's identity depends on them. Curate, judge and prepare steps take one CPU.
  c.resources = ml_collections.ConfigDict()
  # 'cpu', 'gpu:N' (N GPUs of one node), a TPU slice ('v4-16', 'v5litepod-16': one process a
  # host) or 'hosts:PxD' (P processes of D CPU devices, each on a node's simulated host: tests).
  c.resources.train = "cpu"
  c.resources.answer = "cpu"  # One process (lima_jax.eval): 'cpu', 'gpu:N' or a one-host slice.
  c.arms = ml_collections.ConfigDict()

  demo = "data/demo/train.jsonl"
  if name == "tiny":
    c.base_overrides = ("model.size=tiny", "train.epochs=2", "sample_prompts=",
                        "checkpoint.keep_epochs=", "data.eval_fraction=0.0")
    c.generate.max_new_tokens = 32
    c.protocols = ("judge_free", "lima_pairwise")
    c.baseline_arm = "all"
    c.judge.scripted = True
    c.judge.model = "scripted"
    c.report.metric = "lima_pairwise.equal_or_better"
    c.report.pairs = ("random100-all",)
    c.arms.all = _arm(data=demo, n_examples=314)
    c.arms.random100 = _arm(curate="random", pool=demo, n=100)
  elif name == "dropout_epochs":
    c.base_overrides = ("sample_prompts=", "checkpoint.keep_epochs=4,8,12")
    c.generate.max_new_tokens = 64
    c.epochs = "all"
    c.protocols = ("judge_free", "lima_pairwise")
    c.baseline_arm = "dropout_0"
    c.judge.scripted = True
    c.judge.model = "scripted"
    c.report.metric = "lima_pairwise.equal_or_better"
    c.report.pairs = ("dropout_10-dropout_0", "dropout_20-dropout_0", "dropout_30-dropout_0")
    for percent in (0, 10, 20, 30):  # arm names cannot hold a '.': dropout_10 is p = 0.1
      c.arms[f"dropout_{percent}"] = _arm(
          data=demo, overrides=(f"model.dropout_top={percent / 100}",), n_examples=314)
  elif name == "shared_data":
    c.base = "configs/lima.py:7b"
    c.prompts = f"{SHARED}/lima/test.jsonl"
    c.protocols = ("judge_free", "lima_pairwise")
    c.baseline_arm = "lima1k"
    c.report.metric = "lima_pairwise.equal_or_better"
    c.report.pairs = ("quality1k-random1k", "diverse1k-random1k", "all12k-lima1k")
    c.arms.lima1k = _arm(data=f"{SHARED}/lima/train.jsonl", n_examples=1030)
    for preset in ("quality", "diverse", "longest", "random"):
      c.arms[f"{preset}1k"] = _arm(curate=preset, pool=POOL_12K, n=1000,
                                   curate_overrides=("pool_on_error=skip",))
    # 4 Alpaca rows have an empty output: skipped and reported, as curation's pool_on_error.
    c.arms.all12k = _arm(data=POOL_12K, overrides=("data.on_error=skip",), n_examples=12000)
  elif name == "lima_paper_7b":
    # Section 5 as the paper ran it: 7B, 5 sampled answers a prompt graded 1-6 by ChatGPT.
    # The pools are yours to make from the public dumps (archive.org/details/stackexchange;
    # the wikiHow research CSV): the commands are in the arms' hints.
    c.base = "configs/lima.py:7b"
    c.prompts = f"{SHARED}/lima/test.jsonl"
    c.samples = 5
    c.protocols = ("judge_free", "lima_likert")
    c.judge.model = "gpt-3.5-turbo"
    c.report.metric = "lima_likert.mean"
    c.report.pairs = ("se_filtered_2k-se_unfiltered_2k", "se_filtered_2k-wikihow_2k")
    c.pools = ml_collections.ConfigDict()
    c.pools.stackexchange = ""  # python -m lima_jax.datasets.stackexchange (LIMA's rules)
    c.pools.stackexchange_unfiltered = ""  # the same reader with --unfiltered
    c.pools.wikihow = ""  # python -m lima_jax.datasets.wikihow
    se_hint = ("make it with python -m lima_jax.datasets.stackexchange --dumps=stem=...,other=... "
               "--n=32000 --out=se.jsonl, then --config.pools.stackexchange=se.jsonl")
    for k in (2, 4, 8, 16, 32):  # Figure 6: quantity of filtered Stack Exchange
      c.arms[f"se_filtered_{k}k"] = _arm(curate="lima_rules", pool=c.pools.get_ref(
          "stackexchange"), n=1000 * k, hint=se_hint)
    c.arms.se_unfiltered_2k = _arm(
        curate="random", pool=c.pools.get_ref("stackexchange_unfiltered"), n=2000,
        hint="make it with python -m lima_jax.datasets.stackexchange --unfiltered ... "
             "--out=se_all.jsonl, then --config.pools.stackexchange_unfiltered=se_all.jsonl")
    c.arms.wikihow_2k = _arm(
        curate="random", pool=c.pools.get_ref("wikihow"), n=2000,
        hint="make it with python -m lima_jax.datasets.wikihow --csv=wikihowAll.csv "
             "--out=wikihow.jsonl, then --config.pools.wikihow=wikihow.jsonl")
  elif name in ("bioworld", "bioworld_sweep", "bioworld_smoke", "bioworld_e1", "bioworld_e2",
                "bioworld_e3", "bioworld_e3_l", "bioworld_fair", "bioworld_worlds", "bioworld_lora"):
    _bioworld(c, name)
  else:
    raise ValueError(f"configs/experiments.py: unknown study {name!r}; use tiny, "
                     "dropout_epochs, shared_data, lima_paper_7b, bioworld, bioworld_sweep, "
                     "bioworld_e1, bioworld_e2, bioworld_e3, bioworld_e3_l, bioworld_fair, "
                     "bioworld_worlds, bioworld_lora or bioworld_smoke")
  return c


def _bioworld(c, name: str) -> None:
  smoke = name == "bioworld_smoke"
  testbed = ("python", "-m", "lima_jax.testbed")
  sources = ("configs/bioworld.py", "lima_jax/testbed/world.py", "lima_jax/testbed/sft.py",
             "lima_jax/testbed/arms.py", "lima_jax/testbed/__main__.py")
  world = "configs/bioworld.py:world_smoke" if smoke else "configs/bioworld.py:world"
  pretrain = "configs/bioworld.py:pretrain_smoke" if smoke else "configs/bioworld.py:pretrain"
  c.prepare.world = _prep(command=(*testbed, "build", f"--config={world}", "--out={out}"),
                          files=sources)
  c.prepare.base_strong = _prep(
      command=(*testbed, "pretrain", f"--config={pretrain}", "--world={world}",
               "--corpus=strong", "--workdir={out}", "--gate=0" if smoke else "--gate=0.95"),
      files=sources)
  c.base = "configs/bioworld.py:sft"
  c.prompts = "{world}/eval/prompts.jsonl"
  c.generate.update(max_new_tokens=32, greedy=True, repetition_penalty=1.0, batch_size=128)
  c.protocols = ("judge_free",)
  c.report.metric = "judge_free.exact_rate:set=test"
  c.report.fields = ("exact_rate:template=visible", "exact_rate:template=paraphrase",
                     "exact_rate:template=novel", "exact_rate:set=pool")
  if name not in ("bioworld", "bioworld_sweep", "bioworld_smoke"):
    _bioworld_experiment(c, name, testbed, sources)
    return
  if not smoke:
    # One fixed biography a person: 150 epochs are 150 exposures, as 30 of the strong corpus.
    # No gate: the negative control's cloze is reported, whatever it is.
    c.prepare.base_weak = _prep(
        command=(*testbed, "pretrain", f"--config={pretrain}", "--world={world}",
                 "--corpus=weak", "--workdir={out}", "--gate=0",
                 "--config.train.epochs=150", "--config.checkpoint.keep_epochs=150"),
        files=sources)
  c.report.fields += ("exact_rate:set=fake", "exact_rate:style=record", "exact_rate:style=value")
  c.report.pairs = ("c1k-n10k", "d2k-h2k", "d2k-u2k", "d32k-d2k", "c1k-r1k")
  arms = ("c1k", "n10k") if smoke else ("c1k", "h2k", "u2k", "n10k", "r1k", "d2k", "d32k")
  if name == "bioworld_sweep":
    arms += ("d125", "d250", "d500", "d4k", "d8k", "d16k", "c1k_noref", "c1k_norec")
    # 1K of the raw pool chosen by each lima_jax.curate selector; the verdict's "clean SFT
    # rows" is each one's precision against the planted labels.
    for preset in ("random", "quality", "longest", "diverse"):
      c.arms[f"{preset}1k"] = _arm(
          curate=preset, pool="{world}/sft/raw.jsonl", n=1000, seeds=(0, 1, 2), overrides=(
              "model.init={base_strong}/base", "train.epochs=16", "checkpoint.keep_epochs=16"))
  seeds = (0,) if smoke else (0, 1, 2)
  for arm in arms:
    n = _bioworld_size(arm)
    epochs = 1 if smoke else max(1, round(16000 / n))  # about 16,000 examples seen
    c.arms[arm] = _arm(data=f"{{world}}/sft/{arm}.jsonl", seeds=seeds, n_examples=n, overrides=(
        "model.init={base_strong}/base", f"train.epochs={epochs}",
        f"checkpoint.keep_epochs={epochs}", *(("data.subset_size=1000",) if smoke else ())))
  if not smoke:
    c.report.pairs += ("c1k-weak_c1k",)
    c.arms.weak_c1k = _arm(data="{world}/sft/c1k.jsonl", seeds=seeds, overrides=(
        "model.init={base_weak}/base", "train.epochs=16", "checkpoint.keep_epochs=16"))
  c.report.pairs = tuple(p for p in c.report.pairs if all(a in c.arms for a in p.split("-")))
  # c1k is the clean mixture at 1,000 (the d<N> recipe at N = 1000).
  c.report.size_arms = tuple(a for a in c.arms if a == "c1k" or (a[0] == "d" and a[1].isdigit()))


def _bioworld_experiment(c, name: str, testbed: tuple, sources: tuple) -> None:
  """Issue 36's experiments on the bioworld study's world and strong base (same prepare
  steps, so one DIR shares them): E1 selectors, E2 poison dose, E3 base size, and fairness
  to the large arms. `_bioworld` has set what every bioworld study shares."""

  def trained(data, size, seeds=(0, 1, 2), base="{base_strong}/base", **kw):
    epochs = max(1, round(16000 / size))  # about 16,000 examples seen, as in the core study
    return _arm(data=data, seeds=seeds, n_examples=size, overrides=(
        f"model.init={base}", f"train.epochs={epochs}", f"checkpoint.keep_epochs={epochs}"),
                **kw)

  if name == "bioworld_lora":
    for arm in ("c1k", "d2k", "d32k", "n10k"):
      n = _bioworld_size(arm)
      c.arms[arm] = trained(f"{{world}}/sft/{arm}.jsonl", n)
      lora = trained(f"{{world}}/sft/{arm}.jsonl", n)
      lora.overrides += ("train.lora.rank=16", "train.lora.alpha=32.0",
                         "train.learning_rate=1e-3")
      c.arms[f"{arm}_lora"] = lora
    c.report.pairs = ("c1k_lora-c1k", "d2k_lora-d2k", "d32k_lora-d32k", "n10k_lora-n10k",
                      "d32k_lora-d2k_lora")
  elif name == "bioworld_worlds":
    core = ("c1k", "d2k", "d32k", "n10k", "u2k")
    for arm in core:
      c.arms[arm] = trained(f"{{world}}/sft/{arm}.jsonl", _bioworld_size(arm))
    for w in (1, 2):
      c.prepare[f"world_s{w}"] = _prep(
          command=(*testbed, "build", f"--config=configs/bioworld.py:world_s{w}", "--out={out}"),
          files=sources)
      c.prepare[f"base_s{w}"] = _prep(
          command=(*testbed, "pretrain", "--config=configs/bioworld.py:pretrain",
                   f"--world={{world_s{w}}}", "--corpus=strong", "--workdir={out}",
                   "--gate=0.95"), files=sources)
      for arm in core:
        c.arms[f"{arm}_w{w}"] = trained(
            f"{{world_s{w}}}/sft/{arm}.jsonl", _bioworld_size(arm), base=f"{{base_s{w}}}/base",
            prompts=f"{{world_s{w}}}/eval/prompts.jsonl")
    c.report.pairs = ("c1k-n10k", "d2k-u2k", "d32k-d2k")
  elif name == "bioworld_fair":
    for arm in ("c1k", "d2k", "d32k", "n10k"):
      c.arms[arm] = trained(f"{{world}}/sft/{arm}.jsonl", _bioworld_size(arm))
      if arm != "c1k":  # the same steps as c1k: 16 epochs of a fresh 1,000 rows each
        c.arms[f"{arm}_eq"] = _arm(
            data=f"{{world}}/sft/{arm}.jsonl", seeds=(0, 1, 2), n_examples=_bioworld_size(arm),
            overrides=("model.init={base_strong}/base", "train.epochs=16",
                       "checkpoint.keep_epochs=16", "data.epoch_examples=1000"))
    # The learning-rate grid answers the dev people's prompts too (set=dev: no SFT row of
    # theirs), so each family's rate is chosen on dev people and read on test people.
    c.prepare.prompts_dev = _prep(command=(
        "sh", "-c", 'cat "$1" "$2" > "$3.tmp" && mv "$3.tmp" "$3"', "cat",
        "{world}/eval/dev.jsonl", "{world}/eval/prompts.jsonl", "{out}/prompts.jsonl"))
    for arm in ("c1k", "d2k", "d32k"):
      for lr in ("1e4", "3e4", "1e3"):  # 3e-4 is configs/bioworld.py:sft's (the core arms')
        c.arms[f"{arm}_lr{lr}"] = trained(
            f"{{world}}/sft/{arm}.jsonl", _bioworld_size(arm),
            prompts="{prompts_dev}/prompts.jsonl")
        c.arms[f"{arm}_lr{lr}"].overrides += (f"train.learning_rate={lr[0]}e-{lr[2:]}",)
    c.report.pairs = ("d32k_eq-d2k_eq", "d32k-d2k", "c1k-d2k_eq", "c1k-d2k", "c1k-n10k_eq",
                      "c1k-n10k")
    c.report.size_arms = ("c1k", "d2k", "d32k")
  elif name == "bioworld_e1":
    c.prepare.base_small = _prep(
        command=(*testbed, "pretrain", "--config=configs/bioworld.py:pretrain_s",
                 "--world={world}", "--corpus=strong", "--workdir={out}", "--gate=0"),
        files=sources)
    # LESS's warm-up: a short fine-tuning on a little clean data (4 epochs of c1k).
    c.prepare.warm = _prep(
        command=("python", "-m", "lima_jax.main", "--config=configs/bioworld.py:sft",
                 "--workdir={out}", "--config.model.init={base_strong}/base",
                 "--config.data.train_files={world}/sft/c1k.jsonl", "--config.train.epochs=4",
                 "--config.checkpoint.keep_epochs=4", "--config.seed=0"),
        files=sources)
    scorer = {"ifd_base1k": ("ifd", "{base_strong}/base"), "ifd_warm1k": ("ifd", "{warm}"),
              "ifd_small1k": ("ifd", "{base_small}/base"),
              "loss1k": ("loss", "{base_strong}/base"),
              "consistency1k": ("consistency", "{base_strong}/base"),
              "influence1k": ("influence", "{warm}"), "random1k": ("random", "")}
    for arm, (preset, model) in scorer.items():
      more = ("model.batch_size=64",) + ((f"scorer={model}",) if model else ())
      if preset == "consistency":
        # The stated fact is what it checks. The base's documents are six-sentence
        # biographies, so an end-of-text after one sentence would measure length, not facts.
        more += ("consistency.end=none",)
      if preset == "influence":
        more += ("influence.target={world}/eval/dev_target.jsonl", "influence.batch_size=32")
      c.arms[arm] = trained("", 1000, curate=preset, pool="{world}/sft/raw.jsonl", n=1000,
                            curate_overrides=more)
    for arm in ("oracle1k", "c1k"):
      c.arms[arm] = trained(f"{{world}}/sft/{arm}.jsonl", 1000)
    c.report.pairs = tuple(f"{a}-random1k" for a in c.arms if a != "random1k") + (
        "oracle1k-consistency1k", "oracle1k-loss1k")
  elif name == "bioworld_e2":
    c.prompts = "{world}/eval/prompts_poison.jsonl"
    c.report.fields += ("exact_rate:set=poisoned",)
    # K = 0 has no poisoned fact to ask: c1k answers the test prompts as in every other study
    # sharing the DIR (the same step; prompts_poison.jsonl holds them unchanged).
    c.arms.c1k = trained("{world}/sft/c1k.jsonl", 1000, prompts="{world}/eval/prompts.jsonl")
    c.arms.d10k = trained("{world}/sft/d10k.jsonl", 10000)
    for d in (0, 1):
      for k in (1, 10, 100, 300):
        c.arms[f"c1k_p{k}_{d}"] = trained(f"{{world}}/sft/c1k_p{k}_{d}.jsonl", 1000)
      c.arms[f"d10k_p10_{d}"] = trained(f"{{world}}/sft/d10k_p10_{d}.jsonl", 10000)
    c.report.pairs = tuple(f"c1k_p{k}_0-c1k" for k in (1, 10, 100, 300)) + (
        "d10k_p10_0-d10k",)
    c.report.size_arms = ("c1k",)
  else:  # bioworld_e3 (6.9M) and bioworld_e3_l (15M) beside the 2.2M base
    size = "l" if name.endswith("_l") else "m"
    c.prepare[f"base_{size}"] = _prep(
        command=(*testbed, "pretrain", f"--config=configs/bioworld.py:pretrain_{size}",
                 "--world={world}", "--corpus=strong", "--workdir={out}", "--gate=0.95"),
        files=sources)
    for arm in ("d250", "d500", "c1k", "d2k", "d8k", "n10k"):
      n = _bioworld_size(arm)
      c.arms[arm] = trained(f"{{world}}/sft/{arm}.jsonl", n, seeds=(0, 1))
      c.arms[f"{arm}_{size}"] = trained(f"{{world}}/sft/{arm}.jsonl", n, seeds=(0, 1),
                                        base=f"{{base_{size}}}/base")
    c.report.pairs = (f"c1k_{size}-c1k", f"d2k_{size}-d2k", f"c1k_{size}-d2k_{size}",
                      f"c1k_{size}-n10k_{size}", "c1k-n10k")
    c.report.size_arms = ("d250", "d500", "c1k", "d2k", "d8k")


def _bioworld_size(arm: str) -> int:
  digits = "".join(ch for ch in arm.split("_")[0] if ch.isdigit())
  return int(digits) * (1000 if arm.split("_")[0].endswith("k") else 1)
