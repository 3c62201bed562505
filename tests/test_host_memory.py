"""lima_jax.parallel.host_memory: the environment that puts glibc's malloc on transparent huge
pages."""
import doctest
import os
import pathlib
import subprocess
import sys

import pytest

from lima_jax.parallel import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_adds_hugetlb_after_the_tunables_already_set(monkeypatch):
  monkeypatch.setattr(host_memory.sys, "platform", "linux")
  assert host_memory.with_huge_pages({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0", "A": "b"}
  out = host_memory.with_huge_pages(env)
  assert out == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0:"
                                   "glibc.malloc.hugetlb=1", "A": "b"}
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
  assert doctest.testmod(host_memory).failed == 0


def test_keeps_a_hugetlb_value_the_caller_chose(monkeypatch):
  monkeypatch.setattr(host_memory.sys, "platform", "linux")
  for value in ("glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2"):
    assert host_memory.with_huge_pages({"GLIBC_TUNABLES": value})["GLIBC_TUNABLES"] == value


def test_adds_nothing_where_glibc_is_not_the_allocator(monkeypatch):
  monkeypatch.setattr(host_memory.sys, "platform", "darwin")
  assert host_memory.with_huge_pages({"A": "b"}) == {"A": "b"}


def _python(*args, env_extra=None, cwd=None):
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(env_extra or {})
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=cwd or REPO, timeout=300)


RESTART = ("import os, sys; print('started', flush=True); from lima_jax.parallel import host_memory; "
           "host_memory.restart_with_huge_pages(); "
           "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables: Linux only")
def test_restart_happens_once_with_the_same_arguments_and_respects_the_callers_value():
  r = _python("-c", RESTART, "a", "--b=1")
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == ["started", "started", "glibc.malloc.hugetlb=1 ['a', '--b=1']"]
  r = _python("-c", RESTART, "a", env_extra={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
  assert r.stdout.splitlines() == ["started", "glibc.malloc.hugetlb=0 ['a']"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tunables: Linux only")
def test_lima_jax_main_trains_on_huge_pages_without_being_told(tmp_path):
  """The config file is read by the restarted process: it sees the tunable, once."""
  seen = tmp_path / "seen.txt"
  config = tmp_path / "probe.py"
  config.write_text("import os\n\ndef get_config():\n"
                    f"  open({str(seen)!r}, 'a').write(os.environ.get('GLIBC_TUNABLES', '-') + "
                    "'\\n')\n  raise ValueError('probe only')\n")
  r = _python("-m", "lima_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert r.returncode != 0 and "probe only" in r.stderr
  assert seen.read_text() == "glibc.malloc.hugetlb=1\n"
