"""ODE solvers: Butcher tableaus, one explicit RK stepper, PI step-size control, and the adjoint."""
from neuralode.solvers.adjoint import odeint_adjoint
from neuralode.solvers.errors import MaxNumStepsError, NeuralodeError, NonFiniteError, SolverError, StepUnderflowError
from neuralode.solvers.odeint import odeint, odeint_event
from neuralode.solvers.registry import SOLVERS
from neuralode.solvers.stats import SolveStats

__all__ = ["SOLVERS", "MaxNumStepsError", "NeuralodeError", "NonFiniteError", "SolveStats", "SolverError",
           "StepUnderflowError", "odeint", "odeint_adjoint", "odeint_event"]
