"""ODE solvers: Butcher tableaus, one explicit RK stepper, PI step-size control, and the adjoint."""
from neuralode.solvers.stats import SolveStats

# odeint / odeint_adjoint / SOLVERS are provided by the solver core (issue 2).
__all__ = ["SOLVERS", "SolveStats", "odeint", "odeint_adjoint"]
