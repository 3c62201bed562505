"""Smoke tests of the benchmark scripts at a minute size: they run, and what they write is sound.

No timing is asserted (the figures depend on the machine); the checks are on what must hold
whatever the machine: both sides trained the same model on the same batch, and the JSON
carries the figures, the machine and the command.
"""
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(script, *args):
  return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                        capture_output=True, text=True, timeout=600, cwd=REPO)


def test_train_throughput_both_sides_train_the_same_model(tmp_path):
  out = tmp_path / "tt.json"
  proc = _run("train_throughput.py", "--impl=both", "--size=tiny", "--batch=8", "--seq=32",
              "--steps=2", "--warmup=1", "--rounds=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  (round_,) = result["rounds"]
  jax_r, torch_r = round_["jax"], round_["torch"]
  # Same architecture on both sides, on the same platform: transformers' Llama built from our
  # config, run where lima_jax ran.
  assert jax_r["n_params"] == torch_r["n_params"]
  assert torch_r["platform"] == jax_r["platform"] == "cpu"
  for r in (jax_r, torch_r):
    assert len(r["step_s"]) == 2 and all(t > 0 for t in r["step_s"])
    # A freshly initialised model on random tokens: loss near ln(vocab) = ln(256) ~ 5.5.
    assert abs(r["loss"] - math.log(256)) < 1.5, r["loss"]
    assert 0.45 < r["assistant_fraction"] < 0.75
    assert r["tokens_per_s"] > r["loss_tokens_per_s"] > 0
  ratio = result["summary"]["jax_over_torch"]["median"]
  assert math.isclose(ratio, jax_r["tokens_per_s"] / torch_r["tokens_per_s"])
  assert result["machine"]["cores"] >= 1 and result["machine"]["versions"]["jax"]
  assert "train_throughput.py" in result["command"]


def test_train_throughput_testbed_shape_fills_unset_flags(tmp_path):
  """--shape=testbed times the bioworld pretraining step (size 'bioworld', every token in the
  loss); a flag given on the command line (here the batch and length) wins over the shape's."""
  out = tmp_path / "tt.json"
  proc = _run("train_throughput.py", "--shape=testbed", "--impl=both", "--batch=8", "--seq=32",
              "--steps=1", "--warmup=0", "--rounds=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  settings = result["settings"]
  assert (settings["size"], settings["batch"], settings["seq"]) == ("bioworld", 8, 32)
  assert settings["assistant_fraction"] == 1.0
  (round_,) = result["rounds"]
  jax_r, torch_r = round_["jax"], round_["torch"]
  from lima_jax import model
  bioworld = model.get_size("bioworld")
  assert jax_r["n_params"] == torch_r["n_params"] == model.param_count(bioworld)
  for r in (jax_r, torch_r):
    assert r["assistant_fraction"] == 1.0 and r["tokens_per_s"] == r["loss_tokens_per_s"]
    assert abs(r["loss"] - math.log(1024)) < 1.5, r["loss"]
    assert r["page_faults_per_step"] >= 0
    # Both sides start on huge pages (--huge_pages, the default), as the study runner's steps.
    assert r["glibc_tunables"].split(":")[-1] == "glibc.malloc.hugetlb=1"
  assert settings["huge_pages"] is True


def test_train_throughput_attention_free_ceiling_and_matmul_floor(tmp_path):
  """--attention_free times a third worker whose attention is a stand-in (a different loss, the
  same parameters) in the round; every round gets the matmul floor: the weight matmuls' FLOPs
  at the best single-matmul rate any of its workers measured on the step's shapes."""
  out = tmp_path / "tt.json"
  proc = _run("train_throughput.py", "--impl=both", "--size=tiny", "--batch=8", "--seq=32",
              "--steps=1", "--warmup=1", "--rounds=1", "--attention_free", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  (round_,) = result["rounds"]
  assert list(round_) == ["jax", "jax_attention_free", "torch", "matmul_floor"]
  jax_r, free_r, torch_r = round_["jax"], round_["jax_attention_free"], round_["torch"]
  assert free_r["n_params"] == jax_r["n_params"] == torch_r["n_params"]
  assert abs(free_r["loss"] - jax_r["loss"]) > 1e-4  # attention really was replaced
  # tiny: dim 64, 4 query heads and 2 kv heads of 16, MLP 128, vocab 256; 8 x 32 tokens.
  shapes = {"256x64x64", "256x64x32", "256x64x128", "256x128x64", "256x64x256"}
  for r in (jax_r, free_r, torch_r):
    assert set(r["gemm_gflops"]) == shapes and min(r["gemm_gflops"].values()) > 0
  floor = round_["matmul_floor"]
  best = max(v for r in (jax_r, free_r, torch_r) for v in r["gemm_gflops"].values())
  assert floor["best_gemm_gflops"] == best
  n = jax_r["n_params"] - 256 * 64  # the untied embedding is a lookup, not a matmul
  assert math.isclose(floor["gflop_per_step"], 6 * n * 8 * 32 / 1e9)
  assert math.isclose(floor["step_time_s"], floor["gflop_per_step"] / best)
  s = result["summary"]
  assert math.isclose(s["jax_attention_free_over_jax"]["median"],
                      free_r["tokens_per_s"] / jax_r["tokens_per_s"])
  assert math.isclose(s["jax_attention_free_over_torch"]["median"],
                      free_r["tokens_per_s"] / torch_r["tokens_per_s"])
  assert math.isclose(s["matmul_floor_over_torch"]["median"],
                      torch_r["step_time_s"] / floor["step_time_s"])


def test_profile_step_accounts_for_every_matmul_flop(tmp_path):
  """The per-class breakdown finds every matmul of the step in the trace: the projections' and
  head's FLOPs are 6 N B T (the loss on every token, one loss chunk), and attention's are 7
  T x T products per head and layer (one block at T = 32: scores and output forward; scores,
  dv, dp, dq and dk backward)."""
  out = tmp_path / "profile.json"
  proc = _run("profile_step.py", "--size=tiny", "--batch=8", "--seq=32",
              "--assistant_fraction=1", "--warmup=1", "--trace_steps=2", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  classes = result["breakdown"]["classes"]
  n = 64 * 256 + 2 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128)  # head, 2 layers' projections
  matmul = classes["weight matmuls"]["gflop"] + classes["head matmuls"]["gflop"]
  assert math.isclose(matmul, 6 * n * 8 * 32 / 1e9, rel_tol=1e-9)
  attention = 2 * 7 * (2 * 8 * 4 * 32 * 32 * 16)  # layers x dots x (2 B H T T K)
  assert math.isclose(classes["attention matmuls"]["gflop"], attention / 1e9, rel_tol=1e-9)
  assert math.isclose(sum(c["share_of_op_time"] for c in classes.values()), 1.0)
  assert all(c["ms"] > 0 for c in classes.values())
  assert result["load_1m_before"] >= 0 and "profile_step.py" in result["command"]


def test_ab_step_pairs_each_variant_with_the_first(tmp_path):
  out = tmp_path / "ab.json"
  proc = _run("ab_step.py", "--size=tiny", "--batch=8", "--seq=32", "--warmup=1", "--cycles=3",
              "--variants=plain:;no_remat:remat_policy=none", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert list(result["variants"]) == ["plain", "no_remat"]
  plain, other = result["variants"]["plain"], result["variants"]["no_remat"]
  assert plain["wall_ratio"] == plain["cpu_ratio"] == {"median": 1.0, "q1": 1.0, "q3": 1.0}
  assert other["flags"] == {"remat_policy": "none"} and other["wall_ms"] > 0
  bad = _run("ab_step.py", "--size=tiny", "--variants=a:;b:dim=3", f"--out={out}")
  assert bad.returncode != 0 and "--variants" in bad.stderr.strip().splitlines()[-1]


def test_train_throughput_rejects_bad_flag_in_one_line(tmp_path):
  out = tmp_path / "tt.json"
  proc = _run("train_throughput.py", "--assistant_fraction=1.5", f"--out={out}")
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines() == [
      "error: --assistant_fraction=1.5: must be in (0, 1]"]
  assert not out.exists()


def test_train_throughput_torch_worker_refuses_a_platform_it_lacks(tmp_path):
  """Told that lima_jax ran on a GPU, a CPU-only torch stops in one line instead of timing the
  model on the host (which would make the ratio meaningless)."""
  import torch
  if torch.cuda.is_available():
    pytest.skip("torch has CUDA here, so the GPU side-by-side is possible")
  out = tmp_path / "worker.json"
  proc = _run("train_throughput.py", "--impl=torch", "--size=tiny", "--seq=16", "--batch=2",
              f"--worker_out={out}", "--worker_platform=gpu")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: lima_jax ran on a GPU but torch ") and "--impl=jax" in last
  assert not out.exists()


def test_train_throughput_stops_after_a_failed_round(tmp_path):
  """A worker's failure is reported in one line and not repeated for every round."""
  out = tmp_path / "tt.json"
  proc = _run("train_throughput.py", "--impl=jax", "--size=tiny", "--batch=8", "--seq=32",
              "--rounds=3", "--attention=cudnn", f"--out={out}")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: 1 worker(s) failed; first: jax: exit 1: error: ") and (
      "attention_impl='cudnn'" in last), last
  result = json.loads(out.read_text())
  assert len(result["rounds"]) == 1 and "error" in result["rounds"][0]["jax"]


def test_compile_time_writes_a_table_per_depth_and_mode(tmp_path):
  out = tmp_path / "ct.json"
  proc = _run("compile_time.py", "--layers=1,3", "--modes=scan,unrolled", "--size=tiny",
              "--dim=0", "--seq=16", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  rows = {(r["layers"], r["mode"]): r for r in result["table"]}
  assert set(rows) == {(1, "scan"), (3, "scan"), (1, "unrolled"), (3, "unrolled")}
  for r in rows.values():
    assert r["total_s"] >= r["compile_s"] > 0
  assert math.isclose(result["ratios"]["scan_3_over_1"],
                      rows[3, "scan"]["total_s"] / rows[1, "scan"]["total_s"])
  assert result["model"]["dim"] == 64  # 'tiny' with --dim=0 keeps its own width.


def test_readme_benchmark_tables_are_the_committed_results():
  """The README's performance tables are rendered from benchmarks/results/, never typed."""
  proc = _run("report.py", "--check")
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_report_check_fails_on_a_stale_readme(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text("intro\n<!-- benchmarks:begin -->\n| made up | 9999 |\n"
                    "<!-- benchmarks:end -->\n")
  proc = _run("report.py", "--check", f"--readme={readme}")
  assert proc.returncode == 1
  assert "differ from benchmarks/results/" in proc.stderr.strip().splitlines()[-1]
  assert _run("report.py", f"--readme={readme}").returncode == 0
  assert "9999" not in readme.read_text() and _run(
      "report.py", "--check", f"--readme={readme}").returncode == 0


def test_report_names_the_accelerator_and_its_mfu(tmp_path):
  """A GPU run's table names the device lima_jax ran on and the MFU, not only the host CPU."""
  result = json.loads((REPO / "benchmarks/results/train_throughput_xeon.json").read_text())
  for round_ in result["rounds"]:
    round_["jax"].update(platform="gpu", device_kind="NVIDIA H100 80GB HBM3")
  spread = {"median": 0.512, "min": 0.5, "max": 0.52, "n": 5}
  result["summary"]["jax"]["mfu"], result["summary"]["torch"]["mfu"] = spread, None
  results = tmp_path / "results"
  results.mkdir()
  (results / "train_throughput.json").write_text(json.dumps(result))
  readme = tmp_path / "README.md"
  readme.write_text("<!-- benchmarks:begin -->\n<!-- benchmarks:end -->\n")
  assert _run("report.py", f"--readme={readme}", f"--results={results}").returncode == 0
  (machine,) = [l for l in readme.read_text().splitlines() if l.startswith("Machine: ")]
  assert machine.startswith(f"Machine: NVIDIA H100 80GB HBM3 (host {result['machine']['cpu']})")
  assert "MFU 51.2% (lima_jax)." in machine and "(torch)" not in machine


def test_bioworld_compare_and_study_record(tmp_path):
  # Two verdicts: the old world's held-out forms are the new world's paraphrase forms.
  old = {"arms": {"c1k": {"em_test": 0.46}}, "predictions": [
      {"name": "P3", "claim": "c", "diff": 0.053, "ci95": [0.031, 0.074], "outcome": "held"}]}
  new = {"arms": {"c1k": {"em_test": 0.4, "em_test_vp": 0.45, "em_test_visible": 0.6,
                          "em_test_paraphrase": 0.3, "em_test_novel": 0.3},
                  "d2k": {"em_test": 0.5}},
         "predictions": [{"name": "P3", "claim": "c", "diff": -0.01, "ci95": [-0.03, 0.01],
                          "outcome": "failed"}]}
  (tmp_path / "old.json").write_text(json.dumps(old))
  (tmp_path / "new.json").write_text(json.dumps(new))
  r = subprocess.run([sys.executable, "benchmarks/bioworld_compare.py",
                      f"--old={tmp_path / 'old.json'}", f"--new={tmp_path / 'new.json'}"],
                     cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert lines[2] == "| d2k | - | 50.0 | - | - | - | - |"
  assert lines[3] == "| c1k | 46.0 | 40.0 | 45.0 | 60.0 | 30.0 | 30.0 |"
  assert "| P3 | c | held: +5.3 [+3.1, +7.4] | failed: -1.0 [-3.0, +1.0] |" in r.stdout
  # study_record: the report files, the world's hashes and every step's wall time.
  study = tmp_path / "study"
  (study / "report").mkdir(parents=True)
  (study / "report" / "bioworld.md").write_text("table\n")
  (study / "prepare" / "world").mkdir(parents=True)
  (study / "prepare" / "world" / "hashes.json").write_text('{"a": "b"}')
  (study / "manifest.json").write_text(json.dumps({"steps": {
      "c1k/seed0/train": {"kind": "train", "seconds": 40.5, "status": "done"},
      "c1k/seed0/e16/answer": {"kind": "answer", "seconds": 20.0, "status": "done"}}}))
  out = tmp_path / "results"
  r = subprocess.run([sys.executable, "benchmarks/study_record.py", f"--study={study}",
                      f"--out={out}", "--command=python -m x"], cwd=REPO, capture_output=True,
                     text=True)
  assert r.returncode == 0, r.stderr
  run = json.loads((out / "run.json").read_text())
  assert run["steps_wall_s"] == 60.5 and run["commands"] == ["python -m x"]
  assert (out / "bioworld.md").read_text() == "table\n"
  assert json.loads((out / "data_hashes.json").read_text()) == {"a": "b"}
  # --arms: that arm's steps and the prepare steps only; an arm the study lacks is refused.
  steps = json.loads((study / "manifest.json").read_text())["steps"]
  steps["c1k/seed0/train"]["arm"] = steps["c1k/seed0/e16/answer"]["arm"] = "c1k"
  steps["d2k/seed0/train"] = {"kind": "train", "seconds": 7.0, "status": "done", "arm": "d2k"}
  steps["prepare/world"] = {"kind": "prepare", "seconds": 3.0, "status": "done", "arm": ""}
  (study / "manifest.json").write_text(json.dumps({"steps": steps}))
  r = subprocess.run([sys.executable, "benchmarks/study_record.py", f"--study={study}",
                      f"--out={out}", "--arms=d2k"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  run = json.loads((out / "run.json").read_text())
  assert sorted(run["steps"]) == ["d2k/seed0/train", "prepare/world"]
  assert run["steps_wall_s"] == 10.0 and run["arms"] == ["d2k"]
  r = subprocess.run([sys.executable, "benchmarks/study_record.py", f"--study={study}",
                      f"--out={out}", "--arms=d2k,x9"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode != 0 and "--arms: x9 not in" in r.stderr
  r = subprocess.run([sys.executable, "benchmarks/study_record.py", f"--study={tmp_path}",
                      f"--out={out}"], cwd=REPO, capture_output=True, text=True)
  assert r.returncode != 0 and "manifest.json" in r.stderr
