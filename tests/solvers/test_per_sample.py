"""Per-sample solves (options=dict(per_sample=True)): each sample as if solved alone, in one batched loop."""
import pytest
import torch

from neuralode.solvers import MaxNumStepsError, NonFiniteError, SolveStats, odeint, odeint_adjoint
from neuralode.solvers.errors import UnsupportedError

ADAPTIVE_RK = ("dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8", "tsit5")


def van_der_pol(mu: torch.Tensor):
    """y = (x, v); ``mu`` a number or one per sample."""
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)
    return f


def vdp_batch(dtype=torch.float64):
    mu = torch.tensor([0.5, 2.0, 5.0], dtype=dtype)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.5, -1.0]], dtype=dtype)
    return mu, y0


@pytest.mark.parametrize("controller", ["integral", "pi"])
@pytest.mark.parametrize("method", ADAPTIVE_RK)
def test_each_sample_takes_the_steps_it_takes_alone(method, controller):
    mu, y0 = vdp_batch()
    t = torch.linspace(0, 3, 5, dtype=torch.float64)
    tol = dict(rtol=1e-4, atol=1e-6) if method == "adaptive_heun" else dict(rtol=1e-6, atol=1e-8)
    stats = SolveStats()
    ys = odeint(van_der_pol(mu), y0, t, **tol, method=method,
                options=dict(per_sample=True, controller=controller), stats=stats)
    assert ys.shape == (5, 3, 2)
    counts = stats.per_sample_forward
    for b in range(3):
        alone = SolveStats()
        y_alone = odeint(van_der_pol(mu[b]), y0[b:b + 1], t, **tol, method=method,
                         options=dict(controller=controller), stats=alone)
        # dopri8's error estimate cancels more digits: rounding moves its step sizes in the 7th digit.
        assert torch.allclose(ys[:, b], y_alone[:, 0], rtol=0, atol=1e-9 if method == "dopri8" else 1e-12)
        assert (int(counts.accepted[b]), int(counts.rejected[b])) == (alone.steps_accepted_forward,
                                                                      alone.steps_rejected_forward)
    assert stats.steps_accepted_forward == int(counts.accepted.sum())


def test_float32_matches_separate_solves():
    rates = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float32)
    y0 = torch.tensor([[1.0, -2.0], [0.5, 1.0], [2.0, 0.1]], dtype=torch.float32)
    t = torch.linspace(0, 2, 6, dtype=torch.float32)
    ys = odeint(lambda s, y: -rates[:, None] * y, y0, t, rtol=1e-5, atol=1e-7, options=dict(per_sample=True))
    assert ys.dtype == torch.float32
    for b in range(3):
        alone = odeint(lambda s, y: -rates[b] * y, y0[b], t, rtol=1e-5, atol=1e-7)
        assert torch.allclose(ys[:, b], alone, rtol=0, atol=1e-6)


def test_per_sample_times_against_separate_solves_and_the_exact_solution():
    rates = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 2.0], [1.5, -1.0], [0.5, 0.3]], dtype=torch.float64)
    # One row forwards, one backwards, one forwards with other times: each sample on its own grid.
    t = torch.tensor([[0.0, 0.5, 1.0, 2.0], [1.0, 0.7, 0.2, 0.0], [0.3, 0.9, 1.1, 3.0]], dtype=torch.float64)
    ys = odeint(lambda s, y: -rates[:, None] * y, y0, t, rtol=1e-10, atol=1e-12, options=dict(per_sample=True))
    exact = y0 * torch.exp(-rates[:, None] * (t.T - t.T[:1])[..., None])
    assert torch.allclose(ys, exact, rtol=1e-8, atol=1e-10)
    for b in range(3):
        alone = odeint(lambda s, y: -rates[b] * y, y0[b], t[b], rtol=1e-10, atol=1e-12)
        assert torch.allclose(ys[:, b], alone, rtol=0, atol=1e-13)


def test_a_finished_sample_is_frozen():
    seen_t, seen_y = [], []

    def f(s, y):
        seen_t.append(s.clone())
        seen_y.append(y[0].clone())
        return -y

    t = torch.tensor([[0.0, 0.1], [0.0, 5.0]], dtype=torch.float64)
    ys = odeint(f, torch.ones(2, 3, dtype=torch.float64), t, rtol=1e-8, atol=1e-10, options=dict(per_sample=True))
    first_done = next(i for i, s in enumerate(seen_t) if s.ndim and s[1] > 0.2)  # sample 1 well past sample 0's end
    # Frozen where its last step ended (the integral controller steps past the last output and interpolates back).
    assert seen_t[first_done][0] >= 0.1
    assert all(s[0] == seen_t[first_done][0] for s in seen_t[first_done:])
    assert all(torch.equal(y, seen_y[first_done]) for y in seen_y[first_done:])
    assert torch.allclose(ys[-1, 0], torch.full((3,), torch.exp(torch.tensor(-0.1, dtype=torch.float64)).item()))


def test_func_gets_one_time_per_sample_or_a_scalar_while_all_share_it():
    shapes = []

    def f(s, y):
        shapes.append(tuple(s.shape))
        assert s.dtype == y.dtype
        return -y * torch.tensor([1.0, 3.0])[:, None]

    odeint(f, torch.ones(2, 4), torch.tensor([0.0, 1.0]), options=dict(per_sample=True))
    assert shapes[0] == () and (2,) in shapes  # f(t0) is shared; the samples then step apart


def test_stiffer_samples_take_more_steps_and_the_batch_fewer_evaluations_than_a_joint_solve():
    mu = torch.tensor([0.5, 1.0, 2.0, 8.0], dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]] * 4, dtype=torch.float64)
    t = torch.tensor([0.0, 6.0], dtype=torch.float64)
    per_sample, joint = SolveStats(), SolveStats()
    odeint(van_der_pol(mu), y0, t, rtol=1e-6, atol=1e-8, options=dict(per_sample=True), stats=per_sample)
    odeint(van_der_pol(mu), y0, t, rtol=1e-6, atol=1e-8, stats=joint)
    accepted = per_sample.per_sample_forward.accepted
    assert accepted[3] > accepted[0] and len(set(accepted.tolist())) == 4
    # Sample evaluations: each sample counts the calls made while it advanced; the joint solve evaluates all of
    # them at every call.
    assert int(per_sample.per_sample_forward.nfe.sum()) < 4 * joint.nfe_forward
    assert per_sample.nfe_forward == int(per_sample.per_sample_forward.nfe.max())


def test_gradients_by_backpropagation():
    y0 = torch.tensor([[1.0, 0.5], [0.2, -1.0]], dtype=torch.float64, requires_grad=True)
    rates = torch.tensor([0.7, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.4, 1.0], [0.0, 0.3, 0.5]], dtype=torch.float64, requires_grad=True)

    def solve(y0, rates, t):
        return odeint(lambda s, y: -rates[:, None] * y * (1 + s[:, None] if s.ndim else 1 + s), y0, t,
                      rtol=1e-9, atol=1e-11, options=dict(per_sample=True))

    assert torch.autograd.gradcheck(solve, (y0, rates, t), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method, kwargs", [
    ("radauIIA5", {}), ("implicit_adams", {}), ("scipy_solver", {}),
    ("dopri5", dict(options=dict(per_sample=True, step_t=[0.5]))),
    ("dopri5", dict(options=dict(per_sample=True, compile=True))),
    ("dopri5", dict(options=dict(per_sample=True, norm=lambda y: y.abs().max()))),
    ("dopri5", dict(event_fn=lambda s, y: y.sum() - 0.5)),
])
def test_unsupported_combinations_name_what_is_supported(method, kwargs):
    kwargs.setdefault("options", dict(per_sample=True))
    with pytest.raises(UnsupportedError, match="explicit adaptive Runge-Kutta methods \\(dopri5"):
        odeint(lambda s, y: -y, torch.ones(2, 1), torch.tensor([0.0, 1.0]), method=method, **kwargs)


def test_bad_input_gets_one_line():
    f = lambda s, y: -y  # noqa: E731
    with pytest.raises(UnsupportedError, match="real tensor y0"):
        odeint(f, (torch.ones(2), torch.ones(2)), torch.tensor([0.0, 1.0]), options=dict(per_sample=True))
    with pytest.raises(ValueError, match=r"shape \(T,\) or \(B, T\) with B=2"):
        odeint(f, torch.ones(2, 1), torch.zeros(3, 2), options=dict(per_sample=True))
    with pytest.raises(ValueError, match="sample 1"):
        odeint(f, torch.ones(2, 1), torch.tensor([[0.0, 1.0], [0.0, 0.0]]), options=dict(per_sample=True))
    with pytest.raises(ValueError, match="per_sample.*True or False"):
        odeint(f, torch.ones(2, 1), torch.tensor([0.0, 1.0]), options=dict(per_sample=1))
    with pytest.raises(UnsupportedError, match="real tensor y0"):
        odeint(f, torch.ones(2, 1, dtype=torch.complex128), torch.tensor([0.0, 1.0]), options=dict(per_sample=True))


def test_step_hooks_are_not_called_and_a_warning_says_so():
    calls = []

    def f(s, y):
        return -y

    f.callback_step = lambda t0, y0, dt: calls.append(t0)
    with pytest.warns(UserWarning, match="does not call callback_step"):
        odeint(f, torch.ones(2, 1), torch.tensor([0.0, 1.0]), options=dict(per_sample=True))
    assert calls == []


def test_caps_and_failures_name_the_sample():
    mu = torch.tensor([0.5, 50.0], dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    with pytest.raises(MaxNumStepsError, match="sample 1"):
        odeint(van_der_pol(mu), y0, torch.tensor([0.0, 10.0], dtype=torch.float64),
               options=dict(per_sample=True, max_num_steps=200))

    def blows_up(s, y):
        return torch.stack([-y[0], torch.where(s[1] > 0.5, torch.inf, 1.0) * y[1]]) if s.ndim else -y

    with pytest.raises(NonFiniteError, match="sample 1"):
        odeint(blows_up, torch.ones(2, 1), torch.tensor([0.0, 1.0]), options=dict(per_sample=True))


def test_per_sample_false_is_the_joint_solve():
    t = torch.tensor([0.0, 1.0])
    joint = odeint(lambda s, y: -y, torch.ones(2, 1), t)
    assert torch.equal(odeint(lambda s, y: -y, torch.ones(2, 1), t, options=dict(per_sample=False)), joint)


class TimeScaledNet(torch.nn.Module):
    """A small MLP whose output grows with t: gradients reach its parameters, y0 and every sample's times."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def forward(self, t, y):
        return self.net(y) * (1 + 0.1 * (t[:, None] if t.ndim else t))


@pytest.mark.parametrize("shared_t", [False, True])
@pytest.mark.parametrize("adjoint_options", [None, dict(norm="seminorm")])
def test_adjoint_gradients_match_backpropagation(shared_t, adjoint_options):
    torch.manual_seed(0)
    func = TimeScaledNet()
    y0 = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    if shared_t:
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    else:
        t = torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.2, 1.5], [1.0, 0.5, 0.0], [0.3, 0.4, 2.0]], dtype=torch.float64,
                         requires_grad=True)
    grads, stats = [], SolveStats()
    for solve, extra in ((odeint, {}), (odeint_adjoint, dict(adjoint_options=adjoint_options, stats=stats))):
        ys = solve(func, y0, t, rtol=1e-9, atol=1e-11, options=dict(per_sample=True), **extra)
        loss = (ys ** 2).sum() + ys[1].sum()
        grads.append(torch.autograd.grad(loss, (y0, t, *func.parameters())))
    for direct, adjoint in zip(*grads):
        assert torch.allclose(direct, adjoint, rtol=1e-6, atol=1e-6)
    # One batched backward solve per output interval, each sample on its own steps.
    assert stats.nfe_backward > 0 and stats.per_sample_backward.accepted.shape == (4,)


def test_adjoint_refuses_what_it_does_not_support():
    with pytest.raises(UnsupportedError, match="explicit adaptive Runge-Kutta"):
        odeint_adjoint(TimeScaledNet(), torch.ones(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                       options=dict(per_sample=True), adjoint_method="rk4")
    with pytest.raises(UnsupportedError, match="'seminorm' or left out"):
        odeint_adjoint(TimeScaledNet(), torch.ones(2, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                       options=dict(per_sample=True), adjoint_options=dict(norm=lambda z: z[1].abs().max()))


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_grid_methods_step_on_each_samples_grid(method):
    rates = torch.tensor([0.5, 2.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0, -1.0], [2.0, 0.5]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.1, 0.3, 0.4], [1.0, 0.8, 0.75, 0.5]], dtype=torch.float64)
    stats = SolveStats()
    ys = odeint(lambda s, y: -rates[:, None] * y * (1 + s[:, None]), y0, t, method=method,
                options=dict(per_sample=True), stats=stats)
    for b in range(2):
        alone = odeint(lambda s, y: -rates[b] * y * (1 + s), y0[b], t[b], method=method)
        assert torch.allclose(ys[:, b], alone, rtol=0, atol=1e-14)
    assert stats.per_sample_forward.accepted.tolist() == [3, 3]
    with pytest.raises(UnsupportedError, match="'step_size' are not supported"):
        odeint(lambda s, y: -y, y0, t, method=method, options=dict(per_sample=True, step_size=0.1))
    with pytest.raises(UnsupportedError, match="adaptive Runge-Kutta methods; got method"):
        odeint_adjoint(TimeScaledNet(), y0, t, method=method, options=dict(per_sample=True))


def test_one_host_read_per_attempted_step(monkeypatch):
    mu, y0 = vdp_batch()
    t = torch.linspace(0, 3, 7, dtype=torch.float64)
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _original=original, _name=name:
                            reads.append(_name) or _original(self, *a))
    stats = SolveStats()
    odeint(van_der_pol(mu), y0, t, rtol=1e-6, atol=1e-8, options=dict(per_sample=True), stats=stats)
    monkeypatch.undo()
    counts = stats.per_sample_forward
    attempts = int((counts.accepted + counts.rejected).max())
    # The loop's reads (one per attempt, one more to see all done) and a handful per solve: checking t, the
    # first step, the totals.
    assert attempts + 1 <= len(reads) <= attempts + 1 + 6


def test_tolerances_that_both_vanish_somewhere_are_refused_as_in_a_joint_solve():
    """The same check as the joint solve's: zero rtol and atol together, as numbers or at one element."""
    y0, t = torch.ones(3, 2), torch.linspace(0.0, 1.0, 3)
    with pytest.raises(ValueError, match="rtol and atol cannot both be 0 for the adaptive method 'dopri5'"):
        odeint(lambda s, y: -y, y0, t, rtol=0.0, atol=0.0, options=dict(per_sample=True))
    atol = torch.full_like(y0, 1e-6)
    atol[1, 0] = 0.0
    with pytest.raises(ValueError, match="cannot both be 0 \\(at flat index 2\\)"):
        odeint(lambda s, y: -y, y0, t, rtol=0.0, atol=atol, options=dict(per_sample=True))
