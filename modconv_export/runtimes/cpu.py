"""The CPU a runtime runs on: the cores this process may use and the ISA flags that matter for inference
speed (reported with every benchmark and parity record; numbers from different CPUs must not be mixed)."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["BF16_FLAGS", "ISA_FLAGS", "cpu_info", "cpu_threads"]

#: /proc/cpuinfo flags that matter for CPU inference speed (reported with every benchmark).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
#: The flags of native bf16 arithmetic (OpenVINO's bf16 needs one of them).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_threads() -> int:
    """Cores this process may run on (``sched_getaffinity``), not the machine's core count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the ISA flags of :data:`ISA_FLAGS` it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    return {"model": model, "isa": [f for f in ISA_FLAGS if f in flags], "cores_available": cpu_threads()}
