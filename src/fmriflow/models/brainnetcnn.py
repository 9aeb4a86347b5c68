"""BrainNetCNN: convolutions shaped for connectivity matrices.

Kawahara et al. 2017, "BrainNetCNN: Convolutional neural networks for brain networks;
towards predicting neurodevelopment", NeuroImage 146:1038-1049. A strong FC model in
published comparisons with foundation models and graph networks (e.g. Kan et al. 2022,
"Brain Network Transformer", NeurIPS), which runs beside the linear baselines.

Three filter types respect the matrix's structure, where an ordinary convolution's
spatial neighbourhood means nothing (regions i and i+1 are not neighbours):

``EdgeToEdge`` (E2E)
    out[o, i, j] = sum_c sum_k (r[o, c, k] A[c, i, k] + q[o, c, k] A[c, k, j]): each edge
    (i, j) sees every edge of its two regions (a cross-shaped filter), as a 1 x R row
    filter and an R x 1 column filter whose outputs are broadcast and added.
``EdgeToNode`` (E2N)
    out[o, i] = sum_c sum_k r[o, c, k] A[c, i, k]: a 1 x R filter, one value per region.
``NodeToGraph`` (N2G)
    out[o] = sum_c sum_i w[o, c, i] a[c, i]: an R x 1 filter, one value per matrix.

The paper's E2E-E2N-N2G model: E2E 32, E2E 32, E2N 64, N2G 256, then fully connected
128, 30 and the output, with leaky ReLU (slope 0.33) after every layer and dropout 0.5
after N2G and the first two fully connected layers (``BrainNetCNNConfig`` holds the sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class BrainNetCNNConfig:
    e2e: tuple[int, ...] = (32, 32)  # channels of each E2E layer (the paper's E2E-E2N-N2G model)
    e2n: int = 64
    n2g: int = 256
    hidden: tuple[int, ...] = (128, 30)  # fully connected layers after N2G
    n_outputs: int = 1  # one logit (binary) or one value (regression)
    dropout: float = 0.5
    negative_slope: float = 0.33  # leaky ReLU, as in the paper


class EdgeToEdge(nn.Module):
    """(B, C_in, R, R) -> (B, C_out, R, R): row filter + column filter, broadcast and added."""

    def __init__(self, in_channels: int, out_channels: int, n_regions: int):
        super().__init__()
        self.row = nn.Conv2d(in_channels, out_channels, (1, n_regions))  # bias once, on the row term
        self.col = nn.Conv2d(in_channels, out_channels, (n_regions, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.row(x) + self.col(x)  # (B, O, R, 1) + (B, O, 1, R) -> (B, O, R, R)


class BrainNetCNN(nn.Module):
    """FC (B, R, R) -> (B, n_outputs)."""

    def __init__(self, n_regions: int, config: BrainNetCNNConfig = BrainNetCNNConfig()):
        super().__init__()
        self.config = config
        act = nn.LeakyReLU(config.negative_slope)
        channels = (1, *config.e2e)
        self.e2e = nn.ModuleList([EdgeToEdge(a, b, n_regions) for a, b in zip(channels[:-1], channels[1:])])
        self.e2n = nn.Conv2d(channels[-1], config.e2n, (1, n_regions))  # (B, C, R, R) -> (B, e2n, R, 1)
        self.n2g = nn.Conv2d(config.e2n, config.n2g, (n_regions, 1))  # (B, e2n, R, 1) -> (B, n2g, 1, 1)
        self.act = act
        widths = (config.n2g, *config.hidden)
        layers: list[nn.Module] = [nn.Dropout(config.dropout)]
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), act, nn.Dropout(config.dropout)]
        layers.append(nn.Linear(widths[-1], config.n_outputs))
        self.head = nn.Sequential(*layers)

    def forward_features(self, fc: Tensor) -> Tensor:
        x = fc.unsqueeze(1)  # (B, 1, R, R)
        for layer in self.e2e:
            x = self.act(layer(x))  # (B, C, R, R)
        x = self.act(self.e2n(x))  # (B, e2n, R, 1)
        return self.act(self.n2g(x)).flatten(1)  # (B, n2g)

    def forward(self, fc: Tensor) -> Tensor:
        return self.head(self.forward_features(fc))  # (B, n_outputs)
