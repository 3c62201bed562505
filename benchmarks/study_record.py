r"""Copies a finished study's results into benchmarks/results/NAME with what made them.

    python benchmarks/study_record.py --study=DIR --out=benchmarks/results/NAME \
      --command="python -m lima_jax.experiment run --config=configs/experiments.py:bioworld \
      --workdir=DIR" [--command=...] [--machine="..."] [--arms=ARM,...]

Writes OUT/run.json (the commands, the commit, the machine, every step's wall time and status
from DIR/manifest.json, and the sum of the wall times; with --arms only those arms' steps and
the prepare steps, for one study of several sharing DIR), OUT/data_hashes.json (the world's
hashes.json, when the study built one) and copies DIR/report/* (experiment report and testbed
verdict files) beside them.
"""
import argparse
import json
import pathlib
import platform
import shutil
import subprocess


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--study", required=True, type=pathlib.Path)
  ap.add_argument("--out", required=True, type=pathlib.Path)
  ap.add_argument("--command", action="append", default=[])
  ap.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, CPU")
  ap.add_argument("--arms", default="", help="comma-separated: record only these arms' steps "
                  "(and the prepare steps); default every step")
  a = ap.parse_args()
  try:
    steps = json.loads((a.study / "manifest.json").read_text())["steps"]
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise SystemExit(f"error: {a.study}: no readable manifest.json ({e})")
  report = a.study / "report"
  if not report.is_dir():
    raise SystemExit(f"error: {report}: run `experiment report` and `testbed verdict` first")
  commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent).stdout.strip()
  arms = set(filter(None, a.arms.split(",")))
  unknown = arms - {r.get("arm") for r in steps.values()}
  if unknown:
    raise SystemExit(f"error: --arms: {', '.join(sorted(unknown))} not in "
                     f"{a.study / 'manifest.json'}")
  rows = {k: {"kind": r.get("kind"), "seconds": r.get("seconds"), "status": r.get("status"),
              "finished": r.get("finished")} for k, r in sorted(steps.items())
          if not arms or r.get("arm") in arms or r.get("kind") == "prepare"}
  total = sum(r["seconds"] or 0 for r in rows.values())
  a.out.mkdir(parents=True, exist_ok=True)
  for f in sorted(report.iterdir()):
    if f.is_file():
      shutil.copy2(f, a.out / f.name)
  hashes = a.study / "prepare" / "world" / "hashes.json"
  if hashes.exists():
    shutil.copy2(hashes, a.out / "data_hashes.json")
  run = {"commands": a.command, "commit": commit, "machine": a.machine,
         "arms": sorted(arms) or "all",
         "steps_wall_s": round(total, 1), "steps": rows}
  (a.out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
  print(f"wrote {a.out}: {len(rows)} steps, {total / 60:.1f} min of step wall time")


if __name__ == "__main__":
  main()
