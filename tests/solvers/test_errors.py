"""Bad input and unsolvable problems fail with one clear line, never a hang."""
from __future__ import annotations

import math

import pytest
import torch

from neuralode import SOLVERS, SolveStats, odeint, odeint_adjoint
from neuralode.solvers import MaxNumStepsError, NonFiniteError

T = torch.tensor([0.0, 1.0])


def decay(t, y):
    return -y


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown method 'rk45'; valid methods: ") as e:
        odeint(decay, torch.ones(2), T, method="rk45")
    assert all(name in str(e.value) for name in SOLVERS)


@pytest.mark.parametrize("kw,match", [
    (dict(rtol=-1e-3), "rtol must be a finite number >= 0, got -0.001"),
    (dict(atol=-1.0), "atol must be a finite number >= 0"),
    (dict(rtol=float("nan")), "rtol must be a finite number >= 0"),
    (dict(rtol=0.0, atol=0.0), "cannot both be 0"),
])
def test_bad_tolerances(kw, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2), T, **kw)


def test_bad_adjoint_tolerance_is_named():
    with pytest.raises(ValueError, match="adjoint_rtol must be a finite number >= 0"):
        odeint_adjoint(decay, torch.ones(2), T, adjoint_rtol=-1.0, adjoint_params=())


@pytest.mark.parametrize("t,match", [
    (torch.tensor([0.0, 1.0, 0.5]), r"strictly increasing or strictly decreasing; got t\[1\]=1, t\[2\]=0.5"),
    (torch.tensor([0.0, 0.0, 1.0]), "strictly increasing"),
    (torch.tensor([[0.0, 1.0]]), "1-D tensor"),
    (torch.tensor([]), "non-empty"),
    (torch.tensor([0.0, float("inf")]), "t must be finite"),
])
def test_bad_times(t, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2), t)


def test_t_must_be_a_tensor():
    with pytest.raises(TypeError, match="t must be a 1-D tensor"):
        odeint(decay, torch.ones(2), [0.0, 1.0])


def test_max_num_steps_names_time_and_remedies():
    # Fast oscillation + tight tolerance + a tiny step budget.
    with pytest.raises(MaxNumStepsError) as e:
        odeint(lambda t, y: torch.stack([y[1], -1e4 * y[0]]), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 10.0]),
               options=dict(max_num_steps=50))
    msg = str(e.value)
    assert "max_num_steps=50 exceeded" in msg and "reached t=" in msg
    assert "loosen rtol/atol" in msg and "fixed-step method" in msg
    assert "\n" not in msg


def test_max_num_steps_reports_caller_time_in_reverse():
    with pytest.raises(MaxNumStepsError, match=r"reached t=9\.\d+ of \[10, 0\]"):
        odeint(lambda t, y: torch.stack([y[1], -1e4 * y[0]]), torch.tensor([1.0, 0.0]), torch.tensor([10.0, 0.0]),
               options=dict(max_num_steps=50))


def test_nonfinite_derivative_is_rejected_and_recovered():
    # Blows up (inf) whenever a stage state leaves [-5, 5], as an over-long step of y' = -50 y does.
    def f(t, y):
        return torch.where(y.abs() > 5, torch.full_like(y, float("inf")), -50 * y)

    stats_ys = odeint(f, torch.tensor([1.0]), torch.tensor([0.0, 0.2]), rtol=1e-8, atol=1e-10,
                      options=dict(first_step=1.0))
    assert stats_ys[-1].item() == pytest.approx(torch.exp(torch.tensor(-10.0)).item(), rel=1e-6)


def test_nonfinite_unrecoverable_raises_clearly():
    with pytest.raises(NonFiniteError, match="non-finite values"):
        odeint(lambda t, y: y * float("nan"), torch.ones(2), T)
    # Finite at t0, non-finite everywhere after it: shrinking the step cannot help.
    with pytest.raises(NonFiniteError, match=r"non-finite values near t=0 .*check the dynamics"):
        odeint(lambda t, y: torch.where(t > 0, torch.full_like(y, float("nan")), -y), torch.ones(2), T)


@pytest.mark.parametrize("method,options,match", [
    ("dopri5", dict(step_size=0.1), "'step_size' is not an option of method 'dopri5'; valid: first_step"),
    ("rk4", dict(first_step=0.1), "'first_step' is not an option of method 'rk4'; valid: step_size"),
])
def test_unknown_options_are_ignored_with_a_warning_as_torchdiffeq(method, options, match):
    with pytest.warns(UserWarning, match=match):
        y = odeint(decay, torch.ones(2), T, method=method, options=options)
    assert torch.allclose(y, odeint(decay, torch.ones(2), T, method=method))


@pytest.mark.parametrize("method,options,match", [
    ("rk4", dict(step_size=-0.1), r"options\['step_size'\] must be a positive finite number"),
    ("dopri5", dict(max_num_steps=0), r"options\['max_num_steps'\] must be a positive integer"),
    ("dopri5", dict(norm="l2"), r"options\['norm'\] must be a callable"),
])
def test_bad_options(method, options, match):
    with pytest.raises(ValueError, match=match):
        odeint(decay, torch.ones(2), T, method=method, options=options)


def test_bad_states_and_dynamics():
    with pytest.raises(TypeError, match="y0 must be floating point or complex"):
        odeint(decay, torch.ones(2, dtype=torch.long), T)
    # Mixed dtypes are fine (test_tolerances_dtypes.py), mixed devices are not.
    with pytest.raises(ValueError, match="must be on one device"):
        odeint(lambda t, y: y, (torch.ones(2), torch.ones(2, device="meta")), T)
    with pytest.raises(TypeError, match=r"func\(t, y\)\[1\] is complex .* but that part of the state is real"):
        odeint(lambda t, y: (y[0], y[1] * 1j), (torch.ones(2), torch.ones(2)), T)
    with pytest.raises(TypeError, match=r"func\(t, y\) is complex .* but the state is real"):
        odeint(lambda t, y: y * 1j, torch.ones(2), T)
    with pytest.raises(ValueError, match=r"func\(t, y\) has shape\(s\) \(3,\) but the state has shape\(s\) \(2,\)"):
        odeint(lambda t, y: torch.ones(3), torch.ones(2), T)


def test_adjoint_needs_parameters_of_a_plain_function():
    with pytest.raises(ValueError, match="pass adjoint_params"):
        odeint_adjoint(decay, torch.ones(2), T)
    with pytest.raises(ValueError, match=r"unknown adjoint_method 'nope'"):
        odeint_adjoint(decay, torch.ones(2), T, adjoint_method="nope", adjoint_params=())
    with pytest.raises(ValueError, match=r"adjoint_options\['norm'\] must be 'seminorm'"):
        odeint_adjoint(decay, torch.ones(2), T, adjoint_options=dict(norm="l1"), adjoint_params=())


def test_the_public_odeint_has_no_step_cap_unless_asked(float64_single_thread):
    """torchdiffeq has none: a long solve succeeds; max_num_steps still caps when given."""
    stats = SolveStats()
    # The case: adaptive_heun at torchdiffeq's default tolerances on t in [1, 8], about 13,000 steps.
    y = odeint(lambda t, y: -y, torch.tensor([1.0]), torch.tensor([1.0, 8.0]), rtol=1e-7, atol=1e-9,
               method="adaptive_heun", stats=stats)
    assert stats.steps_accepted_forward > 10_000 and float(y[-1]) == pytest.approx(math.exp(-7), rel=1e-5)
    with pytest.raises(MaxNumStepsError, match="max_num_steps=100 exceeded"):
        odeint(lambda t, y: -y, torch.tensor([1.0]), torch.tensor([1.0, 8.0]), rtol=1e-7, atol=1e-9,
               method="adaptive_heun", options=dict(max_num_steps=100))


def test_a_step_at_min_step_is_accepted(float64_single_thread):
    """As in torchdiffeq: at min_step the step is taken whatever its error estimate says."""
    stats = SolveStats()
    y = odeint(lambda t, y: -50 * y, torch.tensor([1.0]), torch.tensor([0.0, 1.0]), rtol=1e-12, atol=1e-14,
               method="dopri5", options=dict(min_step=0.05, first_step=0.05), stats=stats)
    assert stats.steps_rejected_forward == 0 and stats.steps_accepted_forward == 20
    assert torch.isfinite(y).all()


def test_errors_form_one_hierarchy_and_keep_their_builtin_bases():
    from neuralode.errors import CheckpointError, ConfigError, DataError, NeuralodeError
    from neuralode.solvers import SolverError, StepUnderflowError

    for error, builtin in ((MaxNumStepsError, RuntimeError), (NonFiniteError, FloatingPointError),
                           (StepUnderflowError, NonFiniteError), (ConfigError, ValueError), (DataError, ValueError),
                           (CheckpointError, ValueError)):
        assert issubclass(error, NeuralodeError) and issubclass(error, builtin)
    assert issubclass(MaxNumStepsError, SolverError) and issubclass(NonFiniteError, SolverError)


def test_step_size_underflow_has_its_own_error():
    from neuralode.solvers import StepUnderflowError

    # Far from t = 0 float64 time cannot represent the steps this fast decay needs.
    with pytest.raises(StepUnderflowError, match=r"step size underflow at t=1e\+16"):
        odeint(lambda t, y: -1e3 * y, torch.ones(1), torch.tensor([1e16, 1e16 + 100.0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_half_precision_states_are_refused_in_one_line(dtype, method):
    """bf16 dopri5 on y' = -y ended at 1,048,576 instead of 0.368: refused, with what to do instead."""
    with pytest.raises(TypeError, match=f"y0 must be floating point .*got {dtype}; half precision cannot .*float32"):
        odeint(lambda t, y: -y, torch.ones(1, dtype=dtype), torch.tensor([0.0, 1.0]), method=method)
    with pytest.raises(TypeError, match=r"y0 must be floating point"):
        odeint(lambda t, y: tuple(-p for p in y), (torch.ones(1), torch.ones(1, dtype=dtype)), torch.tensor([0.0, 1.0]))


def test_a_tiny_fixed_step_over_a_long_span_is_refused_at_once():
    """rk4 with step_size=1e-9 over [0, 1e4] built a list of grid points without bound (2.7 GB in 8 s)."""
    with pytest.raises(ValueError, match=r"step_size'\]=1e-09 over \[0, 10000\] makes 1e\+13 steps, more than the "
                                         r"10,000,000 a fixed-grid solve takes"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1e4]), method="rk4", options=dict(step_size=1e-9))


def test_min_step_above_max_step_is_refused():
    with pytest.raises(ValueError, match=r"min_step=0.5 is above max_step=0.1; min_step must be <= max_step"):
        odeint(lambda t, y: -y, torch.ones(1), T, options=dict(min_step=0.5, max_step=0.1))


def test_an_event_fn_returning_nan_fails_instead_of_hanging():
    y0, t = torch.ones(1), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match=r"event_fn\(t0, y0\) returned \[nan\]; it must be finite"):
        odeint(lambda t, y: -y, y0, t, event_fn=lambda t, y: y.sum() * float("nan"))
    # Finite at t0, NaN later along the solution.
    with pytest.raises(NonFiniteError, match=r"event_fn returned nan at t=.*; it must stay finite"):
        odeint(lambda t, y: -y, y0, t, event_fn=lambda t, y: torch.where(t > 0.5, float("nan"), 1.0) * y.sum())


@pytest.mark.parametrize("returned, got", [("x", "str"), (1.0, "float"),
                                           (torch.tensor(1), r"a torch.int64 tensor of shape \(\)")])
def test_an_event_fn_returning_no_float_tensor_gets_one_line(returned, got):
    with pytest.raises(TypeError, match=rf"event_fn\(t, y\) must return a real floating-point tensor .*, got {got}$"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), event_fn=lambda t, y: returned)
