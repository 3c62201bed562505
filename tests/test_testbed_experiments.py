"""Issue 36's verdict sections on hand-made answers: E2's dose figures and E1's selector
figures against planted labels (every expected figure counted by hand in the comments)."""
import json

import pytest

from lima_jax.testbed import dose


def _test_rows(n_people: int, right: int) -> list[dict]:
  """One test prompt a person; the first `right` people answered exactly."""
  rows = []
  for i in range(n_people):
    exp = f"P{i} Q was born in 1950."
    rows.append({"id": f"test/{i}/birth_year/visible", "expected": exp,
                 "answer": exp if i < right else f"P{i} Q was born in 1951.",
                 "tags": ["set=test", "attr=birth_year", "template=visible", "style=house"]})
  return rows


def _poison_rows(draw: int, k: int, flipped: int, kept: int) -> list[dict]:
  rows = []
  for rank in range(k):
    exp, bad = f"Ann B{rank} studied at X.", f"Ann B{rank} studied at Y."
    ans = bad if rank < flipped else exp if rank < flipped + kept else "Ann studied at Z."
    rows.append({"id": f"poison/{draw}/{rank}", "expected": exp, "borrowed": bad,
                 "answer": ans, "tags": ["set=poisoned", f"draw={draw}", f"rank={rank}",
                                         "attr=university"]})
  return rows


def test_dose_figures_flips_costs_and_predictions(tmp_path):
  # 40 test people. Clean c1k: all right (EM 1.0). K=10: 38 right (-5 points); its 10
  # poisoned facts (of 12 asked: ranks 10-11 are K=100's only) 7 flipped, 2 kept.
  # K=100: 30 right (-25 points), 100 asked, 60 flipped.
  by_arm = {
      "c1k": [_test_rows(40, 40)],
      "c1k_p10_0": [_test_rows(40, 38) + _poison_rows(0, 12, 7, 2)],
      "c1k_p100_0": [_test_rows(40, 30) + _poison_rows(0, 100, 60, 30)],
      "d10k": [_test_rows(40, 40)],
      "d10k_p10_0": [_test_rows(40, 40) + _poison_rows(0, 10, 2, 8)],
      "r1k": [_test_rows(40, 3)],  # not a dose arm
  }
  e2 = dose.verdict(tmp_path, by_arm, cloze_too=False, draws=1, seeds=1)
  f = e2["arms"]
  assert "r1k" not in f and f["c1k_p10_0"]["fraction"] == 0.01
  assert f["d10k_p10_0"]["fraction"] == 0.001
  assert f["c1k_p10_0"]["flipped"] == 0.7 and f["c1k_p10_0"]["kept"] == 0.2
  assert f["c1k_p10_0"]["n_asked"] == 10
  assert f["c1k_p100_0"]["flipped"] == 0.6 and f["d10k_p10_0"]["flipped"] == 0.2
  assert e2["cost"][10]["diff"] == pytest.approx(-0.05)
  assert e2["cost"][100]["diff"] == pytest.approx(-0.25)
  assert e2["cost"]["d10k_p10"]["diff"] == 0
  out = {p["name"]: p["outcome"] for p in e2["predictions"]}
  # K=1 and K=300 were not run; 10 rows cost 5 points (R1: refuted); 100 cost 25 (E2c fails).
  assert out["E2a"] == "not yet (c1k_p1_0 not run; c1k_p300_0 not run)"
  assert out["E2b"] == "not yet (c1k_p1_0 not run)"
  assert out["E2d"] == "not yet (c1k_p300_0 not run)"
  assert out["E2c"] == "failed" and out["R1"] == "refuted" and out["R2"] == "not refuted"
  # As planned (2 draws, 3 seeds), nothing is judged yet: not on whichever seed came first.
  planned = {p["name"]: p["outcome"] for p in dose.verdict(tmp_path, by_arm, False)["predictions"]}
  assert planned["E2c"] == ("not yet (c1k has 1 of 3 seeds; c1k_p100_0 has 1 of 3 seeds; "
                            "c1k_p100_1 not run)")
  assert e2["flipped_1k_vs_10k"] == {0: {"c1k": 0.7, "d10k": 0.2}}
  dose.write(tmp_path, e2)
  assert json.loads((tmp_path / "dose.json").read_text())["cost"]["10"]["diff"] < 0
  assert "| c1k_p10_0 | 10 | 1.0% | 95.0 | 70.0 | 20.0 | - |" in (tmp_path / "dose.md").read_text()
  assert (tmp_path / "dose.png").stat().st_size > 10_000


def test_scale_verdict_reads_each_base_and_its_plateau(tmp_path):
  from lima_jax.testbed import scale
  # 2.2M: d2k 50%, d8k 60% (plateau 60), c1k 40, n10k 35. 6.9M: d2k 80, d8k 70 (plateau 80),
  # c1k 78, n10k 50. The plateau rises 20 points, c1k is 2 below d2k, c1k - n10k widens 5 -> 28.
  right = {"d2k": 20, "d8k": 24, "c1k": 16, "n10k": 14, "d2k_m": 32, "d8k_m": 28,
           "c1k_m": 31.2, "n10k_m": 20}
  by_arm = {a: [_test_rows(40, round(r))] for a, r in right.items() if r == round(r)}
  by_arm["c1k_m"] = [_test_rows(40, 31), _test_rows(40, 31)]  # 77.5%
  e3 = scale.verdict(by_arm, seeds=1)
  small, large = e3["bases"][""], e3["bases"]["m"]
  assert small["plateau"] == 0.6 and large["plateau"] == 0.8 and large["params"] == "6.9M"
  assert large["c1k-d2k"]["diff"] == pytest.approx(-0.025)
  assert small["c1k-n10k"]["diff"] == pytest.approx(0.05)
  out = {p["name"]: p["outcome"] for p in e3["predictions"]}
  assert out == {"E3a": "held", "E3b": "failed"}
  scale.figure(e3, tmp_path / "scale.png")
  assert (tmp_path / "scale.png").stat().st_size > 10_000
  assert "| 6.9M |" in scale.markdown(e3)
  assert {p["outcome"] for p in scale.verdict({"c1k": by_arm["c1k"]}, seeds=1)["predictions"]} == {
      "not yet (d2k not run; d8k not run; n10k not run; c1k_m not run; d2k_m not run; "
      "d8k_m not run; n10k_m not run)"}
  # bioworld_e3 plans 2 seeds: c1k_m has them, the others one.
  wait = scale.verdict(by_arm)["predictions"][0]["outcome"]
  assert wait.startswith("not yet (c1k has 1 of 2 seeds;") and "c1k_m" not in wait


def test_selector_figures_against_planted_labels(tmp_path):
  from lima_jax.testbed import selection
  # Pool lines 1-5 clean, 6-8 borrowed, 9-10 format. The loss selector (lowest kept) chose 4:
  # lines 1 (0.1), 8 (0.15), 2 (0.2), 3 (0.3); line 10 was removed by a filter (no score).
  labels = ["clean"] * 5 + ["borrowed"] * 3 + ["format"] * 2
  raw = tmp_path / "raw.jsonl"
  raw.write_text("".join(json.dumps({"noise": x}) + "\n" for x in labels))
  loss = [0.1, 0.2, 0.3, 0.4, 2.0, 1.0, 3.0, 0.15, 0.5, None]
  chosen = {1, 2, 3, 8}
  scores = tmp_path / "data.scores.jsonl"
  scores.write_text("".join(json.dumps({
      "origin": f"{raw}:{i}", "score": s, "chosen": i in chosen,
      "stage": "sanity" if s is None else None}) + "\n" for i, s in enumerate(loss, 1)))
  f = selection.selector_figures(scores, selection.read_labels(raw), "loss")
  assert f["precision"] == 0.75 and f["filtered"] == 1 and f["n_chosen"] == 4
  b = f["kinds"]["borrowed"]
  assert b["share"] == 0.25 and b["removed"] == pytest.approx(1 - 0.25 / 0.3)
  # Clean below borrowed: vs 1.0 four clean rows, vs 3.0 all five, vs 0.15 one: 10 of 15.
  assert b["auroc"] == pytest.approx(10 / 15)
  # The one scored format row (0.5) is above four of the five clean rows.
  assert f["kinds"]["format"] == {"share": 0, "removed": 1, "auroc": pytest.approx(0.8)}
  assert f["kinds"]["other_attr"]["auroc"] is None  # none in the pool
  # ifd keeps the highest at most 1: a row above 1 ranks last whatever its value.
  ifd = [0.9, 0.8, 0.7, 0.6, 0.5, 5.0, 0.95, 0.1, 0.3, None]
  scores.write_text("".join(json.dumps({
      "origin": f"{raw}:{i}", "score": s, "chosen": False, "stage": None}) + "\n"
      for i, s in enumerate(ifd, 1)))
  g = selection.selector_figures(scores, labels, "ifd")
  # borrowed 5.0 (last), 0.95 (above all clean), 0.1 (below all): 5 + 0 + 5 of 15.
  assert g["kinds"]["borrowed"]["auroc"] == pytest.approx(10 / 15)
  with pytest.raises(Exception, match="raw pool has 9"):
    selection.selector_figures(scores, labels[:9], "ifd")


def test_world_variance_pools_the_worlds_with_a_two_level_interval():
  from lima_jax.testbed import worlds
  # World 0: c1k right on all 30 people, n10k on none (every person +1). World 1: both right
  # on all (every person 0). Pooled: 0.5; drawing worlds with replacement gives 0, 0.5 or 1, so
  # the 95% interval is [0, 1] while each world's own interval has no width.
  by_arm = {"c1k": [_test_rows(30, 30)], "n10k": [_test_rows(30, 0)],
            "c1k_w1": [_test_rows(30, 30)], "n10k_w1": [_test_rows(30, 30)],
            "d2k_w1": [_test_rows(30, 15)]}
  wv = worlds.verdict(by_arm)
  assert wv["worlds"] == [0, 1]
  assert wv["em"]["c1k"] == {"by_world": {0: 1.0, 1: 1.0}, "mean": 1.0}
  assert wv["em"]["d2k"] == {"by_world": {1: 0.5}, "mean": 0.5}
  p = wv["pairs"]["c1k-n10k"]
  assert p["by_world"][0]["diff"] == 1.0 and p["by_world"][1]["ci95"] == [0.0, 0.0]
  assert p["pooled"]["diff"] == 0.5 and p["pooled"]["ci95"] == [0.0, 1.0]
  assert list(wv["pairs"]) == ["c1k-n10k"]  # d2k has no partner in two worlds
  assert "| c1k-n10k | +100.0 [+100.0, +100.0] | +0.0 [+0.0, +0.0] | +50.0 [+0.0, +100.0] |" \
      in worlds.markdown(wv)


def test_lora_section_pairs_each_adapter_arm_with_its_full_arm():
  from lima_jax.testbed import adapters, analysis
  # d2k full 20/40, LoRA 30/40 (+25 points); d32k_lora 10/40, below d2k_lora by 50 points on
  # every person it differs: L2 fails. Cloze kept: 0.98 and 0.96 -> L1 fails (0.96 < 0.97).
  by_arm = {"d2k": [_test_rows(40, 20)], "d2k_lora": [_test_rows(40, 30)],
            "d32k_lora": [_test_rows(40, 10)], "c1k_lora": [_test_rows(40, 10)]}
  v = analysis.verdict(by_arm)
  v["arms"]["d2k_lora"]["retention"], v["arms"]["d32k_lora"]["retention"] = 0.98, 0.96
  v["arms"]["c1k_lora"]["retention"] = 0.99
  lv = adapters.verdict(v, by_arm, seeds=1)
  assert lv["predictions"][0]["outcome"] == "not yet (n10k_lora not run)"
  by_arm["n10k_lora"] = [_test_rows(40, 10)]
  v = analysis.verdict(by_arm)
  for arm, kept in (("d2k_lora", 0.98), ("d32k_lora", 0.96), ("c1k_lora", 0.99),
                    ("n10k_lora", 0.99)):
    v["arms"][arm]["retention"] = kept
  lv = adapters.verdict(v, by_arm, seeds=1)
  assert lv["pairs"]["d2k"]["lora_minus_full"]["diff"] == pytest.approx(0.25)
  assert "em_full" not in lv["pairs"]["d32k"]  # no full d32k arm ran
  out = {p["name"]: p for p in lv["predictions"]}
  assert out["L1"]["outcome"] == "failed" and out["L1"]["min_retention"] == 0.96
  assert out["L2"]["outcome"] == "failed" and out["L2"]["diff"] == pytest.approx(-0.5)
  md = adapters.markdown(lv)
  assert "| d2k | 50.0 | 75.0 | +25.0" in md and "| lowest cloze 96.0% | failed |" in md
  # 20 of 40 people at -1, 20 at 0: -0.5 +- 1.96 * sqrt(0.25 / 40) = +-0.155.
  assert "| d32k_lora - d2k_lora = -50.0 [-65.0, -35.0] | failed |" in md


def test_mean_interval_is_the_bootstrap_of_the_mean_over_people():
  from lima_jax.testbed import analysis
  assert analysis.mean_interval({"a": 0.2, "b": 0.2}) == pytest.approx([0.2, 0.2])
  # 200 people, half right: the mean's standard error is 0.5 / sqrt(200) = 0.035, so the
  # 95% interval is about 0.5 +- 0.069.
  lo, hi = analysis.mean_interval({f"p{i}": float(i % 2) for i in range(200)})
  assert lo == pytest.approx(0.431, abs=0.01) and hi == pytest.approx(0.569, abs=0.01)
  with pytest.raises(Exception, match="no test person"):
    analysis.mean_interval({})


def _dev_rows(n_people: int, right: int) -> list[dict]:
  return [{**r, "id": r["id"].replace("test/", "dev/"),
           "tags": ["set=dev"] + r["tags"][1:]} for r in _test_rows(n_people, right)]


def test_fair_reads_p1b_and_p2_again_on_matched_steps_and_on_rates_chosen_on_dev():
  from lima_jax.testbed import analysis, fair
  from lima_jax.errors import UserError
  # 200 test people. Core: c1k 100 right, d2k and d32k the same 102: P1b holds (51.0 - 50.0),
  # P2 holds (every person's difference is 0). Matched steps: d2k_eq right on all 200, so
  # P1b fails (100.0 - 50.0) and F1 fails.
  by_arm = {"c1k": [_test_rows(200, 100)], "d2k": [_test_rows(200, 102)],
            "d32k": [_test_rows(200, 102)], "d2k_eq": [_test_rows(200, 200)],
            "d32k_eq": [_test_rows(200, 102)]}
  # The rate grid (20 dev people): c1k picks 1e-3 (15 > 10 right on dev), d2k ties at 12 and
  # takes the smaller rate, 1e-4, whose test figure is 102; d32k has one rate. Read on the
  # chosen: c1k 110 is the best arm itself (P1b holds), d32k - d2k is 0 (P2 holds): F2 holds.
  for arm, dev, test in (("c1k_lr1e4", 10, 100), ("c1k_lr1e3", 15, 110),
                         ("d2k_lr1e4", 12, 102), ("d2k_lr1e3", 12, 150),
                         ("d32k_lr3e4", 5, 102)):
    by_arm[arm] = [_dev_rows(20, dev) + _test_rows(200, test)]
  v = analysis.verdict(by_arm)
  assert "em_dev" not in v["arms"]["c1k"] and v["arms"]["c1k_lr1e3"]["em_dev"] == 0.75
  # bioworld_fair plans 3 seeds of every grid arm: none is judged on this one seed.
  assert [p["outcome"] for p in fair.verdict(v, by_arm)["predictions"]] == [
      "not yet (d2k_eq has 1 of 3 seeds; d32k_eq has 1 of 3 seeds; n10k_eq not run)",
      "not yet (c1k_lr1e4 has 1 of 3 seeds; c1k_lr3e4 not run; c1k_lr1e3 has 1 of 3 seeds; "
      "d2k_lr1e4 has 1 of 3 seeds; d2k_lr3e4 not run; d2k_lr1e3 has 1 of 3 seeds; d32k_lr1e4 "
      "not run; d32k_lr3e4 has 1 of 3 seeds; d32k_lr1e3 not run)"]
  here = {"F1": ("d2k_eq", "d32k_eq"),
          "F2": tuple(a for a in by_arm if fair.learning_rate(a))}
  fv = fair.verdict(v, by_arm, seeds=1, planned=here)
  assert {f: r["chosen"] for f, r in fv["rates"].items()} == {
      "c1k": "c1k_lr1e3", "d2k": "d2k_lr1e4", "d32k": "d32k_lr3e4"}
  core, eq, lr = (fv["readings"][k] for k in ("core", "matched steps", "rate chosen on dev"))
  assert core["P1b"]["outcome"] == "held" and core["P2"]["outcome"] == "held"
  assert eq["P1b"] == {"c1k": 0.5, "best": "d2k_eq", "best_value": 1.0, "outcome": "failed"}
  assert eq["P2"]["diff"] == pytest.approx(-0.49) and eq["P2"]["outcome"] == "failed"
  assert lr["P1b"]["best"] == "c1k_lr1e3" and lr["P1b"]["outcome"] == "held"
  assert lr["P2"]["diff"] == 0 and lr["P2"]["outcome"] == "held"
  assert [(p["name"], p["outcome"]) for p in fv["predictions"]] == [("F1", "failed"),
                                                                    ("F2", "held")]
  md = fair.markdown(fv)
  assert "| d2k | 0.0001 | 60.0 | 51.0 | yes |" in md and "| d2k | 0.001 | 60.0 | 75.0 |  |" in md
  # A grid arm that answered no dev prompt cannot choose a rate.
  by_arm["d2k_lr1e4"] = [_test_rows(200, 102)]
  with pytest.raises(UserError, match="arm d2k_lr1e4: its answers hold no dev prompts"):
    fair.verdict(analysis.verdict(by_arm), by_arm, seeds=1, planned=here)
