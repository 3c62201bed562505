"""LIMA in miniature: the bioworld, a synthetic world in which every answer is checked exactly.

Command line: `python -m lima_jax.testbed build|pretrain|analyze|verdict` (configs/bioworld.py);
its arms run as the study configs/experiments.py:bioworld. Modules: `world` (fictional people
and their biographies), `sft` (question forms, the house answer style, the raw pool with
planted noise), `arms` (the SFT arms by name and the check that no test item leaks), `cloze`
(what a checkpoint still states), `analysis` (exact facts, format, refusals and the predictions,
with intervals over test people), `report` (the verdict), and issue 36's sections of it:
`selection` (E1: selectors against the planted labels), `dose` (E2: poison dose-response),
`scale` (E3: base size), `worlds` (world variance) and `adapters` (LoRA against full
fine-tuning). Results: docs/testbed.md.
"""
