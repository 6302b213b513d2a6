"""The paper's MNIST classifiers (Table 1), layer for layer as in its reference code (odenet_mnist.py).

All four share the input and output stages so that only the middle block differs:
downsampling ``conv3x3(1->64) GN ReLU conv4x4/2 GN ReLU conv4x4/2`` (28 -> 26 -> 13 -> 6 pixels),
then the middle block, then ``GN ReLU avgpool flatten linear(64->10)``. The MLP baseline is the
exception: one hidden layer of 300 units on the flattened image, as the paper's "1-Layer MLP".
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from neuralode.errors import ConfigError
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import Regularization

MODELS = ("odenet", "resnet", "rknet", "mlp")
ODE_MODELS = ("odenet", "rknet")  # the models with an ODE block, over the span [0, 1]
NUM_CLASSES = 10


def norm(dim: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, the reference code's normalisation everywhere."""
    return nn.GroupNorm(min(32, dim), dim)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(ReLU(GN(conv(ReLU(GN(x))))))``, convs without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.norm2 = norm(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(torch.relu(self.norm1(x)))
        return x + self.conv2(torch.relu(self.norm2(out)))


class ConcatConv2d(nn.Module):
    """3x3 convolution that also sees the time ``t`` as an extra constant input channel."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in + 1, dim_out, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], dim=1))


class ConvODEFunc(nn.Module):
    """The ODE-Net dynamics ``f(t, h)``: GN ReLU conv(t) GN ReLU conv(t) GN, as the ResBlock's residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.conv1 = ConcatConv2d(dim, dim)
        self.norm2 = norm(dim)
        self.conv2 = ConcatConv2d(dim, dim)
        self.norm3 = norm(dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(t, torch.relu(self.norm1(x)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


def downsampling(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3),
        norm(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
        norm(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1),
    )


def head(channels: int) -> nn.Sequential:
    return nn.Sequential(
        norm(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES),
    )


def build_mnist_model(name: str, solver: SolverSpec, *, channels: int = 64, num_blocks: int = 6,
                      hidden: int = 300, regularization: Regularization | None = None) -> nn.Module:
    """Build one of :data:`MODELS`; ``solver`` and ``regularization`` are used by ``odenet`` and ``rknet`` only.

    ``rknet`` always backpropagates through the solver's operations (``adjoint=False``), whatever
    ``solver.adjoint`` says: that is what distinguishes it from ``odenet`` in Table 1.
    ``odenet`` follows ``solver.adjoint`` (true in every shipped solver config, as in the paper).
    """
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
    if name == "resnet":
        middle: nn.Module = nn.Sequential(*(ResBlock(channels) for _ in range(num_blocks)))
    elif name == "odenet":
        middle = ODEBlock(ConvODEFunc(channels), solver, regularization=regularization)
    elif name == "rknet":
        middle = ODEBlock(ConvODEFunc(channels), dataclasses.replace(solver, adjoint=False),
                          regularization=regularization)
    else:
        raise ConfigError(f"unknown MNIST model {name!r}; choose one of: {', '.join(MODELS)}")
    return nn.Sequential(downsampling(channels), middle, head(channels))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
