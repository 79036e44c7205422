"""A user module for the architecture registry tests (``tests.user_nets:Tiny``)."""

from torch import nn


class Tiny(nn.Module):
    """Fixed 32×32 input: declares it, so a mismatch is caught before training."""

    def __init__(self, in_channels: int = 2, n_outputs: int = 1):
        super().__init__()
        self.input_size = 32
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, n_outputs)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.conv(x))))


class Fixed(nn.Module):
    """No declared size: only the dry run finds a mismatch (a Linear sized for 20×20)."""

    def __init__(self, in_channels: int = 2):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(in_channels * 20 * 20, 1)

    def forward(self, x):
        return self.fc(self.flat(x))


class Exploding(nn.Module):
    """Logits scaled past float32's range: the training loss is not finite at the first step."""

    def __init__(self, in_channels: int = 2, size: int = 16):
        super().__init__()
        self.input_size = size
        self.flat = nn.Flatten()
        self.fc = nn.Linear(in_channels * size * size, 1)

    def forward(self, x):
        return self.fc(self.flat(x)) * 1e30 * 1e30
