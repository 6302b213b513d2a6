"""The numbers and claims of Chen et al. (2018), "Neural Ordinary Differential Equations", as data.

Kept apart from the code that measures ours so the report can print both side by side, and so a test
can check that every paper value reaches the report.
"""
from __future__ import annotations

from dataclasses import dataclass

PAPER = "Chen, Rubanova, Bettencourt, Duvenaud. Neural Ordinary Differential Equations. NeurIPS 2018."


@dataclass(frozen=True)
class Table1Row:
    """One row of the paper's Table 1 (MNIST): test error in %, parameters in millions, complexities."""

    label: str
    model: str  # our ``model=`` name
    test_error_pct: float
    params_m: float
    memory: str
    time: str


# Paper Table 1, in the paper's row order. The MLP row is from LeCun et al. (1998), as in the paper.
TABLE1: tuple[Table1Row, ...] = (
    Table1Row("1-Layer MLP", "mlp", 1.60, 0.24, "-", "-"),
    Table1Row("ResNet", "resnet", 0.41, 0.60, "O(L)", "O(L)"),
    Table1Row("RK-Net", "rknet", 0.47, 0.22, "O(L~)", "O(L~)"),
    Table1Row("ODE-Net", "odenet", 0.42, 0.22, "O(1)", "O(L~)"),
)

# Paper Table 2: predictive RMSE on the spiral test set for 30, 50 and 100 of the 100 time points.
TABLE2_N_OBS: tuple[int, ...] = (30, 50, 100)
TABLE2_RMSE: dict[str, tuple[float, ...]] = {
    "rnn": (0.3937, 0.3202, 0.1813),
    "latent_ode": (0.1642, 0.1502, 0.1346),
}
TABLE2_LABELS: dict[str, str] = {"rnn": "RNN", "latent_ode": "Latent ODE"}

# Figure 3 and Section 3 of the paper: the claims we measure against.
FIGURE3_CLAIMS: tuple[str, ...] = (
    "(a) Lower tolerance (more forward NFE) gives lower numerical error.",
    "(b) Wall time of the forward pass grows with forward NFE.",
    "(c) The backward (adjoint) pass needs roughly half the function evaluations of the forward pass.",
    "(d) Forward NFE grows as training progresses (the dynamics become more complex).",
)

# Figures 4 and 5 have no numeric values in the paper: they are plots. The claims they support:
FIGURE7_CLAIM = (
    "A latent ODE whose state sets the rate of a Poisson process learns the intensity behind event "
    "sequences: the fact that an event occurred tells it something about the latent state."
)
FIGURE4_WIDTHS: tuple[int, ...] = (2, 8, 32)  # K (planar NF layers) = M (CNF hidden units)
FIGURE4_CLAIM = (
    "A planar CNF with M hidden units is at least as expressive as a planar NF with K = M layers, "
    "and sometimes much more (lower KL at equal K = M)."
)
FIGURE5_CLAIM = (
    "Trained by maximum likelihood, the CNF transforms a Gaussian into two circles and two moons; "
    "being reversible, it can be sampled from efficiently."
)
