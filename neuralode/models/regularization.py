"""Training-time regularisers of an ODE block's dynamics ``dz/dt = f(t, z)``: the options ``regularize.*``.

- ``kinetic``: the kinetic energy ∫ ‖f(t, z)‖² dt (RNODE, Finlay et al. 2020).
- ``jacobian``: the Jacobian's squared Frobenius norm ∫ ‖∂f/∂z‖²_F dt, estimated with Hutchinson's
  ‖εᵀ ∂f/∂z‖² (E[εεᵀ] = I), one Rademacher probe ε per solve, used by every evaluation of that solve: its
  forward pass and, with the adjoint, its backward pass. Rademacher, not Gaussian: for a diagonal Jacobian
  the estimate is then exact, and in general its variance is lower.
- ``steer``: STEER (Ghosh et al. 2020), the end time of the solve drawn as t1 ~ U[T - b, T + b].

Both integrals ride along in the same solve as one extra part of the state, ``(batch, n_integrals)``, so
they work with the adjoint and with backpropagation through the solver alike. They do not steer the step
size: the forward solve's error norm (the adaptive RK methods' ``norm`` option; SciPy's solvers measure the
whole state) covers only the model's own state, as FFJORD and RNODE do with their unbounded tolerances on the
regulariser states, so a regularised solve takes the steps its dynamics need and its NFE measures what the
regulariser bought. An NFE counts one evaluation of the augmented dynamics: with the Jacobian term it includes
one vector-Jacobian product (autograd, or the CNF's closed form).

Normalisation: per sample, the integrand is a mean over the state's elements, ‖f‖²/D and ‖εᵀ∂f/∂z‖²/D with D
the number of elements of one sample's state (2 for a 2-D CNF, 64·6·6 for the ODE-Net's feature map), so one
weight means the same thing whatever the state's size; the penalty of a solve is the mean of these integrals
over the samples of the batch (the first dimension of the state), the same per-sample mean the tasks' losses
take. The loss the optimiser sees is the task's loss plus Σ weight · value over the regularisers and the
step's solves (neuralode/train.py); ``train_loss`` in metrics.jsonl stays the task's loss alone.

For a tuple state only the first part is regularised: it is the state whose dynamics the model learns, and
the other parts are quantities integrated along it (a CNF's log-density, the Poisson model's compensator).
In evaluation (``model.eval()``, or no gradient) every regulariser is off and the end time is the nominal one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neuralode.errors import ConfigError

# The integrals in the order they sit in the extra part of the state.
INTEGRALS = ("kinetic", "jacobian")


@dataclass(frozen=True)
class Regularization:
    """Weights of the two integrals (0: off) and STEER's half-width ``steer`` (0: off)."""

    kinetic: float = 0.0
    jacobian: float = 0.0
    steer: float = 0.0

    @property
    def integrals(self) -> tuple[str, ...]:
        """The integrals to compute, in the order of :data:`INTEGRALS`."""
        return tuple(name for name in INTEGRALS if getattr(self, name) > 0)

    @property
    def active(self) -> bool:
        return bool(self.integrals) or self.steer > 0


def regularization_from_config(node: Any, model: str, *, has_ode: bool, steer_end: float | None = None,
                               no_steer_reason: str = "") -> Regularization:
    """The ``regularize`` config of a task's model, refused in one line where it cannot apply: a model without an
    ODE block (``has_ode`` false), STEER in a task whose solves have no free end time (``steer_end`` None, with
    ``no_steer_reason`` saying why), or a half-width b >= T = ``steer_end`` (t1 must stay after t0 = 0)."""
    node = node or {}
    regularization = Regularization(**{key: float(node.get(key, 0.0)) for key in ("kinetic", "jacobian", "steer")})
    if not regularization.active:
        return regularization
    if not has_ode:
        on = ", ".join(f"regularize.{k}" for k in ("kinetic", "jacobian", "steer") if getattr(regularization, k) > 0)
        raise ConfigError(f"{on} regularises an ODE block's dynamics, and model={model} has none; "
                          "train a neural ODE model or leave regularize out")
    if regularization.steer > 0:
        if steer_end is None:
            raise ConfigError(f"regularize.steer={regularization.steer:g} samples the end time of a solve, and "
                              f"{no_steer_reason}; use regularize.steer=0 (kinetic and jacobian apply here)")
        if regularization.steer >= steer_end:
            raise ConfigError(f"regularize.steer={regularization.steer:g} is invalid for model={model}: its solves end "
                              f"at T={steer_end:g}, and t1 ~ U[T - b, T + b] must stay after t0 = 0; use a b below "
                              f"{steer_end:g}, e.g. regularize.steer={steer_end / 2:g}")
    return regularization


def rademacher_like(z: torch.Tensor) -> torch.Tensor:
    """±1 with equal probability, from torch's global RNG (seeded and checkpointed by the trainer)."""
    return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1


def per_sample_mean_square(x: torch.Tensor) -> torch.Tensor:
    """``(batch, ...)`` -> ``(batch,)``: the mean of the squares of each sample's elements."""
    return x.pow(2).flatten(1).mean(1)


def rms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


class RegularizedDynamics(nn.Module):
    """``func`` on the state augmented with the integrands of ``integrals``: ``(*state, rates)``.

    ``probe`` is the Hutchinson probe of the Jacobian term, shaped like the regularised part of the state and fixed
    for the whole solve. ``func`` may give ``εᵀ∂f/∂z`` in closed form by defining
    ``derivative_and_probe_vjp(t, state, probe) -> (derivative, probe_vjp)`` (the CNF does); otherwise autograd
    computes it, keeping its graph when gradients are recorded (backpropagation through the solver, and the
    adjoint's backward pass, which differentiates these rates once more).
    """

    def __init__(self, func: Callable[..., Any], integrals: tuple[str, ...], tuple_state: bool,
                 probe: torch.Tensor | None = None) -> None:
        super().__init__()
        self.func = func
        self.integrals = integrals
        self.tuple_state = tuple_state
        self.probe = probe

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        parts = state[:-1]
        original = tuple(parts) if self.tuple_state else parts[0]
        if "jacobian" in self.integrals:
            derivative, probe_vjp = self._derivative_and_probe_vjp(t, original)
        else:
            derivative, probe_vjp = self.func(t, original), None
        velocity = derivative[0] if self.tuple_state else derivative
        rates = [per_sample_mean_square(velocity if name == "kinetic" else probe_vjp) for name in self.integrals]
        derivatives = tuple(derivative) if self.tuple_state else (derivative,)
        return (*derivatives, torch.stack(rates, -1))

    def _derivative_and_probe_vjp(self, t: torch.Tensor, original: Any) -> tuple[Any, torch.Tensor]:
        closed_form = getattr(self.func, "derivative_and_probe_vjp", None)
        if closed_form is not None:
            return closed_form(t, original, self.probe)
        recording = torch.is_grad_enabled()
        with torch.enable_grad():
            z = original[0] if self.tuple_state else original
            # Without a graph to extend (the adjoint's forward solve, or an input that needs no gradient), z is a
            # point to differentiate at: detached, since a view taken without grad mode may still claim requires_grad.
            z_in = z if recording and z.requires_grad else z.detach().requires_grad_(True)
            derivative = self.func(t, (z_in, *original[1:]) if self.tuple_state else z_in)
            velocity = derivative[0] if self.tuple_state else derivative
            probe_vjp = None
            if velocity.requires_grad:
                (probe_vjp,) = torch.autograd.grad(velocity, z_in, self.probe, create_graph=recording,
                                                   allow_unused=True)
        if probe_vjp is None:  # f does not depend on z
            probe_vjp = torch.zeros_like(z)
        if not recording:
            derivative = tuple(d.detach() for d in derivative) if self.tuple_state else derivative.detach()
        return derivative, probe_vjp

    def state_norm(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The adaptive solver's error norm without the integrals: the RMS norm of the model's state (the largest
        over the parts of a tuple state), what the solve of the unregularised state would use."""
        parts = state[:-1]
        return rms(parts[0]) if len(parts) == 1 else torch.stack([rms(p) for p in parts]).max()
