"""The precision knob: autocast for bf16/fp16, and the loss scaler fp16 needs."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The torch dtype of each 16-bit precision of a recipe."""


def autocast_context(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16``/``fp16`` (matmuls and convolutions run in that dtype; weights and
    optimizer state stay fp32); a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[precision])


def make_grad_scaler(precision: str, device_type: str) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16, whose small exponent range underflows small gradients;
    bf16 has fp32's range and needs none."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type)
