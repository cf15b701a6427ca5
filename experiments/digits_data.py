"""The 8x8 handwritten digits (data/digits.csv.gz: 1,797 images, see data/README.md) as tensors."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def load(path: str = "data/digits.csv.gz") -> tuple[torch.Tensor, torch.Tensor]:
    """Images of shape [N, 1, 8, 8] with pixels scaled to [0, 1], and their digits 0-9."""
    with gzip.open(HERE / path, "rt") as f:
        rows = [[int(v) for v in line.split(",")] for line in f if line.strip()]
    table = torch.tensor(rows)
    images = table[:, :64].float().div(16.0).view(-1, 1, 8, 8)
    return images, table[:, 64]
