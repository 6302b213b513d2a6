"""Gradients: gradcheck through odeint and odeint_adjoint, adjoint vs direct, memory, seminorm."""
from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
import torchdiffeq
from solver_helpers import MLPDynamics
from torch import nn

from neuralode import SolveStats, odeint, odeint_adjoint
from neuralode.solvers.adjoint import module_parameters


class TinyDynamics(nn.Module):
    """f(t, y) = tanh(W y) + b t: small enough for gradcheck's finite differences."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[-0.5, 0.3], [0.2, -0.4]]))
        self.b = nn.Parameter(torch.tensor([0.1, -0.2]))

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T) + self.b * t


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def test_gradcheck_odeint_direct():
    # At a tight tolerance the step sequence is locally constant, so backprop through the adaptive
    # solver matches finite differences of the solution.
    func = TinyDynamics()
    t = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    y0 = torch.tensor([[0.3, -0.7]], requires_grad=True)

    def run(y0, w, b, t):
        return odeint(lambda s, y: torch.tanh(y @ w.T) + b * s, y0, t, rtol=1e-12, atol=1e-12)

    assert torch.autograd.gradcheck(run, (y0, func.w, func.b, t), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_gradcheck_fixed_step_is_exact(method):
    # Backprop through a fixed grid is the exact derivative of the discrete solution.
    w = torch.tensor([[-0.5, 0.3], [0.2, -0.4]], requires_grad=True)
    y0 = torch.tensor([0.3, -0.7], requires_grad=True)
    t = torch.tensor([0.0, 0.35, 0.97], requires_grad=True)  # 0.35: off the grid, away from its kinks
    run = lambda y0, w, t: odeint(lambda s, y: torch.tanh(w @ y) * s, y0, t, method=method,  # noqa: E731
                                  options=dict(step_size=0.1))
    assert torch.autograd.gradcheck(run, (y0, w, t))


def test_gradcheck_odeint_adjoint():
    func = TinyDynamics()
    t = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    y0 = torch.tensor([[0.3, -0.7]], requires_grad=True)

    def run(y0, t, *params):
        return odeint_adjoint(func, y0, t, rtol=1e-12, atol=1e-12, adjoint_params=params)

    assert torch.autograd.gradcheck(run, (y0, t, func.w, func.b), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8"])
def test_adjoint_matches_direct(method):
    func = MLPDynamics(dim=3, hidden=8)
    y0 = torch.randn(5, 3, requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0, 1.5], requires_grad=True)
    params = [y0, t, *func.parameters()]
    target = torch.randn(4, 5, 3)
    g_direct = _grads(((odeint(func, y0, t, rtol=1e-10, atol=1e-10, method=method) - target) ** 2).sum(), params)
    g_adj = _grads(((odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-10, method=method) - target) ** 2).sum(),
                   params)
    for a, b in zip(g_adj, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adjoint_time_gradients_analytic():
    # y' = -y: y(t1) = y0 exp(-(t1 - t0)), so dy1/dt1 = -y1 and dy1/dt0 = +y1.
    t = torch.tensor([0.2, 1.5], requires_grad=True)
    y0 = torch.tensor([2.0], requires_grad=True)
    ys = odeint_adjoint(lambda s, y: -y, y0, t, rtol=1e-12, atol=1e-12, adjoint_params=())
    ys[-1].sum().backward()
    y1 = 2.0 * math.exp(-1.3)
    torch.testing.assert_close(t.grad, torch.tensor([y1, -y1]), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y0.grad, torch.tensor([math.exp(-1.3)]), rtol=1e-8, atol=1e-10)


def test_adjoint_reverse_time_and_tuple_state():
    func = MLPDynamics(dim=2, hidden=8)

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = func

        def forward(self, s, state):
            x, v = state
            return v, self.f(s, x) - 0.1 * v

    pair = Pair()
    x0, v0 = torch.randn(3, 2, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    t = torch.tensor([1.0, 0.3, -0.5])
    params = [x0, v0, *pair.parameters()]
    xd, vd = odeint(pair, (x0, v0), t, rtol=1e-10, atol=1e-10)
    g_direct = _grads(xd.pow(2).sum() + vd.sin().sum(), params)
    xa, va = odeint_adjoint(pair, (x0, v0), t, rtol=1e-10, atol=1e-10)
    g_adj = _grads(xa.pow(2).sum() + va.sin().sum(), params)
    for a, b in zip(g_adj, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _saved_bytes(fn) -> int:
    """Bytes of tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(x):
        total[0] += x.numel() * x.element_size()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return total[0]


def test_adjoint_memory_is_flat_in_steps_direct_grows():
    func = MLPDynamics(dim=16, hidden=64)
    y0 = torch.randn(32, 16, requires_grad=True)
    kw = dict(method="rk4")
    direct, adjoint = [], []
    for n_steps in (10, 40):
        opts = dict(step_size=1.0 / n_steps)
        t = torch.tensor([0.0, 1.0])
        direct.append(_saved_bytes(lambda: odeint(func, y0, t, options=opts, **kw)))
        adjoint.append(_saved_bytes(lambda: odeint_adjoint(func, y0, t, options=opts, **kw)))
    assert adjoint[0] == adjoint[1]
    # Direct backprop keeps every stage's activations: 4x the steps, ~4x the bytes.
    assert 3.5 < direct[1] / direct[0] < 4.5
    assert adjoint[1] < direct[0] / 5


def test_seminorm_lowers_backward_nfe():
    # Not a law (torchdiffeq's seminorm costs more on some seeds of this problem): a measured case, fixed seeds.
    func = MLPDynamics(dim=4, hidden=32, seed=5)
    y0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 2.0])
    nfe = {}
    grads = {}
    for norm in (None, "seminorm"):
        stats = SolveStats()
        ys = odeint_adjoint(func, y0, t, rtol=1e-6, atol=1e-6,
                            adjoint_options=None if norm is None else dict(norm=norm), stats=stats)
        grads[norm] = _grads(ys[-1].pow(2).sum(), list(func.parameters()))
        nfe[norm] = stats.nfe_backward
    assert nfe["seminorm"] < nfe[None], nfe
    for a, b in zip(grads["seminorm"], grads[None]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_adjoint_stats_filled_during_backward():
    func = MLPDynamics(dim=2)
    stats = SolveStats()
    ys = odeint_adjoint(func, torch.randn(3, 2), torch.tensor([0.0, 0.5, 1.0]), rtol=1e-6, atol=1e-6,
                        stats=stats)
    assert stats.nfe_forward > 0 and stats.steps_accepted_forward > 0
    assert stats.nfe_backward == 0
    ys.sum().backward()
    assert stats.nfe_backward > 0 and stats.steps_accepted_backward > 0


def test_adjoint_with_different_backward_method_and_tolerance():
    func = MLPDynamics(dim=2)
    y0 = torch.randn(3, 2, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    ref = _grads(odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].sum(), [y0])[0]
    ys = odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-10, adjoint_method="rk4",
                        adjoint_options=dict(step_size=0.01))
    torch.testing.assert_close(_grads(ys[-1].sum(), [y0])[0], ref, rtol=1e-7, atol=1e-8)


def test_adjoint_float32_matches_direct():
    func = MLPDynamics(dim=3, hidden=8).float()
    y0 = torch.randn(4, 3, dtype=torch.float32, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float32)
    params = [y0, *func.parameters()]
    g_direct = _grads(odeint(func, y0, t, rtol=1e-5, atol=1e-6)[-1].pow(2).sum(), params)
    g_adj = _grads(odeint_adjoint(func, y0, t, rtol=1e-5, atol=1e-6)[-1].pow(2).sum(), params)
    for a, b in zip(g_adj, g_direct):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def _adjoint_norm_calls(solve, func, y0, **kw) -> list[list[tuple]]:
    """(shape, dtype) of each entry of every tuple a callable adjoint norm is given during backward."""
    calls = []

    def norm(entries):
        calls.append([(tuple(e.shape), e.dtype) for e in entries])
        return max(e.abs().max() if e.numel() else e.new_zeros(()) for e in entries)

    ys = solve(func, y0, torch.tensor([0.0, 0.5, 1.0]), rtol=1e-6, atol=1e-6, adjoint_options=dict(norm=norm), **kw)
    sum(y.sum() for y in (ys if isinstance(ys, tuple) else (ys,))).backward()
    return calls


@pytest.mark.parametrize("tuple_state", [False, True])
def test_adjoint_norm_gets_torchdiffeqs_tuple(tuple_state):
    # torchdiffeq calls a user adjoint norm with (t, *y, *adj_y, *adj_params): t a scalar, y and adj_y split into
    # the parts of a tuple state, each parameter adjoint shaped like its parameter.
    func = MLPDynamics(dim=3, hidden=4)
    if tuple_state:
        class Pair(nn.Module):
            def __init__(self):
                super().__init__()
                self.f = func

            def forward(self, t, state):
                x, v = state
                return v, self.f(t, x) - v

        module, y0 = Pair(), (torch.randn(2, 3), torch.randn(2, 3))
    else:
        module, y0 = func, torch.randn(2, 3)
    ours = _adjoint_norm_calls(odeint_adjoint, module, y0)
    ref = _adjoint_norm_calls(torchdiffeq.odeint_adjoint, module, y0)
    assert ours and ref
    assert {tuple(c) for c in ours} == {tuple(c) for c in ref}
    parts = [tuple(p.shape) for p in (y0 if tuple_state else (y0,))]
    assert ours[0] == [((), torch.float64)] + [(s, torch.float64) for s in parts * 2] + \
        [(tuple(p.shape), torch.float64) for p in func.parameters()]


def _cpu_replica(module: nn.Module) -> nn.Module:
    """A copy of ``module`` set up as ``torch.nn.parallel.replicate`` sets up an ``nn.DataParallel`` replica (which
    needs GPUs): ``_parameters`` emptied, each parameter replaced by a non-leaf copy stored as a plain attribute
    and listed in ``_former_parameters``."""
    modules = list(module.modules())
    replicas = {m: m._replicate_for_data_parallel() for m in modules}
    for m, replica in replicas.items():
        replica._former_parameters = OrderedDict()
        for key, child in m._modules.items():
            setattr(replica, key, replicas[child])
        for key, param in m._parameters.items():
            copy = param * 1  # replicate()'s broadcast copies are non-leaf tensors that require grad
            setattr(replica, key, copy)
            replica._former_parameters[key] = copy
    return replicas[module]


def test_adjoint_finds_the_parameters_of_a_data_parallel_replica():
    func = MLPDynamics(dim=3, hidden=8)
    replica = _cpu_replica(func)
    assert list(replica.parameters()) == []
    found = module_parameters(replica)
    assert [id(p) for p in found] == [id(p) for p in torchdiffeq._impl.adjoint.find_parameters(replica)]
    assert len(found) == 4 and all(not p.is_leaf for p in found)
    y0 = torch.randn(2, 3)
    t = torch.tensor([0.0, 1.0])
    g_adj = _grads(odeint_adjoint(replica, y0, t, rtol=1e-10, atol=1e-10)[-1].pow(2).sum(), list(func.parameters()))
    g_direct = _grads(odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].pow(2).sum(), list(func.parameters()))
    for a, b in zip(g_adj, g_direct):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_adjoint_params_frozen_repeated_and_generator():
    func = MLPDynamics(dim=3, hidden=8)
    func.l2.bias.requires_grad_(False)
    y0 = torch.randn(2, 3)
    t = torch.tensor([0.0, 1.0])
    weights = [func.l1.weight, func.l2.weight]
    ref = _grads(odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].pow(2).sum(), weights)
    # A frozen parameter is left out (as torchdiffeq, which warns when a callable adjoint norm would have seen it).
    with pytest.warns(UserWarning, match="do not require grad"):
        ys = odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-10, adjoint_params=(p for p in func.parameters()),
                            adjoint_options=dict(norm=lambda entries: max(e.abs().max() for e in entries)))
    assert ys.requires_grad
    # A tensor given twice gets the gradient of direct backprop. (torchdiffeq 0.2.5 integrates it once per
    # occurrence and autograd adds both up: twice the gradient.)
    ys = odeint_adjoint(func, y0, t, rtol=1e-10, atol=1e-10, adjoint_params=[*weights, func.l1.weight])
    for a, b in zip(_grads(ys[-1].pow(2).sum(), weights), ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="adjoint_params must hold tensors, got float at index 1"):
        odeint_adjoint(func, y0, t, adjoint_params=[func.l1.weight, 0.5])
