"""Facts about the device that decide which recipes are worth trying first."""

from __future__ import annotations

from functools import cache

import torch


@cache
def bf16_is_fast(device_type: str) -> bool:
    """Whether bf16 matmuls have hardware support: on a GPU, ``is_bf16_supported``; on an x86
    CPU, the AVX-512 BF16 or AMX instructions (without them CPU autocast to bf16 is emulated
    and slower than fp32)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
