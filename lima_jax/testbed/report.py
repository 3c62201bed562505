"""A bioworld study's verdict: the arms' exact scores, the predictions, one figure.

Writes DIR/report/bioworld.json, bioworld.md (the tables, ready for the README) and
bioworld.png (exact match on test people by arm, visible and held-out question forms, with
each arm's seeds as dots).

Knowledge retained after SFT: the biography cloze (lima_jax.testbed.cloze) of each arm's
answered checkpoint, for the seeds asked (measured once, then cached beside the answers), on
the cloze file of the base the arm was fine-tuned from, next to that base's own accuracy.
"""
import json
import pathlib

import numpy as np

from lima_jax import files
from lima_jax.errors import UserError
from lima_jax.testbed import analysis, cloze

COLUMNS = (("clean_data", "clean SFT rows"), ("em_test", "EM test"), ("em_test_visible", "visible forms"),
           ("em_test_paraphrase", "paraphrase forms"), ("em_test_novel", "novel forms"),
           ("em_pool", "EM SFT people"),
           ("retention", "cloze after SFT"), ("retention_base", "cloze of its base"),
           ("format_ok_test", "house format"), ("hallucination_test", "wrong fact"),
           ("run_on_test", "run-on"), ("refusal_fake", "refuses fakes"),
           ("false_refusal_test", "refuses real"), ("record_ok", "record style"),
           ("value_ok", "value style"))


def _pct(v) -> str:
  return "-" if v is None or v != v else f"{100 * v:.1f}"


def markdown(v: dict, order: list[str]) -> str:
  head = "| arm | seeds | " + " | ".join(t for _, t in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
  for a in order:
    m = v["arms"][a]
    lines.append(f"| {a} | {m['seeds']} | "
                 + " | ".join(_pct(m.get(k, float("nan"))) for k, _ in COLUMNS) + " |")
  measured = sorted({s for a in order for s in v["arms"][a].get("retention_seeds", [])})
  if measured:
    lines += ["", f"Cloze after SFT: the biography cloze of each arm's answered checkpoint, "
              f"seed{'s' if len(measured) > 1 else ''} {', '.join(map(str, measured))}; "
              "cloze of its base: the same items before fine-tuning."]
  lines += ["", "| prediction | claim | evidence | outcome |", "|---|---|---|---|"]
  for p in v["predictions"]:
    if "diff" in p:
      lo, hi = p["ci95"]
      ev = (f"{p['arms'][0]} - {p['arms'][1]} = {100 * p['diff']:+.1f} points "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}] over {p['n_people']} people")
    elif "best" in p:
      ev = f"{_pct(p['value'])}% vs best {p['best']} {_pct(p['best_value'])}%"
    elif "value" in p:
      ev = f"{p['arms'][0]} {_pct(p['value'])}%"
    else:
      ev = "arm(s) " + ", ".join(p["arms"]) + " not run"
    lines.append(f"| {p['name']} | {p['claim']} | {ev} | {p['outcome']} |")
  return "\n".join(lines) + "\n"


def figure(v: dict, by_arm: dict, order: list[str], path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(order)), 4))
  x = np.arange(len(order))
  for off, key, label in ((-0.27, "em_test_visible", "visible forms"),
                          (0.0, "em_test_paraphrase", "paraphrase forms"),
                          (0.27, "em_test_novel", "novel forms")):
    if all(v["arms"][a][key] != v["arms"][a][key] for a in order):
      continue  # a world built before the novel forms: its held-out forms are 'heldout'
    ax.bar(x + off, [100 * v["arms"][a][key] for a in order], 0.27, label=label)
    for i, a in enumerate(order):
      seeds = [100 * analysis.metrics(rows)[key] for rows in by_arm[a]]
      ax.plot([i + off] * len(seeds), seeds, "k.", ms=4)
  ax.set_xticks(x, order, rotation=30, ha="right")
  ax.set_ylabel("exact match on test people (%)")
  ax.set_ylim(0, 100)
  ax.set_title("Bioworld: SFT arms on people never seen in fine-tuning")
  ax.legend(loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def retention(workdir: pathlib.Path, seeds) -> dict:
  """{arm: {'retention': mean cloze accuracy of its answered checkpoints of `seeds`,
  'retention_base': its base's, 'retention_seeds': the seeds measured}}."""
  by_arm: dict = {}
  for (arm, seed), rec in sorted(analysis.last_answers(workdir).items()):
    if seed not in seeds:
      continue
    ckpt = [a.split("=", 1)[1] for a in rec["command"] if a.startswith("--config.checkpoint=")]
    config = pathlib.Path(ckpt[0]).parents[1] / "config.json" if ckpt else None
    if config is None or not config.exists():
      raise UserError(f"{arm}/seed{seed}: no checkpoint and training config.json in its "
                      f"answer step's command ({rec.get('log', '')})")
    init = json.loads(config.read_text())["model"]["init"]
    base_cloze = pathlib.Path(init).parent / "cloze.json"
    if not base_cloze.exists():
      raise UserError(f"{arm}/seed{seed}: its base {init} has no cloze.json (a base made by "
                      "`python -m lima_jax.testbed pretrain` has one)")
    base = json.loads(base_cloze.read_text())
    # The base's own world (WORLD/pretrain/CORPUS.jsonl was its training file): an arm of
    # another world is measured on that world's people.
    corpus = json.loads((pathlib.Path(init).parent / "config.json").read_text())["data"]
    world = pathlib.Path(corpus["train_files"].split(",")[0]).parents[1]
    items = world / "eval" / f"cloze_{base['corpus']}.jsonl"
    print(f"retention: {arm}/seed{seed} on {items.name}", flush=True)
    got = cloze.cached_accuracy(pathlib.Path(ckpt[0]), items,
                                pathlib.Path(rec["output"]).parent / "retention.json")
    m = by_arm.setdefault(arm, {"after": [], "base": base["accuracy"], "seeds": []})
    m["after"].append(got["accuracy"])
    m["seeds"].append(seed)
  return {a: {"retention": float(np.mean(m["after"])), "retention_base": m["base"],
              "retention_seeds": m["seeds"]} for a, m in by_arm.items()}


def _experiments(workdir: pathlib.Path, v: dict, by_arm: dict, out: pathlib.Path,
                 retention_seeds) -> None:
  """Issue 36's sections, when the study has their arms: E1 (selector arms with scores) in
  report/selection.{json,md}, E2 (poisoned arms) in report/dose.{json,md,png}, E3 (arms on
  a larger base) in report/scale.{json,md,png}, LoRA arms (ARM_lora) in report/lora.*,
  fairness arms (ARM_eq, ARM_lrX) in report/fair.{json,md}."""
  from lima_jax.testbed import adapters, dose, fair, scale, selection
  if any(a.endswith("_eq") or fair.learning_rate(a) for a in by_arm):
    fv = fair.verdict(v, by_arm)
    files.write_json(out / "fair.json", fv)
    files.write_atomic(out / "fair.md", fair.markdown(fv))
    print(fair.markdown(fv))
  if any(a.endswith("_lora") for a in by_arm):
    lv = adapters.verdict(v, by_arm)
    files.write_json(out / "lora.json", lv)
    files.write_atomic(out / "lora.md", adapters.markdown(lv))
    print(adapters.markdown(lv))
  if any(scale.ARM.fullmatch(a) and scale.ARM.fullmatch(a).group(2) for a in by_arm):
    e3 = scale.verdict(by_arm)
    files.write_json(out / "scale.json", e3)
    files.write_atomic(out / "scale.md", scale.markdown(e3))
    scale.figure(e3, out / "scale.png")
    print(scale.markdown(e3))
  if selection.curate_arms(workdir):
    e1 = selection.verdict(workdir, v, by_arm)
    files.write_json(out / "selection.json", e1)
    files.write_atomic(out / "selection.md", selection.markdown(e1))
    print(selection.markdown(e1))
  if any(dose.ARM.fullmatch(a) and "_p" in a for a in by_arm):
    e2 = dose.verdict(workdir, by_arm, cloze_too=0 in retention_seeds)
    dose.write(out, e2)
    print(dose.markdown(e2))


def main(workdir: pathlib.Path, retention_seeds=(0,)) -> dict:
  from lima_jax.testbed import worlds
  every = analysis.study_answers(workdir)
  # Arms on other worlds (ARM_w1, ...) have their own section; the table and the predictions
  # are world 0's, as before world variance was measured.
  by_arm = {a: s for a, s in every.items() if not worlds.WORLD.fullmatch(a)}
  v = analysis.verdict(by_arm)
  raw = workdir / "prepare" / "world" / "sft" / "raw.jsonl"
  for arm, runs in analysis.study_data(workdir).items():
    if arm in v["arms"] and raw.exists():  # mean over seeds: a data subset is a seed's own
      v["arms"][arm]["clean_data"] = float(np.mean([
          analysis.clean_share(data, raw, subset, seed) for data, subset, seed in runs]))
  for arm, m in retention(workdir, set(retention_seeds)).items():
    v["arms"][arm].update(m)
  order = sorted(by_arm, key=lambda a: (a.startswith("weak"), -v["arms"][a]["em_test"]))
  out = workdir / "report"
  out.mkdir(parents=True, exist_ok=True)
  _experiments(workdir, v, by_arm, out, retention_seeds)
  if len(every) > len(by_arm):
    wv = worlds.verdict(every)
    files.write_json(out / "worlds.json", wv)
    files.write_atomic(out / "worlds.md", worlds.markdown(wv))
    print(worlds.markdown(wv))
  files.write_json(out / "bioworld.json", v)
  md = markdown(v, order)
  files.write_atomic(out / "bioworld.md", md)
  figure(v, by_arm, order, out / "bioworld.png")
  print(md)
  print(f"wrote {out / 'bioworld.json'}, {out / 'bioworld.md'}, {out / 'bioworld.png'}")
  return v
