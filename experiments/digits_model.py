"""A small convolutional network for 8x8 single-channel images."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with max pooling, then a linear layer to one score per class."""

    def __init__(self, channels: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Linear(2 * channels * 2 * 2, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
