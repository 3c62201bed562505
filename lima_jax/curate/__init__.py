"""Curation: choose ~1,000 training conversations from a larger pool, and report how.

  records --filters--> candidates --selector (within quotas)--> chosen

Command line: `python -m lima_jax.curate` (see configs/curate.py). Python:

  from lima_jax.curate import pipeline
  curation = pipeline.curate(records, configs.curate.get_config("quality"))

Modules: `filters` (LIMA rules, truncation, sanity, markup), `dedup` (exact, near, test
overlap), `quality` (heuristic score), `embed` (TF-IDF or MiniLM), `selectors`, `quotas`,
`model_scores` (IFD, answer loss, knowledge consistency and gradient influence with a model;
the only module that imports JAX, and only when those selectors run), `plain_text` (a row as
a pretraining document, for consistency), `pipeline`, `report` / `report_html`, `io`,
`agreement` (AUROC and precision of a choice against known labels).
"""
