r"""Two bioworld verdicts side by side: what a change of the world did to the headline figures.

    python benchmarks/bioworld_compare.py --old=benchmarks/results/bioworld/bioworld.json \
      --new=benchmarks/results/bioworld_v2/bioworld.json [--out=F.md]

Prints (and writes) a markdown table per arm: the old and new EM on test people, and the new
world's figures by question form; then each prediction's outcome in both. The old world's
held-out forms are the new world's paraphrase forms, so "visible + paraphrase" is the figure
measured the old way on the new world.
"""
import argparse
import json
import pathlib


def _pct(x) -> str:
  return "-" if x is None or x != x else f"{100 * x:.1f}"


def table(old: dict, new: dict) -> str:
  arms = sorted(set(old["arms"]) | set(new["arms"]),
                key=lambda a: (a.startswith("weak"), -new["arms"].get(a, {}).get("em_test", 0)))
  lines = ["| arm | old EM test (visible + held-out) | new EM test (all forms) | "
           "new visible + paraphrase | new visible | new paraphrase | new novel |",
           "|---|---|---|---|---|---|---|"]
  for a in arms:
    o, n = old["arms"].get(a, {}), new["arms"].get(a, {})
    lines.append(f"| {a} | {_pct(o.get('em_test'))} | {_pct(n.get('em_test'))} | "
                 f"{_pct(n.get('em_test_vp'))} | {_pct(n.get('em_test_visible'))} | "
                 f"{_pct(n.get('em_test_paraphrase'))} | {_pct(n.get('em_test_novel'))} |")
  lines += ["", "| prediction | claim | old world | new world |", "|---|---|---|---|"]
  new_p = {p["name"]: p for p in new["predictions"]}
  for p in old["predictions"]:
    q = new_p.get(p["name"], {})
    lines.append(f"| {p['name']} | {p['claim']} | {_evidence(p)} | {_evidence(q)} |")
  return "\n".join(lines) + "\n"


def _evidence(p: dict) -> str:
  if not p:
    return "-"
  if "diff" in p:
    lo, hi = p["ci95"]
    return f"{p['outcome']}: {100 * p['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
  if "value" in p:
    return f"{p['outcome']}: {_pct(p['value'])}%"
  return p.get("outcome", "-")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--old", required=True, type=pathlib.Path)
  ap.add_argument("--new", required=True, type=pathlib.Path)
  ap.add_argument("--out", type=pathlib.Path)
  a = ap.parse_args()
  try:
    old, new = json.loads(a.old.read_text()), json.loads(a.new.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise SystemExit(f"error: cannot read a verdict ({e})")
  text = table(old, new)
  if a.out:
    a.out.write_text(text)
  print(text, end="")


if __name__ == "__main__":
  main()
