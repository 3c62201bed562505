"""Transparent huge pages for host memory, asked of glibc's malloc through the environment.

On CPU, XLA allocates each step's temporaries as one block (117 MB for the bioworld testbed's
step) and frees it after the step; glibc maps such a block afresh each time, in 4 KiB pages.
With `glibc.malloc.hugetlb=1` malloc asks the kernel for 2 MiB pages instead
(`madvise(MADV_HUGEPAGE)`; Linux with transparent huge pages in `madvise` or `always` mode),
which removes almost all of the step's page faults and TLB misses (docs/performance.md: what
it bought, measured). glibc reads the tunable once, when a process starts, so it cannot be set
from inside a running Python; whatever starts the process sets it:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m lima_jax.testbed pretrain ...

The study runner (`lima_jax.experiment`) and `benchmarks/train_throughput.py` (both sides) start
their subprocesses with `with_huge_pages(os.environ)`, and `python -m lima_jax.main` (and
`lima-train`) restarts itself with it (`restart_with_huge_pages`) before it imports JAX.
Elsewhere than glibc on Linux the variable means nothing and is not added.
"""
import os
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb"


def with_huge_pages(env: Mapping[str, str]) -> dict[str, str]:
  """A copy of `env` whose GLIBC_TUNABLES also sets glibc.malloc.hugetlb=1.

  Other tunables already there are kept, and so is a hugetlb value the caller chose (e.g.
  GLIBC_TUNABLES=glibc.malloc.hugetlb=0 to measure without huge pages).

  >>> with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"]
  'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'
  """
  out = dict(env)
  if not sys.platform.startswith("linux"):
    return out
  tunables = [t for t in out.get("GLIBC_TUNABLES", "").split(":") if t]
  if not any(t.split("=", 1)[0] == TUNABLE for t in tunables):
    tunables.append(f"{TUNABLE}=1")
  out["GLIBC_TUNABLES"] = ":".join(tunables)
  return out


def restart_with_huge_pages() -> None:
  """Replaces this process (same pid, arguments, stdio and working directory) with one started
  with_huge_pages, unless its environment already has the tunable (either value: a caller's
  glibc.malloc.hugetlb=0 is respected) or nothing would change. Call it first thing in an
  entry point, before any work: whatever ran before it runs again."""
  env = with_huge_pages(os.environ)
  if env == dict(os.environ) or not sys.executable or len(sys.orig_argv) < 2:
    return  # nothing to add, or no command line to start again (an embedded interpreter)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
