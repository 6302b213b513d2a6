"""neuralode: reproduce "Neural Ordinary Differential Equations" (Chen et al., 2018)."""
from neuralode.solvers import SOLVERS, SolveStats, odeint, odeint_adjoint, odeint_event

__all__ = ["SOLVERS", "SolveStats", "odeint", "odeint_adjoint", "odeint_event"]
__version__ = "0.1.0"
