"""The study runner: the tiny study end to end, killed and resumed; manifest, report and the
plan checked on their own (the Ray executor: test_experiment_ray.py)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lima_jax.errors import UserError
from tests.conftest import shared_file

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one CPU device a process


def cli(*args, timeout=900):
  return subprocess.run([sys.executable, "-m", "lima_jax.experiment", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def _table(workdir: pathlib.Path) -> list:
  rep = json.loads((workdir / "report" / "report.json").read_text())
  return [(r["arm"], r["protocol"], r["field"], r["value"], r["ci95"]) for r in rep["rows"]]


@pytest.mark.slow
def test_tiny_study_killed_in_its_second_arm_resumes_to_the_same_report(tmp_path):
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  r = cli("run", "--config=configs/experiments.py:tiny", f"--workdir={whole}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert cli("report", f"--workdir={whole}").returncode == 0
  steps = json.loads((whole / "manifest.json").read_text())["steps"]
  assert sorted(steps) == ["all/seed0/e2/answer", "all/seed0/train", "random100/curate",
                           "random100/seed0/e2/answer", "random100/seed0/e2/lima_pairwise",
                           "random100/seed0/train"]
  assert {s["status"] for s in steps.values()} == {"done"}

  proc = subprocess.Popen([sys.executable, "-m", "lima_jax.experiment", "run",
                           "--config=configs/experiments.py:tiny", f"--workdir={killed}"],
                          cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
  manifest = killed / "manifest.json"
  deadline = time.monotonic() + 600
  while time.monotonic() < deadline:  # kill once the second arm's training is under way
    if manifest.exists():
      rec = json.loads(manifest.read_text())["steps"].get("random100/seed0/train", {})
      if rec.get("status") == "running":
        time.sleep(4)
        break
    time.sleep(0.2)
  else:
    pytest.fail("the second arm never started training")
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  before = json.loads(manifest.read_text())["steps"]
  assert before["random100/seed0/train"]["status"] == "running"
  first_arm = {k: v for k, v in before.items() if k.startswith("all/")}
  assert {v["status"] for v in first_arm.values()} == {"done"}

  r = cli("run", "--config=configs/experiments.py:tiny", f"--workdir={killed}")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "random100/seed0/train: resuming" in r.stdout
  after = json.loads(manifest.read_text())["steps"]
  assert {k: v for k, v in after.items() if k.startswith("all/")} == first_arm  # untouched
  assert {v["status"] for v in after.values()} == {"done"} and sorted(after) == sorted(steps)
  assert cli("report", f"--workdir={killed}").returncode == 0
  assert _table(killed) == _table(whole)
  page = (killed / "report" / "index.html").read_text()
  assert "random100-all" in page and "data:image/png;base64," in page


def test_manifest_hashes_inputs_but_not_the_judge_url(tmp_path):
  from lima_jax.experiment import manifest
  data = tmp_path / "d.jsonl"
  data.write_text("a\n")
  m = manifest.Manifest(tmp_path)
  step = manifest.Step("x/train", "x", "train", ["python", "--a=1", "--config.judge.base_url=u1"],
                    tmp_path / "out", files=(str(data),))
  first = m.digest(step)
  step.command[-1] = "--config.judge.base_url=u2"
  assert m.digest(step) == first
  data.write_text("b\n")
  assert m.digest(step) != first
  assert m.state(step)[0] == "new"
  m.set("x/train", status="running", inputs_sha256=m.digest(step))
  assert manifest.Manifest(tmp_path).state(step)[0] == "resume"  # reread from disk
  m.set("x/train", status="done")
  assert m.state(step)[0] == "done"
  step.command[1] = "--a=2"
  assert m.state(step)[0] == "changed"


def test_a_step_another_study_made_with_other_inputs_is_one_line_not_an_overwrite(tmp_path):
  """Studies sharing a DIR share steps; one giving an arm other inputs (seen: E2's c1k asked
  its poisoned prompts, and each study redid the other's c1k answers on every run) stops."""
  from lima_jax.errors import UserError
  from lima_jax.experiment import local, manifest
  step = manifest.Step("c1k/seed0/e16/answer", "c1k", "answer",
                       ["python", "--config.prompts=prompts.jsonl"], tmp_path / "out")
  made = manifest.Manifest(tmp_path, "core")
  assert local.begin(step, made, tmp_path, "[arm 1/1]") is not None
  local.finish(step, made, 0, 1.0)
  (tmp_path / "out").mkdir()  # core's answers
  assert json.loads((tmp_path / "manifest.json").read_text())["steps"][step.key]["study"] == "core"
  # The same inputs from another study: its step, done.
  assert manifest.Manifest(tmp_path, "e2").state(step)[0] == "done"
  other = manifest.Step(step.key, "c1k", "answer", ["python", "--config.prompts=poison.jsonl"],
                        tmp_path / "out")
  assert manifest.Manifest(tmp_path, "core").state(other)[0] == "changed"  # its own edit
  with pytest.raises(UserError) as e:
    local.begin(other, manifest.Manifest(tmp_path, "e2"), tmp_path, "[arm 1/1]")
  assert str(e.value) == (
      "c1k/seed0/e16/answer: study core made this step with other inputs; its command differs "
      "in --config.prompts=poison.jsonl, --config.prompts=prompts.jsonl. Running it for e2 "
      "would overwrite core's result: give the arm another name in e2, or use another --workdir")
  assert (tmp_path / "out").is_dir() and not list(tmp_path.glob("out.stale-*"))  # untouched


def test_paired_difference_and_intervals_on_known_scores():
  from lima_jax.experiment import report
  rng = np.random.default_rng(0)
  a = {f"p{i}": 1.0 if i % 4 == 0 else 0.5 for i in range(40)}  # 10 wins, 30 ties
  b = {f"p{i}": 0.5 for i in range(40)}
  found = {("a", "lima_pairwise", 3): {0: ({}, a)}, ("b", "lima_pairwise", 3): {0: ({}, b)}}
  p = report.paired(found, "a", "b", "lima_pairwise", 3, 2000, rng)
  assert p["n_prompts"] == 40 and p["difference"] == pytest.approx(0.125)
  lo, hi = p["ci95"]
  # The bootstrap of a mean of 10 values 0.5 and 30 zeros: sd 0.5*sqrt(.25*.75/40).
  half = 1.96 * 0.5 * np.sqrt(0.25 * 0.75 / 40)
  assert lo == pytest.approx(0.125 - half, abs=0.02) and hi == pytest.approx(0.125 + half,
                                                                             abs=0.02)
  # The baseline arm has no pairwise scores of its own: against itself it ties.
  found.pop(("b", "lima_pairwise", 3))
  q = report.paired(found, "a", "b", "lima_pairwise", 3, 500, rng, baseline="b")
  assert q["difference"] == pytest.approx(0.125) and q["n_prompts"] == 40


def test_several_seeds_pool_their_values_and_draw_seeds_and_prompts():
  from lima_jax.experiment import report
  rng = np.random.default_rng(1)
  by_seed = {s: ({"mean": m, "stopped_rate": r}, {f"p{i}": m + (i % 3 - 1) for i in range(30)})
             for s, m, r in ((0, 3.0, 0.5), (1, 4.0, 0.7), (2, 5.0, 0.6))}
  f = report.figure(by_seed, "mean", 2000, rng)
  assert f["value"] == pytest.approx(4.0) and f["seeds"] == 3
  lo, hi = f["ci95"]
  assert 2.8 <= lo < 3.5 and 4.5 < hi <= 5.2  # the seeds dominate: each draw is ~3, 4 or 5
  g = report.figure(by_seed, "stopped_rate", 100, rng)
  assert g["value"] == pytest.approx(0.6) and g["ci95"] == [0.5, 0.7]  # the seeds' range


def test_dry_run_plans_the_shared_data_study_with_a_judging_estimate():
  for rel in ("lima/train.jsonl", "lima/test.jsonl", "instruct/alpaca_random_9k.json",
              "instruct/dolly_filtered_3k.json"):
    shared_file(rel)  # the study reads them from ../shared/data: skipped without (CI: failed)
  r = cli("run", "--config=configs/experiments.py:shared_data", "--workdir=/tmp/unused",
          "--dry_run", "--config.judge.model=gpt-4o")
  assert r.returncode == 0, r.stderr
  for arm in ("lima1k", "quality1k", "diverse1k", "longest1k", "random1k", "all12k"):
    assert f"arm {arm}:" in r.stdout
  assert "lima_jax.curate --config=configs/curate.py:quality" in r.stdout
  # 5 arms against lima1k, 300 prompts, both orders.
  assert "judging: 3,000 judge calls" in r.stdout and "gpt-4o's list price" in r.stdout
  assert not pathlib.Path("/tmp/unused/manifest.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--only=nope"], "--only: no arm 'nope'"),
    (["--config.baseline_arm=nope"], "config baseline_arm: 'nope' is not an arm"),
    (["--config.arms.random100.n=0"], "config arms.random100: curate='random' needs pool"),
    (["--config.arms.all.data={world}/sft.jsonl"],
     "config arms.all.data: unknown placeholder {world} in '{world}/sft.jsonl' (known here: "
     "{workdir})"),
    (["--config.arms.random100.overrides=('model.init={base}/x',)"],
     "config arms.random100.overrides[0]: unknown placeholder {base}"),
    (["--config.arms.all.model=/nope/ckpt"],
     "config arms.all.model: a model arm answers its checkpoint as it is, without training; "
     "drop its data (or the model, to train)"),
    (["--config.arms.all.model=/nope/ckpt", "--config.arms.all.data="],
     "config arms.all.model: /nope/ckpt does not exist"),
    (["--config.arms.random100.model=data/demo", "--config.arms.random100.curate=",
      "--config.arms.random100.pool=", "--config.arms.random100.n=0"],
     "config arms.random100.model: lima_pairwise would judge it against all, which trains"),
    # An arm's own prompts: filled and checked as the study's are, each error naming the arm.
    (["--config.arms.all.prompts={world}/eval/prompts.jsonl"],
     "config arms.all.prompts: unknown placeholder {world} in '{world}/eval/prompts.jsonl' "
     "(known here: {workdir})"),
    (["--config.arms.all.prompts=/nope/p.jsonl", "--config.protocols=('judge_free',)"],
     "config arms.all.prompts: /nope/p.jsonl: No such file or directory"),
    # lima_pairwise would judge random100 against all prompt by prompt: one prompts file.
    (["--config.arms.random100.prompts=data/demo/train.jsonl"],
     "config arms.random100.prompts: lima_pairwise would judge arm random100 (prompts "
     "data/demo/train.jsonl) against baseline_arm all (prompts data/demo/prompts.jsonl) prompt "
     "by prompt; give both the same prompts, or judge without a pairwise protocol"),
])
def test_bad_study_input_is_one_line(args, message, tmp_path):
  r = cli("run", "--config=configs/experiments.py:tiny", f"--workdir={tmp_path}", "--dry_run",
          *args)
  assert r.returncode == 1
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


def test_report_without_a_run_says_so(tmp_path):
  from lima_jax.experiment import report
  with pytest.raises(UserError, match="no manifest.json"):
    report.build(tmp_path)


def test_the_paper_study_says_how_to_make_a_missing_pool(tmp_path):
  pool = tmp_path / "se.jsonl"
  pool.write_text('{"conversations": ["Why?", "Because."]}\n')
  r = cli("run", "--config=configs/experiments.py:lima_paper_7b", f"--workdir={tmp_path}",
          "--dry_run", f"--config.pools.stackexchange={pool}")
  assert r.returncode == 1
  assert "arm se_filtered_32k:" in r.stdout  # the filtered arms take the given pool
  assert r.stderr.strip().splitlines() == [
      "error: config arms.se_unfiltered_2k.pool: not set; make it with python -m "
      "lima_jax.datasets.stackexchange --unfiltered ... --out=se_all.jsonl, then "
      "--config.pools.stackexchange_unfiltered=se_all.jsonl"]


def test_judging_estimate_counts_every_epoch_of_a_range(tmp_path):
  r = cli("run", "--config=configs/experiments.py:tiny", f"--workdir={tmp_path}", "--dry_run",
          "--config.epochs=1-2")
  assert r.returncode == 0, r.stderr
  # random100 against all: 20 prompts x 2 orders x epochs 1 and 2.
  assert "judging: 80 judge calls" in r.stdout


# --- Prepare steps ----------------------------------------------------------------------------

# A prepare step: writes {out}/sft.jsonl (a conversation saying the version) and counts its runs.
WRITE = ("import json, pathlib, sys; out, version, runs = sys.argv[1:4]; "
         "pathlib.Path(out, 'sft.jsonl').write_text(json.dumps({'conversations': "
         "['Which version?', version]}) + '\\n'); open(runs, 'a').write('run\\n')")


def _prep_study(tmp_path, version="v1", note=""):
  sys.path.insert(0, str(REPO))
  import ml_collections
  from configs import experiments
  c = experiments.get_config("tiny")
  c.protocols, c.baseline_arm, c.report.pairs = ("judge_free",), "", ()
  c.judge.scripted = False
  c.prepare.world = experiments._prep(
      command=("python", "-c", WRITE, "{out}", version, str(tmp_path / "runs.txt"),
               *([note] if note else ())))
  c.arms = ml_collections.ConfigDict()
  c.arms.a = experiments._arm(data="{world}/sft.jsonl", n_examples=1)
  return c


@pytest.fixture
def fake_training(monkeypatch):
  """Prepare steps run for real; a train step only records its command (answer and judge
  steps need checkpoints: none here)."""
  from lima_jax.experiment import study
  trained, real = [], subprocess.run

  def run(command, **kw):
    if "lima_jax.main" in command:
      trained.append(command)
      return subprocess.CompletedProcess(command, 0)
    return real(command, **kw)
  monkeypatch.setattr(subprocess, "run", run)
  monkeypatch.setattr(study, "after_training", lambda *args: [])
  return trained


def test_prepare_step_runs_once_and_a_changed_one_redoes_the_arm(tmp_path, fake_training,
                                                                  capsys):
  from lima_jax.experiment import local
  workdir, runs = tmp_path / "study", tmp_path / "runs.txt"
  world = workdir / "prepare" / "world"
  local.run_local(_prep_study(tmp_path), workdir, ["a"])
  assert runs.read_text() == "run\n" and len(fake_training) == 1
  assert f"--config.data.train_files={world}/sft.jsonl" in fake_training[0]
  assert json.loads((world / "sft.jsonl").read_text())["conversations"][1] == "v1"
  rec = json.loads((workdir / "manifest.json").read_text())["steps"]["prepare/world"]
  assert (rec["kind"], rec["status"], rec["output"], rec["arm"]) == ("prepare", "done",
                                                                     str(world), "")
  assert rec["command"][0] == sys.executable  # 'python' is the runner's interpreter
  assert (workdir / "logs" / "prepare__world.log").exists()

  local.run_local(_prep_study(tmp_path), workdir, ["a"])  # nothing changed: nothing runs
  assert runs.read_text() == "run\n" and len(fake_training) == 1
  assert "prepare/world: done" in capsys.readouterr().out

  # A new command whose output is the same file, byte for byte: the arm still follows the
  # prepare step, so it trains again (the hash of what it follows changed).
  local.run_local(_prep_study(tmp_path, note="--same-output"), workdir, ["a"])
  assert runs.read_text() == "run\n" * 2 and len(fake_training) == 2
  assert "inputs changed" in capsys.readouterr().out
  assert len(list((workdir / "prepare").glob("world.stale-*"))) == 1  # the old one, kept

  local.run_local(_prep_study(tmp_path, "v2", note="--same-output"), workdir, ["a"])
  assert runs.read_text() == "run\n" * 3 and len(fake_training) == 3
  assert json.loads((world / "sft.jsonl").read_text())["conversations"][1] == "v2"
  local.run_local(_prep_study(tmp_path, "v2", note="--same-output"), workdir, ["a"])
  assert runs.read_text() == "run\n" * 3 and len(fake_training) == 3


def test_a_docstring_comment_or_layout_edit_reruns_nothing_but_a_code_edit_does(
    tmp_path, fake_training):
  """A prepare step's Python source is identified by its syntax tree without docstrings too
  (source_sha256): docs-only edits keep the step and the arm after it done, while their byte
  hash is brought up to date; a manifest from before source_sha256, or from a Python whose
  trees print differently, still matches on bytes."""
  from lima_jax.experiment import local
  workdir, runs = tmp_path / "study", tmp_path / "runs.txt"
  source = tmp_path / "world.py"
  source.write_text('"""Builds the world."""\nSIZE = 3\n\n\ndef make():\n  """Makes it."""\n'
                    '  return SIZE * 2\n')
  c = _prep_study(tmp_path)
  c.prepare.world.files = (str(source),)
  manifest = lambda: json.loads((workdir / "manifest.json").read_text())["steps"]
  local.run_local(c, workdir, ["a"])
  assert runs.read_text() == "run\n" and len(fake_training) == 1
  first = manifest()

  source.write_text('"""Builds the world, now documented at length."""\nSIZE = 3  # people\n\n'
                    'def make():\n    """Makes it, twice the size."""\n    return (SIZE *\n'
                    '            2)\n')
  local.run_local(c, workdir, ["a"])
  assert runs.read_text() == "run\n" and len(fake_training) == 1  # nothing reran
  after_docs = manifest()
  for key in ("prepare/world", "a/seed0/train"):
    assert after_docs[key]["source_sha256"] == first[key]["source_sha256"]
    assert after_docs[key]["inputs_sha256"] != first[key]["inputs_sha256"]  # bytes: today's

  # Written before source_sha256 existed (or by a Python whose trees print otherwise): the
  # bytes still match, so nothing reruns and the source identity is filled in.
  old = manifest()
  for rec in old.values():
    rec["source_sha256"] = None if rec["kind"] == "prepare" else "from another python"
  (workdir / "manifest.json").write_text(json.dumps({"steps": old}))
  local.run_local(c, workdir, ["a"])
  assert runs.read_text() == "run\n" and len(fake_training) == 1
  assert manifest() == after_docs

  source.write_text(source.read_text().replace("SIZE = 3", "SIZE = 4"))  # the code changed
  local.run_local(c, workdir, ["a"])
  assert runs.read_text() == "run\n" * 2 and len(fake_training) == 2
  assert manifest()["prepare/world"]["source_sha256"] != first["prepare/world"]["source_sha256"]


def test_source_identity_keeps_code_strings_and_reads_unparsable_files_as_bytes(tmp_path):
  from lima_jax.experiment import manifest
  a, b = tmp_path / "a.py", tmp_path / "b.py"
  a.write_text('x = "a"\n')
  b.write_text('x = "b"\n')  # a string that is code, not a docstring
  assert (manifest._file_digests(str(a))["source_sha256"]
          != manifest._file_digests(str(b))["source_sha256"])
  a.write_text("def broken(:\n")
  broken = manifest._file_digests(str(a))
  assert broken["source_sha256"] == broken["inputs_sha256"]


def test_dry_run_says_which_done_steps_a_changed_prepare_step_will_redo(tmp_path, fake_training,
                                                                         capsys):
  """A done step whose recorded hash still matches today is redone when a prepare step it
  follows (directly or through another) changes: the plan says so instead of 'done'."""
  from configs import experiments
  from lima_jax.experiment import __main__ as experiment_cli, local, study
  workdir = tmp_path / "study"

  def plan(version):
    c = _prep_study(tmp_path, version)
    c.prepare.later = experiments._prep(command=("python", "-c", "pass", "{world}"))
    if version == "v1":
      local.run_local(c, workdir, ["a"])
    capsys.readouterr()
    experiment_cli._plan(c, workdir, ["a"], study.prepare_steps(c, workdir), False)
    return [line.split(None, 1) for line in capsys.readouterr().out.splitlines()[:5]]

  assert plan("v1") == [["prepare:"], ["prepare/world", "done"], ["prepare/later", "done"],
                        ["arm", "a:"], ["a/seed0/train", "done"]]
  assert plan("v2") == [["prepare:"], ["prepare/world", "changed"],
                        ["prepare/later", "done, redone after prepare/world"], ["arm", "a:"],
                        ["a/seed0/train", "done, redone after prepare/world"]]


def test_steps_start_on_huge_pages_keeping_the_callers_tunables(tmp_path, fake_training,
                                                                monkeypatch):
  """Every step's process gets glibc.malloc.hugetlb=1 (lima_jax/parallel/host_memory.py: XLA:CPU's
  per-step temporaries on 2 MiB pages), after the tunables the runner was started with."""
  from lima_jax.experiment import local
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=4")
  c = _prep_study(tmp_path)
  dump = "; open(out + '/env.txt', 'w').write(__import__('os').environ['GLIBC_TUNABLES'])"
  c.prepare.world.command = ("python", "-c", WRITE + dump, "{out}", "v1",
                             str(tmp_path / "runs.txt"))
  local.run_local(c, tmp_path / "study", ["a"])
  env = (tmp_path / "study" / "prepare" / "world" / "env.txt").read_text()
  assert env == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"


def test_placeholders_link_every_field_to_its_prepare_steps(tmp_path):
  from lima_jax.experiment import study
  sys.path.insert(0, str(REPO))
  from configs import experiments
  c = _prep_study(tmp_path)
  c.prepare.base = experiments._prep(command=("python", "-c", "pass", "--world={world}",
                                              "--workdir={out}", "{{literal}}"))
  c.prepare.other = experiments._prep(command=("true",), after=("world",))
  c.prepare.unused = experiments._prep(command=("true",))
  c.prompts = "{world}/eval/prompts.jsonl"
  c.arms.b = experiments._arm(data="data/demo/train.jsonl",
                              overrides=("model.init={base}/base",))
  c.arms.cur = experiments._arm(curate="random", pool="{other}/pool.jsonl", n=5,
                                overrides=("model.init={base}/base",))
  w = tmp_path / "w"
  steps = {s.key: s for s in study.prepare_steps(c, w)}
  assert steps["prepare/base"].command[-3:] == [f"--world={w}/prepare/world",
                                                f"--workdir={w}/prepare/base", "{literal}"]
  assert steps["prepare/base"].after == ("prepare/world",)
  assert steps["prepare/other"].after == ("prepare/world",)
  pending = set(steps)
  (b_train,) = study.before_training(c, w, "b", pending=pending)
  assert b_train.after == ("prepare/base",)
  assert f"--config.model.init={w}/prepare/base/base" in b_train.command
  curate, train = study.before_training(c, w, "cur", pending=pending)  # pool made later
  assert curate.after == ("prepare/other",) and f"--config.pool={w}/prepare/other/pool.jsonl" \
      in curate.command
  assert set(train.after) == {"cur/curate", "prepare/base"}
  with pytest.raises(UserError, match=r"arms.cur.pool: .*pool.jsonl does not exist"):
    study.before_training(c, w, "cur")  # once the prepare steps ran, it must be there
  assert study.prompts_path(c, w) == (f"{w}/prepare/world/eval/prompts.jsonl",
                                      ("prepare/world",))
  # --only=b: b's base, the world the prompts come from and base follows; not other, unused.
  assert [s.key for s in study.needed_prepare(c, w, ["b"], only=True)] == [
      "prepare/world", "prepare/base"]
  assert [s.key for s in study.needed_prepare(c, w, ["cur"], only=True)] == [
      "prepare/world", "prepare/base", "prepare/other"]
  assert len(study.needed_prepare(c, w, ["b"], only=False)) == 4
  # A copied ConfigDict lists its keys sorted (base, other, unused, world): the order comes
  # from what the steps follow, else the listing.
  copied = c.copy_and_resolve_references()
  assert list(copied.prepare.keys()) == ["base", "other", "unused", "world"]
  assert [s.key for s in study.prepare_steps(copied, w)] == [
      "prepare/unused", "prepare/world", "prepare/base", "prepare/other"]
  c.prepare.world.after = ("other",)  # other follows world: a circle
  with pytest.raises(UserError, match=r"in a circle \(or follow one that does\): world, base, "
                                      "other$"):
    study.prepare_steps(c, w)
  c.prepare.world.after = ()
  c.prepare.base.command = ("python", "{nope}")
  with pytest.raises(UserError, match=r"^config prepare.base.command\[1\]: unknown placeholder "
                                      r"\{nope\}"):
    study.prepare_steps(c, w)


def test_dry_run_lists_prepare_steps_and_counts_prompts_made_later(tmp_path):
  config = tmp_path / "study.py"
  config.write_text(f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from configs import experiments

def get_config():
  c = experiments.get_config("tiny")
  c.prepare.world = experiments._prep(command=("python", "-c", "pass", "--out={{out}}"),
                                      files=("configs/experiments.py",))
  c.prompts = "{{world}}/eval/prompts.jsonl"
  c.arms.all.data = "{{world}}/sft/all.jsonl"
  return c
""")
  r = cli("run", f"--config={config}", f"--workdir={tmp_path / 'w'}", "--dry_run")
  assert r.returncode == 0, r.stderr
  world = tmp_path / "w" / "prepare" / "world"
  assert f"prepare:\n  prepare/world{' ' * 27} new\n" in r.stdout
  assert f"-c pass --out={world}\n" in r.stdout
  assert f"--config.data.train_files={world}/sft/all.jsonl" in r.stdout
  assert (f"judging: 2 judge calls a prompt (the prompts, {world}/eval/prompts.jsonl, are made "
          "by prepare step world: not counted yet)") in r.stdout
  assert not (tmp_path / "w").exists()
  r = cli("run", f"--config={config}", f"--workdir={tmp_path / 'w'}", "--dry_run",
          "--only=random100")  # it names no prepare step, but the prompts do
  assert r.returncode == 0 and "prepare/world" in r.stdout, r.stderr


# --- The report on judge_free's exact scores -------------------------------------------------

def _exact_study(tmp_path, right, metric="judge_free.exact_rate:set=test",
                 fields=("exact_rate:template=heldout", "lima_likert.mean"), epochs=None):
  """A finished study without running one: per arm and seed, judge_free on 40 prompts (even
  ones tagged set=test, every fourth template=heldout), prompt i exact when right(arm, seed, i),
  written through lima_jax.eval itself from an answers file."""
  sys.path.insert(0, str(REPO))
  from configs import eval as eval_configs
  from configs import experiments
  from lima_jax import eval as lima_eval
  c = experiments.get_config("tiny")
  c.report.metric, c.report.fields, c.report.pairs = metric, tuple(fields), ("a-b",)
  c.report.bootstrap_rounds = 400
  steps = {}
  for arm in ("a", "b"):
    for seed in (0, 1):
      rows = [{"id": f"p{i}", "conversations": [f"Q{i}?"], "answer": "yes" if right(
          arm, seed, i) else "no", "expected": "yes", "stopped": True,
               "tags": ["set=test" if i % 2 == 0 else "set=dev"] + (
                   ["template=heldout"] if i % 4 == 0 else [])} for i in range(40)]
      out = tmp_path / arm / str(seed)
      out.mkdir(parents=True)
      (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
      e = eval_configs.get_config("judge_free")
      e.answers, e.bootstrap.rounds = str(out / "answers.jsonl"), 200
      lima_eval.evaluate(e, out)
      epoch = (epochs or {}).get(arm, 2)
      steps[f"{arm}/seed{seed}/e{epoch}/answer"] = {
          "status": "done", "kind": "answer", "output": str(out), "arm": arm, "seed": seed,
          "epoch": epoch, "protocol": "judge_free"}
  c.arms = {"a": {"n_examples": 10}, "b": {"n_examples": 20}}
  study_json = json.loads(c.to_json())
  study_json["arms"] = {"a": {"n_examples": 10}, "b": {"n_examples": 20}}
  (tmp_path / "study.json").write_text(json.dumps(study_json))
  (tmp_path / "manifest.json").write_text(json.dumps({"steps": steps}))
  return tmp_path


def test_report_metric_and_columns_from_judge_free_exact_tags(tmp_path, capsys):
  from lima_jax.experiment import report
  # a: every test prompt right on seed 0, 3 of 4 on seed 1; b: half of them; dev prompts
  # right for both, so a difference shows on set=test only.
  def right(arm, seed, i):
    if i % 2:
      return True
    return (i % 8 != 2 or seed == 0) if arm == "a" else i % 4 == 0
  workdir = _exact_study(tmp_path, right)
  report.main(workdir)
  rep = json.loads((workdir / "report" / "report.json").read_text())
  rows = {(r["arm"], r["field"]): r for r in rep["rows"]}
  # The metric's field and report.fields are columns; lima_likert.mean is in no results.
  assert {f for _, f in rows} == {"exact_rate", "exact_rate:set=test",
                                  "exact_rate:template=heldout", "stopped_rate", "mean_words",
                                  "empty_rate", "looping_rate"}
  assert rep["missing_fields"] == ["lima_likert.mean"]
  assert "'lima_likert.mean' is in no finished step's results.json" in capsys.readouterr().out
  a_test = rows["a", "exact_rate:set=test"]
  assert a_test["per_seed"] == [1.0, 0.75] and a_test["value"] == pytest.approx(0.875)
  assert a_test["ci_method"] == "seeds x prompts"
  lo, hi = a_test["ci95"]
  # A quarter of the draws take seed 0 twice (every prompt right: 1.0); seed 1 twice (15 of
  # 20, prompts drawn again) puts the lower end below 0.75.
  assert hi == 1.0 and 0.5 < lo < 0.75
  assert rows["b", "exact_rate:template=heldout"]["value"] == 1.0
  assert rows["b", "exact_rate"]["value"] == pytest.approx(0.75)  # 30 of 40
  # The paired difference is over the 20 test prompts, seeds averaged a prompt: a has 0.875
  # on average there, b 0.5.
  (pair,) = rep["pairs"]
  assert (pair["protocol"], pair["score"], pair["n_prompts"]) == (
      "judge_free", "exact_rate:set=test", 20)
  assert pair["difference"] == pytest.approx(0.375)
  assert pair["ci95"][0] > 0.1 and pair["ci95"][1] < 0.65
  page = (workdir / "report" / "index.html").read_text()
  assert "exact_rate:template=heldout" in page and "arms.png" in page


def test_report_pairs_arms_of_other_epoch_counts_at_their_last_epochs(tmp_path, capsys):
  """Arms matched on examples seen train for different epochs (a 1K arm 16, a 10K arm 2):
  the pair compares each at its own last answered epoch instead of finding no prompts."""
  from lima_jax.experiment import report
  right = lambda arm, seed, i: i % 2 or (arm == "a" or i % 4 == 0)
  workdir = _exact_study(tmp_path, right, epochs={"a": 16, "b": 2})
  report.main(workdir)
  (pair,) = json.loads((workdir / "report" / "report.json").read_text())["pairs"]
  assert pair["epochs"] == [16, 2] and pair["n_prompts"] == 20
  assert pair["difference"] == pytest.approx(0.5)  # a: every test prompt; b: half of them
  assert "a-b (judge_free exact_rate:set=test, epoch 16 / 2, 20 prompts): +0.500" in (
      capsys.readouterr().out)


def test_size_figure_draws_one_mixture_when_the_study_names_it():
  """bioworld's arms differ in kind as well as size: the Figure 6 line is the clean mixture
  (c1k, d2k, d32k), not a zigzag through the noisy and homogeneous arms."""
  sys.path.insert(0, str(REPO))
  from configs import experiments
  from lima_jax.experiment import report_figures
  c = experiments.get_config("bioworld")
  sizes = {a: arm.n_examples for a, arm in c.arms.items()}
  rep = {"size_arms": list(c.report.size_arms), "n_examples": sizes}
  arms = list(c.arms)
  assert report_figures.size_line(rep, arms) == ["c1k", "d2k", "d32k"]
  # Without size_arms: every arm with a size (weak_c1k has none), smallest first.
  assert report_figures.size_line({"size_arms": [], "n_examples": sizes}, arms) == [
      "c1k", "r1k", "d2k", "h2k", "u2k", "n10k", "d32k"]


@pytest.mark.parametrize("name", ["bioworld", "bioworld_sweep", "bioworld_e1", "bioworld_e2",
                                  "bioworld_e3", "bioworld_e3_l", "bioworld_fair",
                                  "bioworld_worlds", "bioworld_lora", "bioworld_smoke"])
def test_every_bioworld_study_plans_from_an_empty_workdir(name, tmp_path):
  """Each study's placeholders name its own prepare steps and each arm has data or a preset:
  planned before anything ran, every arm gets one train step a seed."""
  sys.path.insert(0, str(REPO))
  from configs import experiments
  from lima_jax.experiment import prepare, study
  c = experiments.get_config(name)
  pending = frozenset(s.key for s in prepare.prepare_steps(c, tmp_path))
  for arm in c.arms:
    prepare.prompts_path(c, tmp_path, arm)  # the prompts it answers name known steps too
    steps = study.before_training(c, tmp_path, arm, pending)
    assert [s.key for s in steps if s.kind == "train"] == [
        f"{arm}/seed{seed}/train" for seed in c.arms[arm].seeds]


def test_report_metric_that_no_results_have_is_an_error(tmp_path):
  from lima_jax.experiment import report
  workdir = _exact_study(tmp_path, lambda arm, seed, i: True,
                         metric="judge_free.exact_rate:set=tset")
  with pytest.raises(UserError, match=r"config report.metric: no judge_free results.json has "
                                      r"'exact_rate:set=tset' \(they have .*exact_rate:set=test"):
    report.build(workdir)


# The world of the end-to-end study: 96 demo conversations to train on, and the 20 demo
# prompts with an exact answer each (the demo data's own phrasing) and tags.
MAKE_WORLD = """
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
(out / "sft").mkdir()
rows = pathlib.Path("data/demo/train.jsonl").read_text().splitlines()[:96]
(out / "sft" / "c96.jsonl").write_text("\\n".join(rows) + "\\n")
(out / "eval").mkdir()
prompts = [json.loads(l) for l in pathlib.Path("data/demo/prompts.jsonl").read_text().splitlines()]
with open(out / "eval" / "prompts.jsonl", "w") as f:
  for i, p in enumerate(prompts):
    q = p["conversations"][0]
    answer = "The capital of " + q.split(" of ")[-1].rstrip("?") + " is ?" if "capital" in q else "?"
    f.write(json.dumps({**p, "expected": answer, "tags": ["set=test" if i % 2 else "set=dev"]}) + "\\n")
"""


@pytest.mark.slow
def test_a_study_whose_data_and_prompts_come_from_a_prepare_step(tmp_path):
  config = tmp_path / "study.py"
  config.write_text(f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from configs import experiments

def get_config():
  c = experiments.get_config("tiny")
  c.prepare.world = experiments._prep(command=("python", "-c", {MAKE_WORLD!r}, "{{out}}"))
  c.prompts = "{{world}}/eval/prompts.jsonl"
  c.protocols, c.baseline_arm, c.judge.scripted = ("judge_free",), "", False
  c.base_overrides = c.base_overrides + ("train.epochs=1",)
  c.report.metric, c.report.pairs = "judge_free.exact_rate:set=test", ()
  c.report.fields = ("exact_rate:set=dev",)
  c.arms = {{"c96": experiments._arm(data="{{world}}/sft/c96.jsonl", n_examples=96)}}
  return c
""")
  workdir = tmp_path / "w"
  r = cli("run", f"--config={config}", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  steps = json.loads((workdir / "manifest.json").read_text())["steps"]
  assert sorted(steps) == ["c96/seed0/e1/answer", "c96/seed0/train", "prepare/world"]
  assert {s["status"] for s in steps.values()} == {"done"}
  rows = [json.loads(l) for l in (workdir / "arms/c96/seed0/e1/answer/answers.jsonl")
          .read_text().splitlines()]
  assert len(rows) == 20 and all("expected" in x and x["tags"] for x in rows)
  results = json.loads((workdir / "arms/c96/seed0/e1/answer/results.json").read_text())
  assert results["exact_n:set=test"] == 10 and "exact_rate:set=test_ci95" in results
  assert cli("report", f"--workdir={workdir}").returncode == 0
  rep = json.loads((workdir / "report" / "report.json").read_text())
  fields = {r["field"]: r for r in rep["rows"]}
  assert fields["exact_rate:set=test"]["value"] == results["exact_rate:set=test"]
  assert "exact_rate:set=dev" in fields
  again = cli("run", f"--config={config}", f"--workdir={workdir}")
  assert again.returncode == 0 and "prepare/world: done" in again.stdout
  assert json.loads((workdir / "manifest.json").read_text())["steps"] == steps  # nothing redone


# --- An arm that answers a converted checkpoint as it is ---------------------------------------

def _model_arm_study(tmp_path) -> pathlib.Path:
  """A study file: prepare step `stories` converts llama2.c's stories260K (a base model made
  elsewhere) with `convert from-llama2c`; arm `base` answers it as it is and is the baseline
  that arm `all` (the demo model trained one epoch on 32 demo conversations) is judged
  against."""
  stories = shared_file("llama2c/stories260K/stories260K.bin")
  tok = shared_file("llama2c/stories260K/tok512.bin")
  config = tmp_path / "study.py"
  config.write_text(f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from configs import experiments

def get_config():
  c = experiments.get_config("tiny")
  c.prepare.stories = experiments._prep(
      command=("python", "-m", "lima_jax.convert", "from-llama2c", "--model={stories}",
               "--tokenizer={tok}", "--out={{out}}/ckpt"),
      files=({str(stories)!r}, {str(tok)!r}))
  c.base_overrides = c.base_overrides + ("train.epochs=1", "data.subset_size=32")
  c.arms = {{"all": experiments._arm(data="data/demo/train.jsonl", n_examples=32),
             "base": experiments._arm(model="{{stories}}/ckpt")}}
  c.baseline_arm = "base"
  c.report.pairs = ("all-base",)
  return c
""")
  return config


def _load(config: pathlib.Path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("model_arm_study", config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_a_model_arm_answers_without_training_and_is_the_baseline(tmp_path):
  from lima_jax.experiment import placement, study
  c, w = _load(_model_arm_study(tmp_path)), tmp_path / "w"
  ckpt = f"{w}/prepare/stories/ckpt"
  assert study.arm_order(c, []) == ["base", "all"]  # the baseline first
  pending = {"prepare/stories"}  # not converted yet: its checkpoint is not looked for
  # Its answer step (judge_free) is all: lima_pairwise judges no arm against itself.
  (answer,) = study.before_training(c, w, "base", pending=pending)
  assert (answer.key, answer.kind, answer.after, answer.seed, answer.epoch) == (
      "base/base/answer", "answer", ("prepare/stories",), None, 0)
  assert f"--config.checkpoint={ckpt}" in answer.command and "lima_jax.eval" in answer.command
  assert not any(a.startswith("--format") for a in answer.command)  # the checkpoint's own
  assert answer.output == w / "arms" / "base" / "base" / "answer"
  c.arms.base.format = "lima"  # either format, as the arm says
  assert "--format=lima" in study.before_training(c, w, "base", pending=pending)[0].command
  c.arms.base.format = "chatml"
  with pytest.raises(UserError, match=r"^config arms.base.format: 'chatml' is not 'lima' or "):
    study.before_training(c, w, "base", pending=pending)
  c.arms.base.format = ""
  assert study.after_training(c, w, "base", 0) == []
  assert [s.key for s in study.needed_prepare(c, w, ["base"], only=True)] == [
      "prepare/stories"]
  (train,) = study.before_training(c, w, "all", pending=pending)
  assert train.kind == "train"
  # The trained arm's pairwise judgment of every seed and epoch reads the model arm's answers.
  steps = study._answer_and_judge(c, w, "all", "all/seed3/e7", w / "x", w / "ckpt",
                                  ("all/seed3/train",), 3, 7)
  pairwise = steps[1]
  assert pairwise.key == "all/seed3/e7/lima_pairwise"
  assert pairwise.after == ("all/seed3/e7/answer", "base/base/answer")
  assert f"--config.baseline={w}/arms/base/base/answer/answers.jsonl" in pairwise.command
  lines = placement.plan(c, w, ["base", "all"], study.prepare_steps(c, w))
  assert [line.split()[0] for line in lines] == [
      "prepare/stories", "base/base/answer", "all/seed0/train", "all/seedS/eE/answer",
      "all/seedS/eE/lima_pairwise"]
  with pytest.raises(UserError, match=f"^config arms.base.model: {ckpt} does not exist$"):
    study.before_training(c, w, "base")  # once the prepare step ran, it must be there


@pytest.mark.slow
def test_a_converted_base_is_a_study_arm_with_no_train_step(tmp_path):
  config, workdir = _model_arm_study(tmp_path), tmp_path / "w"
  plan = cli("run", f"--config={config}", f"--workdir={workdir}", "--dry_run")
  assert plan.returncode == 0, plan.stderr
  base_plan = plan.stdout.split("arm base:\n", 1)[1].split("arm all:")[0]
  assert "base/base/answer" in base_plan and "train" not in base_plan
  assert "lima_jax.main" not in base_plan and "per answered epoch" not in base_plan
  r = cli("run", f"--config={config}", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  steps = json.loads((workdir / "manifest.json").read_text())["steps"]
  assert sorted(steps) == ["all/seed0/e1/answer", "all/seed0/e1/lima_pairwise",
                           "all/seed0/train", "base/base/answer", "prepare/stories"]
  assert {s["status"] for s in steps.values()} == {"done"}
  answers = [json.loads(line) for line in (workdir / "arms/base/base/answer/answers.jsonl")
             .read_text().splitlines()]
  assert len(answers) == 20 and all(a["answer"].strip() for a in answers)
  assert cli("report", f"--workdir={workdir}").returncode == 0
  rep = json.loads((workdir / "report" / "report.json").read_text())
  rows = {(r["arm"], r["protocol"], r["epoch"], r["field"]): r for r in rep["rows"]}
  assert rows["base", "judge_free", 0, "stopped_rate"]["seeds"] == 1
  assert ("all", "lima_pairwise", 1, "equal_or_better") in rows
  assert not any(arm == "base" and p == "lima_pairwise" for arm, p, _, _ in rows)
  (pair,) = rep["pairs"]
  assert pair["pair"] == "all-base" and pair["epochs"] == [1, 0] and pair["n_prompts"] == 20
  again = cli("run", f"--config={config}", f"--workdir={workdir}")
  assert again.returncode == 0 and "base/base/answer: done" in again.stdout


# --- Arms that answer prompts of their own (one study, several worlds) ------------------------

def _worlds_study(tmp_path) -> pathlib.Path:
  """A study file over two worlds, each a prepare step that makes its prompts: model arms m1
  and m2 answer a checkpoint of their world and the world's prompts; arm own trains on the
  demo data and answers a prompts file of the study's directory; arm shared the study's."""
  (tmp_path / "own.jsonl").write_text('{"conversations": ["Why?"]}\n' * 3)
  config = tmp_path / "study.py"
  config.write_text(f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from configs import experiments

def get_config():
  c = experiments.get_config("tiny")
  c.protocols, c.baseline_arm, c.judge.scripted, c.report.pairs = ("judge_free",), "", False, ()
  for s in (1, 2):
    c.prepare[f"world_s{{s}}"] = experiments._prep(command=("python", "-c", "pass", "{{out}}"))
    c.arms[f"m{{s}}"] = experiments._arm(model=f"{{{{world_s{{s}}}}}}/ckpt",
                                         prompts=f"{{{{world_s{{s}}}}}}/eval/prompts.jsonl")
  c.arms.own = experiments._arm(data="data/demo/train.jsonl", prompts={str(tmp_path)!r}
                                + "/own.jsonl", n_examples=314)
  c.arms.shared = experiments._arm(data="data/demo/train.jsonl", n_examples=314)
  del c.arms["all"], c.arms["random100"]
  return c
""")
  return config


def test_each_arm_answers_its_own_prompts_file(tmp_path):
  from lima_jax.experiment import study
  from lima_jax.experiment.manifest import Manifest
  config, w = _worlds_study(tmp_path), tmp_path / "w"
  r = cli("run", f"--config={config}", f"--workdir={w}", "--dry_run",
          "--config.protocols=('judge_free','lima_likert')")
  assert r.returncode == 0, r.stderr
  for s in (1, 2):  # each model arm's answer command, on its own world's prompts
    plan = r.stdout.split(f"arm m{s}:\n", 1)[1].split("arm ")[0]
    assert f"--config.prompts={w}/prepare/world_s{s}/eval/prompts.jsonl " in plan
    assert f"--config.checkpoint={w}/prepare/world_s{s}/ckpt " in plan
  # Graded on each arm's prompts: own's 3 and shared's 20 counted, the worlds' not made yet.
  assert (f"judging: 23 judge calls and 2 judge calls a prompt (the prompts, {w}/prepare/"
          f"world_s1/eval/prompts.jsonl, {w}/prepare/world_s2/eval/prompts.jsonl, are made by "
          "prepare step world_s1, world_s2: not counted yet)") in r.stdout
  c = _load(config)
  # The answer steps of trained arms, once a checkpoint exists: each its own prompts.
  steps = {arm: study._answer_and_judge(c, w, arm, f"{arm}/seed0/e2", w / arm, w / "ckpt",
                                        (f"{arm}/seed0/train",), 0, 2)[0]
           for arm in ("own", "shared", "m1")}
  assert f"--config.prompts={tmp_path}/own.jsonl" in steps["own"].command
  assert "--config.prompts=data/demo/prompts.jsonl" in steps["shared"].command
  assert steps["m1"].after == ("m1/seed0/train", "prepare/world_s1")
  assert steps["own"].after == ("own/seed0/train",)  # its prompts name no prepare step
  assert [s.key for s in study.needed_prepare(c, w, ["m2"], only=True)] == ["prepare/world_s2"]
  assert study.needed_prepare(c, w, ["own", "shared"], only=True) == []
  # The prompts file is an input: a changed one redoes that arm's answers, not the others'.
  (w / "prepare/world_s1/eval").mkdir(parents=True)
  (w / "prepare/world_s1/eval/prompts.jsonl").write_text('{"conversations": ["Who?"]}\n')
  m = Manifest(w)
  before = {arm: m.digest(step) for arm, step in steps.items()}
  (tmp_path / "own.jsonl").write_text('{"conversations": ["Why not?"]}\n')
  after = {arm: m.digest(step) for arm, step in steps.items()}
  assert after["own"] != before["own"]
  assert after["shared"] == before["shared"] and after["m1"] == before["m1"]
  # Judged pairwise against m2 (another world's prompts): refused when the study is planned.
  r = cli("run", f"--config={config}", f"--workdir={w}", "--dry_run", "--config.baseline_arm=m2",
          "--config.protocols=('judge_free','lima_pairwise')", "--config.judge.scripted=True")
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(lines) == 1, r.stderr
  assert lines[0].startswith("error: config arms.m1.prompts: lima_pairwise would judge arm m1 "
                             f"(prompts {w}/prepare/world_s1/eval/prompts.jsonl) against "
                             f"baseline_arm m2 (prompts {w}/prepare/world_s2/eval/"), lines
  r = cli("run", f"--config={config}", f"--workdir={w}", "--dry_run",
          "--config.arms.m1.prompts={world_s3}/eval/prompts.jsonl")
  assert r.returncode == 1 and r.stderr.strip().splitlines() == [
      "error: config arms.m1.prompts: unknown placeholder {world_s3} in "
      "'{world_s3}/eval/prompts.jsonl' (known here: {workdir}, {world_s1}, {world_s2})"]


def test_report_skips_a_pair_of_arms_on_different_prompts(tmp_path, capsys):
  from lima_jax.experiment import report
  workdir = _exact_study(tmp_path, lambda arm, seed, i: i % 2 or arm == "a")
  study_json = json.loads((workdir / "study.json").read_text())
  study_json["arms"]["a"]["prompts"] = "{world_s1}/eval/prompts.jsonl"
  (workdir / "study.json").write_text(json.dumps(study_json))
  report.main(workdir)
  rep = json.loads((workdir / "report" / "report.json").read_text())
  (pair,) = rep["pairs"]
  assert pair["difference"] is None and pair["n_prompts"] == 0
  assert pair["skipped"] == ("a answered {world_s1}/eval/prompts.jsonl, b "
                             "data/demo/prompts.jsonl")
  assert ("a-b: skipped, not the same prompts (a answered {world_s1}/eval/prompts.jsonl, b "
          "data/demo/prompts.jsonl)") in capsys.readouterr().out
  assert "skipped, not the same prompts" in (workdir / "report" / "index.html").read_text()
  rows = {(r["arm"], r["field"]): r["value"] for r in rep["rows"]}  # each arm's rows stay
  assert rows["a", "exact_rate:set=test"] == 1.0 and rows["b", "exact_rate:set=test"] == 0.0
  # The same file named by both (b's own, a's the study's): paired again.
  study_json["arms"]["b"]["prompts"] = "{world_s1}/eval/prompts.jsonl"
  (workdir / "study.json").write_text(json.dumps(study_json))
  (pair,) = report.build(workdir)["pairs"]
  assert pair["n_prompts"] == 20 and pair["difference"] == pytest.approx(1.0)
