"""Judged and judge-free evaluation of answers (LIMA's protocols, MT-Bench,
AlpacaEval's formats) and benchmarks through lm-eval (harness).

Command line: `python -m lima_jax.eval` (see configs/eval.py). Python:

  from lima_jax import eval as lima_eval
  results = lima_eval.evaluate(config, workdir)            # one protocol, files in config
  choice = lima_eval.judge_epochs({5: "a5.jsonl", 6: "a6.jsonl"}, workdir, config)

Modules: `answers` (files, matching by id or text), `generation` (answers from a
checkpoint), `protocols` (judge prompts, verdict parsers), `client` (the OpenAI-compatible
judge, retries), `store` (SQLite judgments = the cache), `results` (figures), `stats`
(intervals), `judge_free`, `report` (HTML, PNG), `compare` (tables, agreement), `epochs`,
`run`, `scripted_judge` (a local OpenAI-speaking stand-in for tests and demos). Nothing in
the rest of lima_jax imports this package.
"""
from lima_jax.eval.epochs import judge_epochs
from lima_jax.eval.run import evaluate

__all__ = ["evaluate", "judge_epochs"]
