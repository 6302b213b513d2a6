"""options['compile']=True: the compiled step takes the eager loop's steps and gives its results.

The fast tests run the compiled loop with the step function run eagerly (torch.compile made to fail, which is also
the fallback path) or traced with the "aot_eager" backend (no code generation); the slow ones compile it with
inductor, as users get it, for every explicit adaptive method.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from solver_helpers import ADAPTIVE, MLPDynamics

import neuralode
from neuralode.solvers import SolveStats, compiled


@pytest.fixture
def fresh_steps(monkeypatch):
    """No compiled step or warning left over from another test."""
    monkeypatch.setattr(compiled, "_STEPS", {})
    monkeypatch.setattr(compiled, "_WARNED", set())


@pytest.fixture
def no_compiler(monkeypatch, fresh_steps):
    """torch.compile as where it is unavailable: the compiled function fails on its first call."""
    def unavailable(fn, **kwargs):
        def fail(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return fail
    monkeypatch.setattr(torch, "compile", unavailable)


def _solve(method: str, compile: bool, mode: str, dtype: torch.dtype = torch.float64, rtol: float = 1e-6,
           options: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, int]]:
    """States at 5 times, the gradient of their sum of squares w.r.t. the parameters (mode "direct" or "adjoint";
    None for "forward") and the solve's counts."""
    func = MLPDynamics(dim=2, hidden=16).to(dtype)
    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.2], [-0.7, 0.9]], dtype=dtype)
    t = torch.linspace(0, 2, 5, dtype=dtype)
    stats = SolveStats()
    kw = dict(rtol=rtol, atol=rtol / 10, method=method, options={**(options or {}), "compile": compile}, stats=stats)
    if mode == "forward":
        with torch.no_grad():
            return neuralode.odeint(func, y0, t, **kw), None, stats.as_dict()
    solve = neuralode.odeint_adjoint if mode == "adjoint" else neuralode.odeint
    ys = solve(func, y0, t, **kw)
    grads = torch.autograd.grad(ys.pow(2).sum(), list(func.parameters()))
    return ys.detach(), torch.cat([g.reshape(-1) for g in grads]), stats.as_dict()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _assert_agree(method: str, mode: str, dtype: torch.dtype, within: float, controller: str = "integral",
                  rtol: float = 1e-6) -> None:
    options = {"controller": controller}
    ys, grad, counts = _solve(method, True, mode, dtype, rtol, options)
    ys_eager, grad_eager, counts_eager = _solve(method, False, mode, dtype, rtol, options)
    assert counts == counts_eager  # the same steps (accepted and rejected) and evaluations, forward and backward
    assert counts["steps_accepted_forward"] > 2
    assert _relative(ys, ys_eager) <= within
    if grad is not None:
        assert _relative(grad, grad_eager) <= within


@pytest.mark.parametrize("method", ADAPTIVE)
def test_without_a_compiler_one_warning_then_eager_steps_with_the_eager_results(no_compiler, method: str):
    """The fallback: one warning, then the step function runs eagerly; in float64 it gives the eager loop's
    steps and results to rounding, forward, with direct gradients and with the adjoint, under both controllers."""
    with pytest.warns(UserWarning, match=rf"options\['compile'\]: the {method} step could not be compiled "
                                         r"\(RuntimeError: no C\+\+ compiler found\); taking eager steps"):
        _solve(method, True, "forward")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        for mode in ("forward", "direct", "adjoint"):
            _assert_agree(method, mode, torch.float64, 1e-12)
        _assert_agree(method, "direct", torch.float64, 1e-12, controller="pi")


def test_compile_option_must_be_a_bool():
    with pytest.raises(ValueError, match=r"options\['compile'\] must be True or False, got 'yes'"):
        _solve("dopri5", "yes", "forward")  # type: ignore[arg-type]


@pytest.mark.parametrize("controller", ["integral", "pi"])
def test_step_t_and_step_hooks_take_the_eager_steps(no_compiler, controller: str):
    """Compiled steps run in the one adaptive loop, so its step_t landings and step hooks serve them too: the same
    steps, hook calls and results as eager steps."""
    def solve(compile: bool) -> tuple[torch.Tensor, list[tuple[str, float, float]], dict[str, int]]:
        func = MLPDynamics(dim=2, hidden=16).double()
        calls: list[tuple[str, float, float]] = []
        for hook in ("step", "accept_step", "reject_step"):
            setattr(func, f"callback_{hook}", lambda t0, y0, dt, hook=hook: calls.append((hook, float(t0), float(dt))))
        stats = SolveStats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback's warning
            ys = neuralode.odeint(func, torch.tensor([0.5, -0.3], dtype=torch.float64),
                                  torch.linspace(0, 2, 5, dtype=torch.float64), rtol=1e-6, atol=1e-7, method="dopri5",
                                  options={"compile": compile, "step_t": [0.7, 1.3], "controller": controller},
                                  stats=stats)
        return ys.detach(), calls, stats.as_dict()

    ys, calls, counts = solve(True)
    ys_eager, calls_eager, counts_eager = solve(False)
    assert counts == counts_eager and counts["steps_accepted_forward"] > 2
    assert [c[0] for c in calls] == [c[0] for c in calls_eager]
    assert torch.tensor([c[1:] for c in calls]).allclose(torch.tensor([c[1:] for c in calls_eager]), rtol=1e-12)
    assert any(abs(t0 - 0.7) < 1e-12 for _, t0, _ in calls)  # a step started on the step_t time
    assert _relative(ys, ys_eager) <= 1e-12


def test_event_solve_takes_the_eager_steps(no_compiler):
    def solve(compile: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        func = MLPDynamics(dim=2, hidden=16).double()
        stats = SolveStats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallback's warning
            event_t, ys = neuralode.odeint_event(func, torch.tensor([0.5, -0.3], dtype=torch.float64),
                                                 torch.tensor(0.0, dtype=torch.float64),
                                                 event_fn=lambda t, y: t - 1.5 + y[0] * 0.0, rtol=1e-6, atol=1e-7,
                                                 method="dopri5", options={"compile": compile}, stats=stats)
        return event_t.detach(), ys.detach(), stats.as_dict()

    event_t, ys, counts = solve(True)
    event_t_eager, ys_eager, counts_eager = solve(False)
    assert counts == counts_eager
    # The event is located by bisection on the dense output, whose rounding moves the located time (and the state
    # there) by ~1e-12.
    assert abs(float(event_t) - 1.5) < 1e-6 and abs(float(event_t - event_t_eager)) < 1e-10
    assert _relative(ys, ys_eager) <= 1e-10


def test_solves_with_jump_t_take_eager_steps_after_one_warning(fresh_steps):
    options = {"jump_t": [0.7]}
    with pytest.warns(UserWarning, match=r"options\['compile'\] does not cover jump_t: dopri5 takes eager steps"):
        ys, _, counts = _solve("dopri5", True, "forward", options=options)
    ys_eager, _, counts_eager = _solve("dopri5", False, "forward", options=options)
    assert torch.equal(ys, ys_eager) and counts == counts_eager


def test_traced_step_counts_evaluations_and_is_traced_once(monkeypatch, fresh_steps):
    """The step traced by dynamo (aot_eager: no code generation): its evaluations of f are counted once each, a
    second solve (a new closure around the same dynamics) reuses the trace, and the adjoint's backward dynamics
    (a torch.autograd.grad inside) are traced too, without falling back."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")
    counters.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_agree("dopri5", "forward", torch.float64, 1e-12)
        graphs = counters["stats"]["unique_graphs"]
        _assert_agree("dopri5", "forward", torch.float64, 1e-12)
        assert counters["stats"]["unique_graphs"] == graphs == 1
        _assert_agree("dopri5", "adjoint", torch.float64, 1e-12)
    assert not compiled._STEPS[next(iter(compiled._STEPS))].failed
    kinds = compiled.compile_times()
    assert any(kind.startswith("dopri5 (6,) float64") for kind in kinds)
    assert any(kind.startswith("dopri5 (94,) float64") for kind in kinds)  # [y, dL/dy, dL/dparams]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["direct", "adjoint"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_inductor_step_takes_the_eager_steps_in_float32(fresh_steps, method: str, mode: str):
    """Compiled with inductor, in float32: the same steps; results within the solve's tolerance (rtol 1e-5). Fused
    arithmetic rounds differently, and a step whose error ratio is far below 1 (the first one) has an error estimate
    made of rounding, so the two loops may size later steps slightly differently."""
    _assert_agree(method, mode, torch.float32, 1e-5, rtol=1e-5)


@pytest.mark.slow
def test_inductor_step_agrees_to_rounding_in_float64(fresh_steps):
    _assert_agree("dopri5", "direct", torch.float64, 1e-12)
