"""Logging of our own for the digits experiment: a confusion-matrix image at each evaluation."""

from __future__ import annotations

import numpy as np
import torch

# A 3x5 pixel font for the digits, so the picture needs no font files or plotting library.
GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
}
CELL, SCALE = 15, 2  # a cell's size and the magnification, in pixels


def confusion_matrix(writer, step, model, inputs, targets, **context):
    """Log the validation confusion matrix (rows: true digit, columns: predicted) as an image."""
    predicted = model(inputs).argmax(dim=1)
    classes = 10
    counts = torch.bincount(targets * classes + predicted, minlength=classes * classes).view(classes, classes)
    writer.add_image("confusion_matrix", render(counts.cpu().numpy()), step, dataformats="HWC")
    if step == 0:
        writer.add_text(
            "confusion_matrix",
            "Rows: the true digit; columns: the predicted digit. Blue cells are "
            "right, red ones mistakes; the shade is the share of the row.",
            step,
        )


def render(counts: np.ndarray) -> np.ndarray:
    """An RGB picture of a confusion matrix: cells shaded by their share of the row, counts written in,
    the digits along the top (predicted) and the left (true)."""
    n = counts.shape[0]
    size = (n + 1) * CELL
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    for i in range(n):
        _text(image, str(i), (i + 1) * CELL + 5, 5, (0, 0, 0))  # predicted digit, on top
        _text(image, str(i), 5, (i + 1) * CELL + 5, (0, 0, 0))  # true digit, at the left
        for j in range(n):
            top, left = (i + 1) * CELL, (j + 1) * CELL
            color = _shade(share[i, j], diagonal=i == j)
            image[top + 1 : top + CELL, left + 1 : left + CELL] = color
            if counts[i, j]:
                label = str(int(counts[i, j]))
                ink = (255, 255, 255) if share[i, j] > 0.5 else (0, 0, 0)
                _text(image, label, left + (CELL - 4 * len(label)) // 2 + 1, top + 5, ink)
    return image.repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def _shade(share: float, diagonal: bool) -> tuple[int, int, int]:
    """White to blue for correct predictions, white to red for mistakes."""
    strength = 0.15 + 0.85 * share if share > 0 else 0.0
    base = np.array((33, 102, 172) if diagonal else (178, 24, 43))
    return tuple((255 - strength * (255 - base)).astype(np.uint8))


def _text(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    for k, char in enumerate(text):
        bits = GLYPHS[char]
        for r in range(5):
            for c in range(3):
                if bits[r * 3 + c] == "1":
                    image[y + r, x + 4 * k + c] = color
