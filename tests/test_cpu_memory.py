"""The CPU allocator setting the `l2c` command applies (l2c/utils/cpu_memory.py)."""

import ctypes
import platform

import pytest

from l2c.utils import cpu_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_takes_the_thresholds():
    assert cpu_memory.keep_freed_memory() is True


def test_opt_out_and_other_allocators_leave_malloc_alone(monkeypatch):
    monkeypatch.setenv("L2C_KEEP_FREED_MEMORY", "0")
    assert cpu_memory.keep_freed_memory() is False
    monkeypatch.delenv("L2C_KEEP_FREED_MEMORY")

    def no_glibc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert cpu_memory.keep_freed_memory() is False


def test_the_cli_applies_it_for_cpu_runs(monkeypatch, tmp_path):
    from l2c.cli import main

    calls = []
    monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda: calls.append(1) or True)
    args = ["sample", "--model", "DiT-tiny", "--random-init", "--steps", "2", "--seeds", "0"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert calls == [1]
