"""Channel pooling as a matrix, for graphs that reduce feature channels and must export to ONNX."""

from __future__ import annotations

import torch


def channel_pool_matrix(c_in: int, c_out: int) -> torch.Tensor:
    """``(c_out, c_in)`` matrix equal to ``adaptive_avg_pool1d`` over channels (a matmul exports to
    ONNX for any sizes; adaptive pooling does not)."""
    m = torch.zeros(c_out, c_in)
    for i in range(c_out):
        start = (i * c_in) // c_out
        end = -((-(i + 1) * c_in) // c_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m
