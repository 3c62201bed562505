"""The PNG figures of a study's report (lima_jax.experiment.report): LIMA's Figure 5 (one bar an
arm at its last epoch, with its interval), Figure 6 (the score against training examples),
the score by epoch, and the first seed's training loss per arm."""
import io
import json
import pathlib

import numpy as np


def _png(fig) -> bytes:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  return buf.getvalue()


def size_line(rep: dict, arms: list[str]) -> list[str]:
  """The arms of the score-against-examples line, smallest first: report.size_arms (one data
  mixture at several sizes) where given, else every arm with a size."""
  line = rep.get("size_arms") or arms
  return sorted((a for a in arms if a in line and rep["n_examples"].get(a)),
                key=lambda a: rep["n_examples"][a])


def figures(rep: dict, workdir: pathlib.Path) -> dict[str, bytes]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  protocol, _, field = rep["metric"].partition(".")  # checked by report.build
  pick = {(r["arm"], r["epoch"]): r for r in rep["rows"]
          if r["protocol"] == protocol and r["field"] == field and r["value"] is not None}
  out = {}
  arms = [a for a in rep["last_epoch"] if (a, rep["last_epoch"][a]) in pick]
  if arms:  # LIMA's Figure 5: one bar an arm, with its interval
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(arms), 3.4))
    vals = [pick[(a, rep["last_epoch"][a])] for a in arms]
    err = _errors(vals)
    ax.bar(arms, [v["value"] for v in vals], yerr=err, capsize=4, color="#4C72B0")
    ax.set_ylabel(rep["metric"])
    against = (f" against {rep['baseline_arm']}" if protocol in ("lima_pairwise", "alpaca_eval")
               and rep["baseline_arm"] else "")
    ax.set_title(f"{rep['study']}: last epoch{against}, 95% intervals", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    out["arms.png"] = _png(fig)
    plt.close(fig)
  sized = size_line(rep, arms)
  if len({rep["n_examples"][a] for a in sized}) >= 2:  # LIMA's Figure 6: score against data
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    vals = [pick[(a, rep["last_epoch"][a])] for a in sized]
    xs = [rep["n_examples"][a] for a in sized]
    ax.errorbar(xs, [v["value"] for v in vals], yerr=_errors(vals), marker="o", capsize=4)
    for a, x, v in zip(sized, xs, vals):
      ax.annotate(a, (x, v["value"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training examples")
    ax.set_ylabel(rep["metric"])
    out["size.png"] = _png(fig)
    plt.close(fig)
  if any(len([k for k in pick if k[0] == a]) > 1 for a in arms):
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for a in arms:
      pts = sorted((e, r) for (arm, e), r in pick.items() if arm == a)
      ax.errorbar([e for e, _ in pts], [r["value"] for _, r in pts],
                  yerr=_errors([r for _, r in pts]), marker="o", capsize=3, label=a)
    ax.set_xlabel("epoch")
    ax.set_ylabel(rep["metric"])
    ax.legend(fontsize=8)
    out["epochs.png"] = _png(fig)
    plt.close(fig)
  curves = _training_curves(workdir, list(rep["last_epoch"]))
  if curves:
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for a, (steps, losses) in curves.items():
      ax.plot(steps, losses, label=a)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (first seed)")
    ax.legend(fontsize=8)
    out["training.png"] = _png(fig)
    plt.close(fig)
  return out


def _errors(vals: list[dict]):
  lo = [v["value"] - v["ci95"][0] if v["ci95"][0] is not None else 0 for v in vals]
  hi = [v["ci95"][1] - v["value"] if v["ci95"][1] is not None else 0 for v in vals]
  return np.array([lo, hi])


def _training_curves(workdir: pathlib.Path, arms: list[str]) -> dict:
  curves = {}
  for arm in arms:
    runs = sorted((workdir / "arms" / arm).glob("seed*/train/metrics.jsonl"))
    if not runs:
      continue
    rows = [json.loads(line) for line in runs[0].read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r and "step" in r]
    if rows:
      curves[arm] = ([r["step"] for r in rows], [r["loss"] for r in rows])
  return curves
