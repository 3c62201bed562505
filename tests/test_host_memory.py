"""lima_jax.host_memory: the environment that puts glibc's malloc on transparent huge pages."""
import doctest

from lima_jax import host_memory


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
