r"""Judged evaluation: LIMA's pairwise and 1-6 protocols, MT-Bench and AlpacaEval-style rates.

    python -m lima_jax.eval --config=configs/eval.py:PROTOCOL --workdir=DIR \
      --config.answers=A.jsonl [--config.baseline=B.jsonl] \
      --config.judge.base_url=URL --config.judge.model=NAME [--config.judge.api_key_env=VAR]

Protocols (`PROTOCOL`):

  lima_pairwise  LIMA's annotator question (a super-intelligent assistant; is one answer
                 significantly better?) answered [[A]], [[B]] or [[C]] (neither). Both orders
                 are judged: a win only when both orders agree, a tie when they disagree or
                 say C. Needs --config.baseline.
  lima_likert    Helpfulness 1-6 (LIMA's rubric in our words), answered [[N]]; k samples a
                 prompt (`sample` field; LIMA: 5); mean with a bootstrap over prompts in
                 which a prompt's k grades move together.
  mt_bench       FastChat's single-answer grading 1-10 per turn with its judge prompts
                 (reference-guided for math, reasoning, coding; turn 2 in context);
                 --config.mt_bench.mode=pairwise compares against --config.baseline instead.
  alpaca_eval    Win rate against reference outputs, both orders, from the judge's
                 log-probabilities of A/B when the endpoint returns them (else the verdict),
                 and a length-controlled win rate fitted on this prompt set.
  judge_free     No judge: lengths, stops at EOT, repetition, refusals, empty answers,
                 non-English share; and exact match when rows carry `expected` (below).
  harness        lm-evaluation-harness tasks (--config.harness.tasks: names or local YAML
                 files; generate_until or loglikelihood) against --config.checkpoint served
                 by python -m lima_jax.serve for the run (or --config.harness.base_url);
                 needs requirements-eval.txt. No judge; results.json has each task's
                 metrics with lm-eval's stderr and a 95% interval over documents.

Exact answers (judge_free): a prompt or answer row may carry `"expected": str` (the exact
answer) and `"tags": [str, ...]` (groups: "set=test", "template=heldout"); generation copies
them from the prompts into answers.jsonl. An answer is exact when its text equals `expected`
with whitespace runs collapsed and the ends stripped. results.json then has `exact_rate` +
`exact_rate_ci95` (k samples of a prompt a cluster), `exact_n`, `exact_n_prompts`,
`exact_tags`, and per tag `exact_rate:TAG` + `exact_rate:TAG_ci95` + `exact_n:TAG`;
per_prompt.json is each prompt's exact share, prompt_tags.json its tags. A non-string
`expected` or `tags` that is not a list of strings stops with FILE:LINE, nothing written.

One command from a checkpoint to a score (answers generated first with LIMA's decoding):

    python -m lima_jax.eval --config=configs/eval.py:lima_likert --workdir=/tmp/ev \
      --config.checkpoint=/tmp/eval_demo/checkpoints/96 \
      --config.prompts=../shared/data/lima/test.jsonl --config.generate.samples=5 ...

Must-show run (300 LIMA test prompts, the demo model's last epoch against its 4th, through
the scripted local judge `python -m lima_jax.eval.scripted_judge`): see docs/evaluation.md "Judged
evaluation" for the commands and figures. A rerun of a finished evaluation makes no judge
call (every request is in DIR/judgments.sqlite).

The API key is read from the environment variable named by judge.api_key_env, never from a
flag. Exit status: 1 bad input (one line, nothing written), 3 a budget cap stopped the run,
4 judgments failed after every retry (counted in n_failed; a rerun retries them). The config
is locked: a misspelled or wrongly typed override fails at start-up.
"""
import ml_collections

PROTOCOLS = ("lima_pairwise", "lima_likert", "mt_bench", "alpaca_eval", "judge_free",
             "harness")

# USD per million tokens (prompt, completion); list prices, to be checked before trusting a
# budget. A model not listed costs 0 here: then judge.max_cost cannot be enforced and the
# run says so (local judges cost nothing but time).
PRICES = ("gpt-4o=2.5/10,gpt-4o-mini=0.15/0.6,gpt-4.1=2/8,gpt-4.1-mini=0.4/1.6,"
          "gpt-4-turbo=10/30,gpt-4=30/60,gpt-3.5-turbo=0.5/1.5")


def get_config(protocol: str = "lima_pairwise") -> ml_collections.ConfigDict:
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown eval protocol {protocol!r}; choose one of {PROTOCOLS}")
  c = ml_collections.ConfigDict()
  c.protocol = protocol
  # The system judged: lima_jax.generate JSONL (prompt or conversations, answer, id, sample)
  # or an AlpacaEval-style JSON list (instruction, output, generator).
  c.answers = ""
  c.baseline = ""  # Same formats; pairwise protocols and mt_bench pairwise mode.
  c.name = ""  # System name in the report ('' = the answers file's stem).
  c.baseline_name = ""
  # Generate the answers first: a lima_jax checkpoint and a prompts file (then `answers` is
  # written to WORKDIR/answers.jsonl). LIMA's decoding unless overridden below.
  c.checkpoint = ""
  c.prompts = ""
  c.generate = ml_collections.ConfigDict()
  c.generate.samples = 5 if protocol == "lima_likert" else 1  # k answers a prompt.
  c.generate.max_new_tokens = 2048
  c.generate.temperature = 0.7
  c.generate.top_p = 0.9
  c.generate.repetition_penalty = 1.2
  # Argmax decoding (temperature and top_p unused; the repetition penalty still applies): for
  # answers with one right form, scored exactly (the bioworld testbed).
  c.generate.greedy = False
  c.generate.batch_size = 8
  c.generate.seed = 0
  # Print the calls, tokens and cost this run would spend (nothing is sent), then stop.
  c.dry_run = False
  c.max_prompts = 0  # Judge only the first N matched prompts (0 = all): a cheap first look.
  # The judgments store ('' = WORKDIR/judgments.sqlite). One file shared by several runs asks
  # a request they have in common once (two checkpoints that give the same answer).
  c.store = ""

  c.judge = ml_collections.ConfigDict()
  c.judge.base_url = ""  # Any OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.
  c.judge.model = ""
  c.judge.api_key_env = "OPENAI_API_KEY"  # Unset: a placeholder key (local servers).
  c.judge.temperature = 0.0
  c.judge.seed = 0  # Sent as the request's seed (endpoints that honour it); part of the key.
  c.judge.max_tokens = 16 if protocol == "alpaca_eval" else 1024
  c.judge.max_concurrency = 8
  c.judge.max_retries = 6  # Per request, after the first try: 429, 5xx, timeouts, refused.
  c.judge.timeout_s = 120.0
  c.judge.backoff_s = 1.0  # First wait, doubled each retry; a Retry-After header wins.
  c.judge.max_backoff_s = 60.0
  # Caps on what this run sends (a rerun starts from zero, with the earlier work cached). The
  # cost cap counts what was spent plus max_tokens for each request in flight, so it is never
  # crossed; exit status 3 says a cap stopped the run.
  c.judge.max_calls = 0  # Requests (0 = no cap).
  c.judge.max_cost = 0.0  # USD, from judge.prices (0 = no cap).
  c.judge.prices = PRICES
  # Ask for log-probabilities (alpaca_eval's soft preference). An endpoint that refuses
  # them is a failure: turn this off for it.
  c.judge.logprobs = protocol == "alpaca_eval"

  c.bootstrap = ml_collections.ConfigDict()
  c.bootstrap.rounds = 2000  # Resamples of prompts (Arena-Hard's 100 leaves the CI noisy).
  c.bootstrap.seed = 0

  c.alpaca_eval = ml_collections.ConfigDict()
  # L2 weight on the per-prompt terms of the length-controlled model (they are identified
  # only through it, with two orders of one pair a prompt).
  c.alpaca_eval.prompt_l2 = 1.0
  c.alpaca_eval.lc_rounds = 200  # Bootstrap refits of the LC model (each is a Newton solve).

  c.mt_bench = ml_collections.ConfigDict()
  c.mt_bench.mode = "single"  # 'single' (1-10 per turn) | 'pairwise' (against baseline).
  c.mt_bench.questions = "../shared/data/eval/mt_bench/question.jsonl"
  c.mt_bench.judge_prompts = "../shared/data/eval/mt_bench/judge_prompts.jsonl"
  c.mt_bench.references = "../shared/data/eval/mt_bench/reference_answer_gpt-4.jsonl"

  c.judge_free = ml_collections.ConfigDict()
  c.judge_free.min_ascii_letters = 0.8  # Below this share of ASCII letters: not English.

  c.harness = ml_collections.ConfigDict()
  c.harness.tasks = ""  # Comma-separated lm-eval task names and/or local task YAML files.
  c.harness.include_path = ""  # A directory of local task YAMLs (lm-eval's --include_path).
  # local-completions: loglikelihood + generate_until (ids from the server's /tokenize);
  # local-chat-completions: generate_until through the chat route (LIMA's turn format).
  c.harness.model = "local-completions"
  c.harness.base_url = ""  # A running server (http://HOST:PORT); '' serves config.checkpoint.
  c.harness.served_model_name = "lima_jax"  # The model id the server answers to.
  c.harness.api_key_env = ""  # Variable holding a running server's key ('' = none).
  c.harness.num_fewshot = -1  # -1: each task's own.
  c.harness.limit = 0  # Documents per task (0 = all).
  c.harness.batch_size = 1  # Prompts per request.
  c.harness.num_concurrent = 1  # Requests in flight.
  c.harness.max_length = 2048  # lm-eval's context cap in tokens (it keeps the last ones).
  c.harness.system_instruction = ""  # lm-eval's --system_instruction (chat).
  # lm-eval's --gen_kwargs, e.g. 'repetition_penalty=1' for plain greedy: at temperature 0
  # the server still applies LIMA's 1.2 penalty unless told otherwise.
  c.harness.gen_kwargs = ""
  c.harness.seed = 1234  # lm-eval's seeds (few-shot sampling; the requests' seed).
  c.harness.slots = 8  # The served checkpoint's decode slots.
  c.harness.max_len = 0  # Its tokens a slot (0 = the model's context).

  c.report = ml_collections.ConfigDict()
  c.report.examples = 300  # Prompts shown side by side in report.html (the judge's reasons).
  return c
