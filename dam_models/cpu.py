"""What this CPU computes natively, from /proc/cpuinfo's flags: where bfloat16 and int8 pay.

Measured (bench/RESULTS.md, "Model runtimes"): bfloat16 is 2-2.5x float32 on a CPU with AVX512-BF16
or AMX, and emulated (slower than float32) without; the int8 image side is 1.1-1.4x the bf16 one on
a CPU with VNNI or AMX-INT8, and no faster than float32 on one with AVX2 alone (no int8 dot product),
where it only costs parity.
"""

from __future__ import annotations

import functools

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX512-BF16 / AMX, Arm BF16
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})  # x86 VNNI / AMX, Arm dot product


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The words of /proc/cpuinfo (its flags among them); empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (x86 AVX512-BF16 / AMX-BF16, Arm BF16)."""
    return bool(cpu_flags() & BF16_FLAGS)


def cpu_has_int8_dot() -> bool:
    """True when the CPU has int8 dot-product instructions (x86 VNNI / AMX-INT8, Arm dot product)."""
    return bool(cpu_flags() & INT8_DOT_FLAGS)


__all__ = ["cpu_flags", "cpu_has_int8_dot", "cpu_has_native_bf16"]
