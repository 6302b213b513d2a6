"""Fixed-grid Adams methods: coefficients, exactness, order, and torchdiffeq's explicit/implicit_adams as oracle."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torchdiffeq
from solver_helpers import Counting, MLPDynamics
from torchdiffeq._impl.fixed_adams import _BASHFORTH_DIVISOR, _MOULTON_DIVISOR

from neuralode import SOLVERS, SolveStats, odeint
from neuralode.solvers.adams import MAX_ORDER, adams_coefficients

METHODS = ["explicit_adams", "implicit_adams", "fixed_adams"]



@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("steps", range(1, MAX_ORDER + 1))
def test_coefficients_integrate_polynomials_exactly(steps, implicit):
    # A k-term Adams formula is exact for y' = p(t) with deg p < k: sum_i beta_i p(node_i) = integral_0^1 p
    # (step h = 1 from t0 = 0; Bashforth nodes 0, -1, ..., Moulton nodes 1, 0, -1, ...).
    betas = adams_coefficients(steps, implicit)
    nodes = [(1 if implicit else 0) - i for i in range(steps)]
    for degree in range(steps):
        assert sum(b * Fraction(x) ** degree for b, x in zip(betas, nodes)) == Fraction(1, degree + 1)


@pytest.mark.parametrize("steps", range(2, MAX_ORDER + 1))
def test_coefficients_match_torchdiffeq_tables(steps):
    # torchdiffeq's 1-term Moulton entry (1/11) is never used by its solver, so it is not compared.
    ours_b = torch.tensor([float(b) for b in adams_coefficients(steps, False)], dtype=torch.float64)
    ours_m = torch.tensor([float(b) for b in adams_coefficients(steps, True)], dtype=torch.float64)
    torch.testing.assert_close(ours_b, _BASHFORTH_DIVISOR[steps], rtol=1e-15, atol=0)
    torch.testing.assert_close(ours_m, _MOULTON_DIVISOR[steps], rtol=1e-15, atol=0)


def test_registry_names():
    assert SOLVERS["fixed_adams"] is SOLVERS["implicit_adams"]
    assert not SOLVERS["explicit_adams"].adaptive and not SOLVERS["implicit_adams"].adaptive


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_exact_on_quadratic_dynamics(method):
    # The RK4 start-up and the 3-step Bashforth / 4-step Moulton formulas all integrate a quadratic exactly.
    t = torch.linspace(0.0, 2.0, 5)
    ys = odeint(lambda t, y: (3 * t ** 2 - 2 * t + 1).expand_as(y), torch.tensor([0.5]), t, method=method,
                options=dict(step_size=0.1, max_order=4))
    torch.testing.assert_close(ys[:, 0], 0.5 + t ** 3 - t ** 2 + t, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:.*converge")  # max_iters=2: both solvers warn alike
@pytest.mark.parametrize("method, options", [
    ("explicit_adams", dict(step_size=0.05)),
    ("explicit_adams", dict(step_size=0.05, max_order=6)),
    ("explicit_adams", None),
    ("implicit_adams", dict(step_size=0.05)),
    ("implicit_adams", dict(step_size=0.05, max_order=6, max_iters=2)),
    ("implicit_adams", dict(step_size=0.05, interp="cubic")),
    ("implicit_adams", dict(step_size=0.05, perturb=True)),
    ("implicit_adams", None),
    ("fixed_adams", dict(step_size=0.1, max_order=5)),
    ("explicit_adams", dict(step_size=0.05, max_order=7.0)),  # torchdiffeq takes an integral float
])
def test_agrees_with_torchdiffeq_and_uses_no_more_nfe(method, options):
    func = Counting(MLPDynamics(dim=3, hidden=8))
    y0 = torch.tensor([0.3, -0.2, 0.5])
    t = torch.linspace(0.0, 2.0, 21)
    with torch.no_grad():
        expected = torchdiffeq.odeint(func, y0, t, method=method, options=options)
        oracle_nfe, func.calls = func.calls, 0
        stats = SolveStats()
        ys = odeint(func, y0, t, method=method, options=options, stats=stats)
    torch.testing.assert_close(ys, expected, rtol=1e-11, atol=1e-12)
    assert stats.nfe_forward == func.calls <= oracle_nfe


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_reverse_time_and_tuple_state_match_torchdiffeq(method):
    t = torch.linspace(1.0, -1.0, 5)
    y0 = (torch.tensor([1.0, 0.5]), torch.tensor(0.2))
    func = lambda t, s: (torch.stack([s[0][1], -s[0][0]]) * torch.cos(t), -s[1] * s[0].sum())  # noqa: E731
    # max_order 6: at the default 12 the explicit method is unstable here and rounding differences grow.
    options = dict(step_size=0.05, max_order=6)
    expected = torchdiffeq.odeint(func, y0, t, method=method, options=options)
    got = odeint(func, y0, t, method=method, options=options)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_gradients_by_backprop_match_torchdiffeq(method):
    func = MLPDynamics(dim=2, hidden=8)
    t = torch.linspace(0.0, 1.0, 4)
    grads = []
    for solve in (torchdiffeq.odeint, odeint):
        y0 = torch.tensor([0.4, -0.3], requires_grad=True)
        loss = solve(func, y0, t, method=method, options=dict(step_size=0.05)).pow(2).sum()
        grads.append(torch.autograd.grad(loss, (y0, *func.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# Global order on a fixed grid: explicit_adams is limited to max_order - 1 by its Bashforth steps and to 4 by the
# single 3-step Bashforth step of the start-up; implicit_adams (corrector iterated to convergence) to max_order
# by its Moulton steps and to 5 by the start-up's 4-step Moulton step.
@pytest.mark.parametrize("method, max_order, order", [
    ("explicit_adams", 4, 3), ("explicit_adams", 8, 4), ("implicit_adams", 4, 4), ("implicit_adams", 8, 5),
])
def test_order_of_convergence(method, max_order, order):
    t = torch.tensor([0.0, 2.0])
    exact = 0.7 * math.exp(math.sin(2.0))
    options = dict(max_order=max_order, **({"max_iters": 30} if method == "implicit_adams" else {}))
    errors = []
    for n in (80, 160, 320):
        ys = odeint(lambda t, y: torch.cos(t) * y, torch.tensor([0.7]), t, rtol=1e-14, atol=1e-15, method=method,
                    options=dict(step_size=2.0 / n, **options))
        errors.append(abs(ys[-1, 0].item() - exact))
    observed = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(order - 0.3 < p < order + 0.5 for p in observed), observed


@pytest.mark.parametrize("max_order", [1, 3])
def test_low_max_order_is_rk4_and_warns(max_order):
    func = MLPDynamics(dim=2, hidden=8)
    y0, t = torch.tensor([0.4, -0.3]), torch.linspace(0.0, 1.0, 3)
    with pytest.warns(UserWarning, match="below 4"):
        ys = odeint(func, y0, t, method="explicit_adams", options=dict(step_size=0.1, max_order=max_order))
    torch.testing.assert_close(ys, odeint(func, y0, t, method="rk4", options=dict(step_size=0.1)), rtol=0, atol=0)


def test_unconverged_corrector_warns():
    with pytest.warns(UserWarning, match="did not converge"):
        odeint(MLPDynamics(dim=2, hidden=8), torch.tensor([0.4, -0.3]), torch.linspace(0.0, 1.0, 3),
               rtol=1e-14, atol=1e-16, method="implicit_adams", options=dict(step_size=0.1, max_iters=1))


@pytest.mark.parametrize("options, match", [
    (dict(max_order=13), r"max_order.*\[1, 12\]"),
    (dict(max_order=4.5), r"max_order.*integer"),
    (dict(max_iters=0), r"max_iters.*positive integer"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        odeint(lambda t, y: -y, torch.tensor([1.0]), torch.linspace(0.0, 1.0, 3), method="implicit_adams",
               options=options)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_event_matches_torchdiffeq(method):
    # A ball thrown up from 1 m with drag; the event is its landing.
    func = lambda t, s: torch.stack([s[1], -9.81 - 0.1 * s[1] * s[1].abs()])  # noqa: E731
    event_fn = lambda t, s: s[0]  # noqa: E731
    y0, t = torch.tensor([1.0, 10.0]), torch.tensor([0.0, 5.0])
    options = dict(step_size=0.01, max_order=6)
    expected_t, expected = torchdiffeq.odeint(func, y0, t, method=method, options=options, event_fn=event_fn)
    event_t, ys = odeint(func, y0, t, method=method, options=options, event_fn=event_fn)
    torch.testing.assert_close(event_t, expected_t, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ys, expected, rtol=1e-8, atol=1e-8)


def test_step_callback_sees_torchdiffeqs_steps():
    seen = {}
    for name, solve in (("torchdiffeq", torchdiffeq.odeint), ("neuralode", odeint)):
        func = MLPDynamics(dim=2, hidden=8)
        calls = seen.setdefault(name, [])
        func.callback_step = lambda t0, y0, dt, calls=calls: calls.append((float(t0), float(dt), y0.clone()))
        solve(func, torch.tensor([0.4, -0.3]), torch.linspace(0.0, 1.0, 3), method="implicit_adams",
              options=dict(step_size=0.1))
    assert len(seen["neuralode"]) == len(seen["torchdiffeq"]) == 10
    for (t_a, dt_a, y_a), (t_b, dt_b, y_b) in zip(seen["neuralode"], seen["torchdiffeq"]):
        assert t_a == pytest.approx(t_b, abs=1e-15) and dt_a == pytest.approx(dt_b, abs=1e-15)
        torch.testing.assert_close(y_a, y_b, rtol=1e-12, atol=1e-14)
