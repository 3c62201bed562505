r"""The bioworld testbed: build a world, pretrain a base on it, analyse answers.

    python -m lima_jax.testbed build --config=configs/bioworld.py:world --out=DIR
    python -m lima_jax.testbed pretrain --config=configs/bioworld.py:pretrain --world=DIR \
        --corpus=strong --workdir=BASE [--gate=0.95]
    python -m lima_jax.testbed analyze --world=DIR --answers=A.jsonl[,B.jsonl] [--out=F.json]
    python -m lima_jax.testbed verdict --study=STUDY_DIR [--retention_seeds=0,1,2]

build writes DIR/world.json (every person's facts and split), DIR/pretrain/{strong,weak}.jsonl
(plain documents), DIR/tokenizer.model (SentencePiece trained on the corpus), DIR/sft/ARM.jsonl
for each arm of the config and DIR/sft/raw.jsonl (the raw pool, each row labelled with its
planted noise), DIR/eval/prompts.jsonl (test people, test fake names, instructed styles and some SFT-pool
people, with `expected` and `tags`, scored exactly by lima_jax.eval's judge_free),
DIR/eval/dev.jsonl (dev people: for the learning rate), DIR/eval/dev_target.jsonl (clean
examples about dev people: influence's target), DIR/eval/prompts_poison.jsonl (when the config
has poisoned arms: the prompts plus each poisoned fact asked of its person),
DIR/eval/cloze_{strong,weak}.jsonl and DIR/hashes.json (sha256 of every file). It refuses to
write a world in which a test person, a test fake name or a held-out question form appears in
any SFT file, or whose novel question forms share a word 4-gram or an opening with SFT text.
The tokenizer is trained on the biographies and the SFT text only. Everything is built in DIR.partial and renamed at the
end, so an existing DIR is never left half-written.

pretrain trains the base (lima_jax.train on the corpus), measures biography cloze accuracy
(greedy continuation of the text up to each attribute value, the value followed by '.'), writes
BASE/cloze.json and links BASE/base to the final checkpoint; under --gate it exits 2 without
the link, so nothing is fine-tuned on a base that did not store the facts.

analyze prints the judge-free figures of answers files (lima_jax.testbed.analysis.metrics);
verdict reads a study run by the experiment runner (configs/experiments.py:bioworld) and
writes STUDY_DIR/report/bioworld.{json,md,png}: every arm's figures (mean over seeds) and which
pre-registered predictions held, with 95% intervals clustered by test person, and the knowledge
each arm kept: the biography cloze of the answered checkpoints of --retention_seeds (default 0)
next to its base's (lima_jax/testbed/cloze.py).
"""
import hashlib
import json
import os
import pathlib
import random
import shutil
import sys

from absl import app, flags
from ml_collections import config_flags

from lima_jax.errors import UserError, cli_main, parse_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/bioworld.py:world (build) or :pretrain (pretrain).",
    lock_config=True)
_OUT = flags.DEFINE_string("out", None, "build: the world's directory; analyze: a JSON file.")
_WORLD = flags.DEFINE_string("world", None, "A directory written by `build`.")
_CORPUS = flags.DEFINE_enum("corpus", "strong", ["strong", "weak"],
                            "pretrain: the strong (5 rewrites, shuffled, full names) or the weak "
                            "(one fixed biography with pronouns) corpus.")
_WORKDIR = flags.DEFINE_string("workdir", None, "pretrain: the base model's run directory.")
_GATE = flags.DEFINE_float("gate", 0.0, "pretrain: least cloze accuracy for the base to be "
                           "linked as BASE/base (0: no gate).")
_ANSWERS = flags.DEFINE_string("answers", None, "analyze: answers JSONL files (comma-separated).")
_STUDY = flags.DEFINE_string("study", None, "verdict: a study's workdir (experiment runner).")
_RETENTION_SEEDS = flags.DEFINE_list(
    "retention_seeds", ["0"], "verdict: the seeds whose answered checkpoints get the biography "
    "cloze (knowledge retained after SFT; about as long as answering, once: cached beside the "
    "answers); empty: none.")


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def build(c, out: pathlib.Path) -> dict:
  from lima_jax.testbed import arms, sft, world as world_lib
  from lima_jax.tokenizer import train_sentencepiece
  w = world_lib.make_world(c.n_pool, c.n_dev, c.n_test, c.n_fake_sft, c.n_fake_test, c.seed)
  part = out.with_name(out.name + ".partial")
  shutil.rmtree(part, ignore_errors=True)
  for d in ("pretrain", "sft", "eval"):
    (part / d).mkdir(parents=True)
  rng = random.Random(f"{c.seed}/bios")
  strong = [(p, b) for p in w.people for b in world_lib.strong_biographies(p, c.rewrites, rng)]
  rng.shuffle(strong)
  weak = [(p, world_lib.weak_biography(p)) for p in w.people]
  for name, docs in (("strong", strong), ("weak", weak)):
    arms.write_jsonl(part / "pretrain" / f"{name}.jsonl", ({"text": b} for _, b in docs))
    first = {}  # one biography a person for the cloze test
    for p, b in docs:
      first.setdefault(p.name, (p, b))
    arms.write_jsonl(part / "eval" / f"cloze_{name}.jsonl", (
        {"split": p.split, "person": p.name, "attr": a, "prefix": prefix, "value": v}
        for p, b in first.values() for a, prefix, v in world_lib.cloze(p, b)))
  problems = sft.novel_form_problems()
  if problems:
    raise UserError(f"lima_jax/testbed/sft.py: a novel question form is not new: {problems[0]}")
  raw = sft.raw_pool(w, c.raw_pool, c.seed)
  written = {"raw": raw}
  for name in c.arms:
    written[name] = arms.rows(name, w, raw, c.seed)
  texts = [t for rows in written.values() for r in rows for t in r["conversations"]]
  leaked = arms.leaks(w, texts)
  if leaked:
    raise UserError(f"{out}: SFT data would contain test items: {', '.join(leaked[:5])}")
  # The tokenizer sees what a model is trained on (the biographies and SFT text), never the
  # evaluation-only forms; a fixed sample of the distinct SFT utterances keeps it quick.
  sft_texts = sorted(set(texts))
  sft_texts = random.Random(f"{c.seed}/tokenizer").sample(sft_texts, min(20000, len(sft_texts)))
  train_sentencepiece([b for _, b in strong] + [b for _, b in weak] + sft_texts,
                      c.vocab_size, part / "tokenizer.model")
  for name, rows in written.items():
    arms.write_jsonl(part / "sft" / f"{name}.jsonl", rows)
  prompts = sft.eval_prompts(w, c.seed, pool_people=c.pool_people)
  arms.write_jsonl(part / "eval" / "prompts.jsonl", prompts)
  poisoned = arms.poisoned_prompts(w, written, c.seed)
  if poisoned:  # the dose-response arms' own people, asked about the facts they were fed
    arms.write_jsonl(part / "eval" / "prompts_poison.jsonl", prompts + poisoned)
  # Influence's target set: clean examples about dev people (never trained on).
  dev_rng = random.Random(f"{c.seed}/dev_target")
  arms.write_jsonl(part / "eval" / "dev_target.jsonl",
                   (sft.clean_example(p, dev_rng) for p in w.split("dev") for _ in range(4)))
  arms.write_jsonl(part / "eval" / "dev.jsonl", sft.eval_prompts(w, c.seed, ("dev",), False))
  (part / "world.json").write_text(json.dumps({
      "config": c.to_dict(), "people": [vars(p) for p in w.people],
      "fake_sft": list(w.fake_sft), "fake_test": list(w.fake_test)}, indent=1) + "\n")
  hashes = {str(f.relative_to(part)): _sha256(f) for f in sorted(part.rglob("*")) if f.is_file()}
  (part / "hashes.json").write_text(json.dumps(hashes, indent=1) + "\n")
  if out.exists():
    shutil.rmtree(out)
  os.replace(part, out)
  counts = {name: len(rows) for name, rows in written.items()}
  print(f"wrote {out}: {len(w.people)} people ({c.n_pool} pool, {c.n_dev} dev, {c.n_test} "
        f"test), {len(strong)} strong and {len(weak)} weak biographies, {len(prompts)} "
        f"evaluation prompts, SFT files {counts}")
  return hashes


def pretrain(config, world: pathlib.Path, corpus: str, workdir: pathlib.Path, gate: float):
  from lima_jax import train
  for f in (world / "pretrain" / f"{corpus}.jsonl", world / "tokenizer.model"):
    if not f.exists():
      raise UserError(f"--world={world}: no {f.relative_to(world)} (run `build` first)")
  config.data.train_files = str(world / "pretrain" / f"{corpus}.jsonl")
  config.data.tokenizer = str(world / "tokenizer.model")
  train.train_and_evaluate(config, str(workdir))
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  final = workdir / "checkpoints" / str(steps[-1])
  from lima_jax.testbed import cloze
  result = cloze.accuracy(final, world / "eval" / f"cloze_{corpus}.jsonl")
  result.update(corpus=corpus, checkpoint=str(final), gate=gate)
  (workdir / "cloze.json").write_text(json.dumps(result, indent=1) + "\n")
  by = ", ".join(f"{a} {v:.1%}" for a, v in result["by_attr"].items())
  print(f"cloze accuracy {result['accuracy']:.1%} on {result['n']} values ({by})")
  link = workdir / "base"
  if link.is_symlink() or link.exists():
    link.unlink()
  if result["accuracy"] < gate:
    print(f"error: {workdir}: the base's cloze accuracy {result['accuracy']:.1%} is under the "
          f"gate {gate:.0%}: pretrain longer (--config.train.epochs) or on fewer people",
          file=sys.stderr)
    sys.exit(2)
  link.symlink_to(pathlib.Path("checkpoints") / str(steps[-1]))
  print(f"base: {link} -> {final}")


@cli_main
def main(argv):
  if len(argv) != 2 or argv[1] not in ("build", "pretrain", "analyze", "verdict"):
    raise app.UsageError("usage: python -m lima_jax.testbed build|pretrain|analyze|verdict "
                         "--flags")
  if argv[1] == "build":
    if not _OUT.value or _CONFIG.value is None:
      raise UserError("build needs --config=configs/bioworld.py:world and --out=DIR")
    build(_CONFIG.value, pathlib.Path(_OUT.value))
  elif argv[1] == "pretrain":
    if not (_WORLD.value and _WORKDIR.value) or _CONFIG.value is None:
      raise UserError("pretrain needs --config=configs/bioworld.py:pretrain, --world and "
                      "--workdir")
    pretrain(_CONFIG.value, pathlib.Path(_WORLD.value), _CORPUS.value,
             pathlib.Path(_WORKDIR.value), _GATE.value)
  elif argv[1] == "verdict":
    from lima_jax.testbed import report
    if not _STUDY.value:
      raise UserError("verdict needs --study=DIR (a study's workdir)")
    try:
      seeds = tuple(int(x) for x in _RETENTION_SEEDS.value)
    except ValueError:
      raise UserError(f"--retention_seeds={','.join(_RETENTION_SEEDS.value)}: expected "
                      "comma-separated seed numbers") from None
    report.main(pathlib.Path(_STUDY.value), seeds)
  else:
    from lima_jax.testbed import analysis
    if not (_WORLD.value and _ANSWERS.value):
      raise UserError("analyze needs --world=DIR and --answers=A.jsonl")
    analysis.main(pathlib.Path(_WORLD.value), _ANSWERS.value.split(","), _OUT.value)


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
