"""Per-element and per-part tolerances, mixed-dtype tuples and complex states, with torchdiffeq as the oracle."""
from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from solver_helpers import MLPDynamics
from test_stats import HostReads

from neuralode import SolveStats, odeint, odeint_adjoint
from neuralode.solvers.odeint import StateStructure, check_tolerance

T = torch.linspace(0.0, 2.0, 5)
# Per-row rtol (broadcast against the (4, 3) state) and per-column atol.
ROW_RTOL = torch.tensor([[1e-9], [1e-5], [1e-7], [1e-3]])
COLUMN_ATOL = torch.tensor([1e-10, 1e-6, 1e-8])


def _torchdiffeq_counted(func, y0, t, **kw):
    """torchdiffeq's solution and its number of function evaluations."""
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return func(t, y)

    with torch.no_grad():
        return torchdiffeq.odeint(counted, y0, t, **kw), calls[0]


def _scaled(tol, factor):
    return tuple(x * factor for x in tol) if isinstance(tol, tuple) else tol * factor


def _assert_no_more_work_at_equal_error(func, y0, exact, error, nfe, rtol, atol, method, options=None):
    """torchdiffeq cannot reach our error with fewer NFE: its tolerances are halved until it is as accurate as we
    are (then it must have spent at least our NFE) or spends at least our NFE (then it is no more accurate)."""
    for k in range(20):
        factor = 2.0 ** -k
        ref, ref_nfe = _torchdiffeq_counted(func, y0, T, rtol=_scaled(rtol, factor), atol=_scaled(atol, factor),
                                            method=method, options=options)
        ref_error = max((r - e).abs().max().item() for r, e in zip(ref, exact)) if isinstance(ref, tuple) \
            else (ref - exact).abs().max().item()
        if ref_nfe >= nfe:
            return
        assert ref_error > error, f"torchdiffeq reached error {ref_error:.3g} <= ours {error:.3g} in {ref_nfe} < {nfe} NFE"
    raise AssertionError(f"torchdiffeq's NFE stayed below ours ({nfe}) at 2**-19 of the tolerances")


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
@pytest.mark.parametrize("tols", [(ROW_RTOL, 1e-9), (1e-7, COLUMN_ATOL)], ids=["row_rtol", "column_atol"])
def test_tensor_tolerances_match_torchdiffeq(method, tols):
    rtol, atol = tols
    func = MLPDynamics(dim=3)
    torch.manual_seed(1)
    y0 = torch.randn(4, 3)
    stats = SolveStats()
    with torch.no_grad():
        exact = odeint(func, y0, T, rtol=1e-13, atol=1e-13, method="dopri8")
        ours = odeint(func, y0, T, rtol=rtol, atol=atol, method=method, stats=stats)
    ref, _ = _torchdiffeq_counted(func, y0, T, rtol=rtol, atol=atol, method=method)
    error, ref_error = (ours - exact).abs().max().item(), (ref - exact).abs().max().item()
    assert error <= ref_error * (1 + 1e-6), (error, ref_error)  # dopri5 takes torchdiffeq's steps: roundoff apart
    torch.testing.assert_close(ours, ref, rtol=0, atol=2 * ref_error)
    _assert_no_more_work_at_equal_error(func, y0, exact, error, stats.nfe_forward, rtol, atol, method)


class _Oscillator(torch.nn.Module):
    """A tuple state (position (4, 3), velocity (4, 3), energy-like (4,)) driven by an MLP force."""

    def __init__(self) -> None:
        super().__init__()
        self.force = MLPDynamics(dim=3)

    def forward(self, t, state):
        x, v, e = state
        return v, self.force(t, x) - 0.1 * v, (v * v).sum(-1)


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_tuple_tolerances_match_torchdiffeq(method):
    func = _Oscillator()
    torch.manual_seed(2)
    y0 = (torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4))
    # One entry per part, in the forms torchdiffeq takes: a number, or a flat tensor of the part's size.
    rtol = (1e-8, 1e-6, torch.tensor([1e-9, 1e-7, 1e-5, 1e-3]))
    atol = (torch.full((12,), 1e-9), 1e-8, 1e-6)
    stats = SolveStats()
    with torch.no_grad():
        exact = odeint(func, y0, T, rtol=1e-13, atol=1e-13, method="dopri8")
        ours = odeint(func, y0, T, rtol=rtol, atol=atol, method=method, stats=stats)
    ref, _ = _torchdiffeq_counted(func, y0, T, rtol=rtol, atol=atol, method=method)
    error = max((o - e).abs().max().item() for o, e in zip(ours, exact))
    ref_error = max((r - e).abs().max().item() for r, e in zip(ref, exact))
    assert error <= ref_error, (error, ref_error)
    for o, r in zip(ours, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=2 * ref_error)
    _assert_no_more_work_at_equal_error(func, y0, exact, error, stats.nfe_forward, rtol, atol, method)


def test_per_element_tolerance_spends_steps_only_where_asked():
    # Two independent equations y' = w cos(w t) y; only the fast one gets a tight tolerance.
    w = torch.tensor([1.0, 6.0])
    f = lambda t, y: w * torch.cos(w * t) * y  # noqa: E731
    t = torch.tensor([0.0, 3.0])
    exact = torch.exp(torch.sin(w * 3.0))
    nfe = {}
    for name, rtol in [("tight", 1e-10), ("loose", 1e-4), ("mixed", torch.tensor([1e-4, 1e-10]))]:
        stats = SolveStats()
        ys = odeint(f, torch.ones(2), t, rtol=rtol, atol=1e-12, stats=stats)
        nfe[name] = stats.nfe_forward
        if name != "loose":
            assert abs(ys[-1, 1] - exact[1]) < 1e-8 * exact[1]
    assert nfe["loose"] < nfe["mixed"] <= nfe["tight"], nfe


def test_tensor_tolerance_equal_everywhere_is_the_scalar():
    func = MLPDynamics(dim=3)
    y0 = torch.randn(4, 3)
    with torch.no_grad():
        scalar = odeint(func, y0, T, rtol=1e-6, atol=1e-8)
        tensor = odeint(func, y0, T, rtol=torch.full((4, 3), 1e-6), atol=torch.full((3,), 1e-8))
        one_element = odeint(func, y0, T, rtol=torch.tensor([1e-6]), atol=torch.tensor(1e-8))
    torch.testing.assert_close(tensor, scalar, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(one_element, scalar, rtol=0, atol=0)


def test_tensor_tolerances_read_the_device_only_while_validating():
    func = MLPDynamics(dim=3)
    y0 = torch.randn(2, 3)
    extra = []
    for tol in (1e-4, 1e-8):
        reads_beyond_steps = []
        for rtol in (tol, torch.full((3,), tol)):
            stats = SolveStats()
            with torch.no_grad(), HostReads() as mode:
                odeint(func, y0, T, rtol=rtol, atol=tol, stats=stats)
            reads_beyond_steps.append(mode.count - stats.steps_accepted_forward - stats.steps_rejected_forward)
        extra.append(reads_beyond_steps[1] - reads_beyond_steps[0])
    # Checking the tensor (finite, >= 0, not both 0) reads it a fixed number of times, however many steps follow.
    assert extra[0] == extra[1] <= 3, extra


def test_tuple_tolerance_entries_broadcast_against_their_part():
    # Beyond torchdiffeq's flat form: an entry may broadcast against its part's shape, like a tensor state's.
    structure = StateStructure((torch.ones(4, 3), torch.ones(2)))
    broadcast = check_tolerance("rtol", (torch.tensor([1.0, 2.0, 3.0]), 5.0), structure)
    flat = check_tolerance("rtol", (torch.tensor([1.0, 2.0, 3.0]).repeat(4), torch.tensor([5.0, 5.0])), structure)
    torch.testing.assert_close(broadcast, torch.tensor([1.0, 2.0, 3.0] * 4 + [5.0, 5.0]))
    torch.testing.assert_close(flat, broadcast)
    # A 1-D tensor is one entry per part, as torchdiffeq iterates it.
    torch.testing.assert_close(check_tolerance("atol", torch.tensor([1.0, 2.0]), structure),
                               torch.tensor([1.0] * 12 + [2.0] * 2))
    # A complex element's tolerance covers its real and imaginary halves.
    complex_structure = StateStructure((torch.ones(2, dtype=torch.complex128), torch.ones(1)))
    torch.testing.assert_close(check_tolerance("rtol", (torch.tensor([1.0, 2.0]), 3.0), complex_structure),
                               torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0]))
    assert check_tolerance("rtol", torch.tensor(1e-3), structure) == 1e-3  # a 0-dim tensor stays a number


@pytest.mark.parametrize("kw, error, match", [
    (dict(rtol=torch.tensor([1e-3, -1.0, 1e-3])), ValueError,
     "rtol must be finite and >= 0 everywhere, got -1.0 at flat index 1"),
    (dict(atol=torch.tensor([[1e-3], [math.inf]])), ValueError,  # (2, 1) broadcast against (2, 3): row 1 starts at 3
     "atol must be finite and >= 0 everywhere, got inf at flat index 3"),
    (dict(rtol=torch.ones(4)), ValueError, r"rtol has shape \(4,\), which does not broadcast against the state's shape \(2, 3\)"),
    (dict(rtol=torch.ones(3, requires_grad=True)), ValueError, "rtol must not require grad"),
    (dict(atol=torch.ones(3, dtype=torch.complex128)), TypeError, "atol must be real"),
    (dict(rtol=["a", "b", "c"]), TypeError, "rtol must be a number or a tensor of numbers"),
    (dict(rtol=torch.tensor([0.0, 1e-3, 1e-3]), atol=torch.tensor([0.0, 0.0, 1e-3])), ValueError,
     r"rtol and atol cannot both be 0 \(at flat index 0\)"),
])
def test_bad_tensor_tolerances(kw, error, match):
    with pytest.raises(error, match=match):
        odeint(lambda t, y: -y, torch.ones(2, 3), T, **kw)


def test_bad_tuple_tolerances():
    state = (torch.ones(2), torch.ones(3, 2))
    f = lambda t, y: (-y[0], -y[1])  # noqa: E731
    with pytest.raises(ValueError, match=r"rtol for a tuple state must be a number or have one entry per tensor of the "
                                         r"tuple \(2\), got 3"):
        odeint(f, state, T, rtol=(1e-3, 1e-3, 1e-3))
    with pytest.raises(ValueError, match=r"atol\[1\] has shape \(3,\), which does not broadcast against the state "
                                         r"tensor 1 of the tuple's shape \(3, 2\)"):
        odeint(f, state, T, atol=(1e-3, torch.ones(3)))
    with pytest.raises(ValueError, match="rtol must be finite and >= 0 everywhere, got nan at flat index 1"):
        odeint(f, state, T, rtol=(torch.tensor([1.0, math.nan]), 1e-3))


def test_adjoint_tolerances_must_be_numbers():
    func = MLPDynamics(dim=3)
    with pytest.raises(ValueError, match="a per-element rtol does not carry over to the backward solve's augmented "
                                         "state; pass adjoint_rtol as a number"):
        odeint_adjoint(func, torch.ones(2, 3), T, rtol=torch.full((3,), 1e-6))
    with pytest.raises(ValueError, match="adjoint_atol must be a number"):
        odeint_adjoint(func, torch.ones(2, 3), T, adjoint_atol=torch.full((3,), 1e-6))
    # With numbers for the backward solve, per-element forward tolerances work with the adjoint.
    y0 = torch.randn(2, 3, requires_grad=True)
    ys = odeint_adjoint(func, y0, T, rtol=torch.full((3,), 1e-9), atol=1e-10, adjoint_rtol=1e-9, adjoint_atol=1e-10)
    ref = odeint(func, y0, T, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(torch.autograd.grad(ys.sum(), y0)[0], torch.autograd.grad(ref.sum(), y0)[0],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_mixed_dtype_tuple_matches_torchdiffeq_and_keeps_dtypes(method):
    # torchdiffeq promotes the tuple to float64 and returns float64 parts; here each part keeps its dtype, and
    # func sees each part in its own dtype too (a float32 layer on the float32 part works).
    layer = torch.nn.Linear(3, 3).float()
    seen = set()

    def f(t, state):
        x, v = state
        seen.add((x.dtype, v.dtype))
        return v.to(x.dtype), layer(x).to(v.dtype) - v

    def f_promoted(t, state):
        x, v = state
        return v, layer.double()(x) - v

    x0, v0 = torch.randn(2, 3, dtype=torch.float32), torch.randn(2, 3, dtype=torch.float64)
    options = dict(step_size=0.01) if method == "rk4" else None
    with torch.no_grad():
        xs, vs = odeint(f, (x0, v0), T, rtol=1e-7, atol=1e-9, method=method, options=options)
        ref = torchdiffeq.odeint(f_promoted, (x0, v0), T, rtol=1e-7, atol=1e-9, method=method, options=options)
    layer.float()
    assert (xs.dtype, vs.dtype) == (torch.float32, torch.float64)
    assert seen == {(torch.float32, torch.float64)}
    assert [r.dtype for r in ref] == [torch.float64, torch.float64]
    torch.testing.assert_close(xs, ref[0].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vs, ref[1], rtol=1e-5, atol=1e-5)


def test_mixed_dtype_gradients_reach_each_part_in_its_dtype():
    x0 = torch.randn(3, dtype=torch.float32, requires_grad=True)
    v0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    f = lambda t, s: (s[1].to(s[0].dtype), -s[0].to(s[1].dtype))  # noqa: E731
    for solve in (odeint, lambda *a, **k: odeint_adjoint(*a, adjoint_params=(), **k)):
        xs, vs = solve(f, (x0, v0), torch.tensor([0.0, 1.0]), rtol=1e-9, atol=1e-10)
        gx, gv = torch.autograd.grad(xs[-1].sum() + vs[-1].sum(), (x0, v0))
        assert (gx.dtype, gv.dtype) == (torch.float32, torch.float64)
        # Harmonic oscillator: x1 = x0 cos 1 + v0 sin 1, v1 = v0 cos 1 - x0 sin 1.
        c, s = math.cos(1.0), math.sin(1.0)
        torch.testing.assert_close(gx, torch.full((3,), c - s, dtype=torch.float32), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gv, torch.full((3,), s + c, dtype=torch.float64), rtol=1e-6, atol=1e-7)


COMPLEX_A = torch.tensor([[-0.2 + 1.0j, 0.5], [-0.5j, -0.1 - 2.0j]], dtype=torch.complex128)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8", "rk4"])
def test_complex_state_matches_torchdiffeq_and_exact(method):
    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128)
    f = lambda t, y: COMPLEX_A @ y  # noqa: E731
    options = dict(step_size=0.01) if method == "rk4" else None
    stats = SolveStats()
    ys = odeint(f, y0, T, rtol=1e-8, atol=1e-10, method=method, options=options, stats=stats)
    ref, _ = _torchdiffeq_counted(f, y0, T, rtol=1e-8, atol=1e-10, method=method, options=options)
    exact = torch.stack([torch.linalg.matrix_exp(COMPLEX_A * ti) @ y0 for ti in T])
    assert ys.dtype == torch.complex128
    error, ref_error = (ys - exact).abs().max().item(), (ref - exact).abs().max().item()
    assert error < (1e-5 if method == "bosh3" else 1e-7), error
    if method == "rk4":
        torch.testing.assert_close(ys, ref, rtol=1e-12, atol=1e-12)  # the same steps: the same numbers
    else:
        # A complex element's error is scaled by |z|, as in torchdiffeq: dopri5 takes its steps (equal errors up
        # to roundoff); bosh3's and dopri8's dense outputs are more accurate.
        assert error <= ref_error * (1 + 1e-6), (error, ref_error)
        _assert_no_more_work_at_equal_error(f, y0, exact, error, stats.nfe_forward, 1e-8, 1e-10, method)


def test_complex64_state_with_float32_times():
    y0 = torch.tensor([1.0 + 1.0j, 2.0 - 1.0j], dtype=torch.complex64)
    ys = odeint(lambda t, y: 1j * y, y0, T.float(), rtol=1e-5, atol=1e-6)
    ref = torchdiffeq.odeint(lambda t, y: 1j * y, y0, T.float(), rtol=1e-5, atol=1e-6)
    assert ys.dtype == ref.dtype == torch.complex64
    exact = y0 * torch.exp(1j * T.float())[:, None]
    torch.testing.assert_close(ys, exact, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ys, ref, rtol=1e-4, atol=1e-4)


def test_complex_and_real_tuple_keeps_each_dtype():
    # torchdiffeq promotes the whole tuple to complex; here the real part stays real.
    f = lambda t, s: (COMPLEX_A @ s[0], -s[1] * s[0].abs().sum())  # noqa: E731
    y0 = (torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128), torch.ones(3))
    zs, rs = odeint(f, y0, T, rtol=1e-9, atol=1e-10)
    ref = torchdiffeq.odeint(lambda t, s: (COMPLEX_A @ s[0], -s[1] * s[0].abs().sum()), y0, T, rtol=1e-9, atol=1e-10)
    assert (zs.dtype, rs.dtype) == (torch.complex128, torch.float64)
    torch.testing.assert_close(zs, ref[0], rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(rs, ref[1].real, rtol=1e-7, atol=1e-7)


def test_user_norm_sees_complex_parts_scaled_by_their_modulus():
    # torchdiffeq divides a complex error by atol + rtol |z|; the norm sees the same complex tensors here.
    def recording(calls):
        def norm(y):
            calls.append(y.clone())
            return y.abs().pow(2).mean().sqrt()
        return norm

    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128)
    f = lambda t, y: COMPLEX_A @ y  # noqa: E731
    ours, ref = [], []
    ys = odeint(f, y0, T, rtol=1e-8, atol=1e-10, options=dict(norm=recording(ours)))
    ys_ref = torchdiffeq.odeint(f, y0, T, rtol=1e-8, atol=1e-10, options=dict(norm=recording(ref)))
    assert all(c.dtype == torch.complex128 and c.shape == (2,) for c in ours)
    # The first calls (the starting step size's y0 / scale and f0 / scale) are identical.
    for a, b in zip(ours[:2], ref[:2]):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-7, atol=1e-7)


def test_gradcheck_through_complex_state():
    # Direct backprop through a complex solve, as torchdiffeq supports it (its adjoint does not take complex states).
    def run(y0, a):
        return odeint(lambda t, y: a @ y, y0, torch.tensor([0.0, 0.5, 1.0]), rtol=1e-12, atol=1e-12)

    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128, requires_grad=True)
    a = COMPLEX_A.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (y0, a), atol=1e-6, rtol=1e-5)
    loss = lambda ys: (ys[-1].abs() ** 2).sum() + ys[1].real.sum()  # noqa: E731
    ours = torch.autograd.grad(loss(run(y0, a)), (y0, a))
    ref_ys = torchdiffeq.odeint(lambda t, y: a @ y, y0, torch.tensor([0.0, 0.5, 1.0]), rtol=1e-12, atol=1e-12)
    ref = torch.autograd.grad(loss(ref_ys), (y0, a))
    for g, r in zip(ours, ref):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-9)


def test_adjoint_through_complex_state_matches_direct():
    class Rotate(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Parameter(COMPLEX_A.clone())

        def forward(self, t, y):
            return torch.tanh(self.a @ y)

    func = Rotate()
    y0 = torch.tensor([1.0 + 0.5j, -0.3j], dtype=torch.complex128, requires_grad=True)
    loss = lambda ys: (ys.abs() ** 2).sum()  # noqa: E731
    direct = torch.autograd.grad(loss(odeint(func, y0, T, rtol=1e-10, atol=1e-10)), (y0, func.a))
    adjoint = torch.autograd.grad(loss(odeint_adjoint(func, y0, T, rtol=1e-10, atol=1e-10)), (y0, func.a))
    for g, r in zip(adjoint, direct):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
