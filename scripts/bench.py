"""Side-by-side timing of neuralode against torchdiffeq on identical workloads, and on small dynamics against
every peer library (scripts/bench_peers.py: neuralode eager, compiled and per-sample, torchdiffeq, torchode,
diffrax).

Each case builds one problem (weights, inputs, tolerances) and two sides that differ only in the ODE
solver: ours goes through neuralode (for the model cases, through the ``ODEBlock`` with the solver
settings of ``solver=dopri5``, i.e. what the training runner uses), theirs calls
``torchdiffeq.odeint``/``odeint_adjoint`` on the same dynamics module with the same method and tolerances
and torchdiffeq's own defaults otherwise. The harness restores the weights and reseeds before every run
(untimed), warms both sides up, times ``--repeats`` interleaved runs and prints one JSON line per case
with the medians. NFE are counted the same way for both sides: calls of the dynamics module during the
forward pass (loss) and during ``backward()``.

    python scripts/bench.py [--device cpu|cuda] [--quick] [--cases odenet_train_step,...] [--repeats N]

The peer cases (small_node_forward, small_node_grad, vdp_joint, and the per-sample solves vdp_per_sample and
vdp_per_sample_mu against torchode) run on the CPU, in a full run or when named; a
``--quick`` run leaves them out, so that it needs neither jax, torchode nor a compiler, and so does a CUDA run.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import neuralode
from neuralode.config import solver_defaults
from neuralode.models.odeblock import SolverSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_peers beside this script, however it is run
from bench_peers import PEER_CASES, main_peers  # noqa: E402


class CallCounter:
    """Counts calls of a dynamics module, split by the phase the harness is in (forward / backward)."""

    def __init__(self, module: nn.Module) -> None:
        self.phase = "forward"
        self.counts = {"forward": 0, "backward": 0}
        module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        self.counts[self.phase] += 1

    def reset(self) -> None:
        self.phase = "forward"
        self.counts = {"forward": 0, "backward": 0}


@dataclass
class Side:
    """One library's side of a case: ``forward`` computes the output (a loss for training cases)."""

    forward: Callable[[], torch.Tensor]


@dataclass
class Workload:
    """What a case builder returns."""

    ours: Side
    theirs: Side
    counter: CallCounter
    params: list[nn.Parameter] = field(default_factory=list)  # empty: a no-grad solve
    make_optimizer: Callable[[], torch.optim.Optimizer] | None = None
    reset: Callable[[], None] | None = None  # restores weights/seeds before every run, untimed
    ours_solver: dict | None = None  # the solver settings ours ran with, for the record


@dataclass
class Case:
    name: str
    adjoint: bool
    build: Callable[[torch.device, bool, bool], Workload]


CASES: list[Case] = []


def case(name: str, adjoints: tuple[bool, ...] = (False,)):
    """Register a builder ``(device, quick, adjoint) -> Workload`` once per adjoint setting."""
    def register(build: Callable[[torch.device, bool, bool], Workload]) -> Callable:
        CASES.extend(Case(name, a, build) for a in adjoints)
        return build
    return register


def case_names() -> list[str]:
    return list(dict.fromkeys(c.name for c in CASES)) + list(PEER_CASES)


def default_spec(tol: float, adjoint: bool) -> SolverSpec:
    """The training runner's solver settings (``solver=dopri5``) at tolerance ``tol``."""
    cfg = {**solver_defaults("dopri5"), "adjoint": adjoint}
    return SolverSpec.from_config(cfg, default_tol=tol)


class TorchdiffeqBlock(nn.Module):
    """Drop-in for ``ODEBlock`` that integrates with torchdiffeq: same call, same dynamics module."""

    def __init__(self, func: nn.Module, spec: SolverSpec) -> None:
        super().__init__()
        self.func, self.spec = func, spec

    def end_time(self, nominal: float) -> float:
        """No STEER regulariser on this side: the span ends where it is asked to (the CNF calls this)."""
        return nominal

    def forward(self, y0, t: torch.Tensor | None = None, *, last_only: bool = True):
        import torchdiffeq

        first = y0[0] if isinstance(y0, tuple) else y0
        t = torch.tensor([0.0, 1.0]) if t is None else t
        t = t.to(device=first.device, dtype=first.dtype)
        solve = torchdiffeq.odeint_adjoint if self.spec.adjoint else torchdiffeq.odeint
        ys = solve(self.func, y0, t, rtol=self.spec.rtol, atol=self.spec.atol, method=self.spec.method)
        if not last_only:
            return ys
        return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]


def _snapshot(modules: list[nn.Module], seed: int) -> Callable[[], None]:
    """A reset that puts the weights back and reseeds, so every run does the same work."""
    states = [copy.deepcopy(m.state_dict()) for m in modules]

    def reset() -> None:
        for m, s in zip(modules, states):
            m.load_state_dict(s)
        torch.manual_seed(seed)
    return reset


# ---------------------------------------------------------------------------------------------- cases

class MLPODE(nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _plain_solve(device: torch.device, batch: int, dim: int, hidden: int, t_end: float, n_out: int,
                 method: str = "dopri5", tol: float = 1e-6) -> Workload:
    """No-grad solve of an MLP ODE over [0, t_end] with n_out output times, rtol = atol = tol."""
    import torchdiffeq

    torch.manual_seed(0)
    func = MLPODE(dim, hidden).to(device)
    y0 = torch.randn(batch, dim, device=device)
    t = torch.linspace(0.0, t_end, n_out, device=device)
    kw = dict(rtol=tol, atol=tol, method=method)
    return Workload(Side(lambda: neuralode.odeint(func, y0, t, **kw)),
                    Side(lambda: torchdiffeq.odeint(func, y0, t, **kw)), CallCounter(func))


@case("mlp_solve")
def mlp_solve(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """A small MLP ODE over [0, 1], 5 output times: the shape of one ODE block's solve."""
    batch, dim, hidden = (128, 8, 64) if quick else (512, 16, 128)
    return _plain_solve(device, batch, dim, hidden, t_end=1.0, n_out=5)


@case("tiny_long_solve")
def tiny_long_solve(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """A tiny MLP ODE over [0, 20]: ~20 steps of almost no arithmetic, so per-step overhead dominates."""
    return _plain_solve(device, batch=16, dim=2, hidden=16, t_end=20.0, n_out=2)


@case("adaptive_heun_solve")
def adaptive_heun_solve(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """A tiny MLP ODE over [0, 5] with adaptive_heun at 1e-5: ~200 cheap steps, one evaluation of f each
    (the last stage starts the next step, as in torchdiffeq), so per-step overhead dominates."""
    return _plain_solve(device, batch=16, dim=2, hidden=16, t_end=5.0, n_out=2, method="adaptive_heun", tol=1e-5)


@case("dopri8_many_outputs")
def dopri8_many_outputs(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """dopri8 at 1e-8 over [0, 10] with 201 (quick: 51) output times: outputs come from the dense output,
    so the work is that of the solve to t = 10 alone."""
    return _plain_solve(device, batch=16, dim=2, hidden=16, t_end=10.0, n_out=51 if quick else 201,
                        method="dopri8", tol=1e-8)


@case("mlp_grad_adjoint", adjoints=(True,))
def mlp_grad_adjoint(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """Forward + backward of a loss through odeint_adjoint (dopri5, 1e-6, default norms), same MLP."""
    import torchdiffeq

    batch, dim, hidden = (128, 8, 64) if quick else (512, 16, 128)
    torch.manual_seed(0)
    func = MLPODE(dim, hidden).to(device)
    y0 = torch.randn(batch, dim, device=device)
    t = torch.tensor([0.0, 1.0], device=device)
    kw = dict(rtol=1e-6, atol=1e-6, method="dopri5")
    return Workload(Side(lambda: neuralode.odeint_adjoint(func, y0, t, **kw)[-1].pow(2).mean()),
                    Side(lambda: torchdiffeq.odeint_adjoint(func, y0, t, **kw)[-1].pow(2).mean()),
                    CallCounter(func), params=list(func.parameters()))


@case("odenet_train_step", adjoints=(True, False))
def odenet_train_step(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """The paper's MNIST ODE-Net (208,266 parameters), one SGD step (lr 0.1, momentum 0.9) on a batch of
    128 (quick: 32) 28x28 images: forward, cross-entropy, backward, step. dopri5, rtol = atol = 1e-3."""
    from neuralode.models.mnist import build_mnist_model

    batch = 32 if quick else 128
    torch.manual_seed(0)
    spec = default_spec(1e-3, adjoint)
    ours = build_mnist_model("odenet", spec).to(device)
    theirs = nn.Sequential(ours[0], TorchdiffeqBlock(ours[1].func, spec), ours[2])
    x = torch.randn(batch, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss = nn.functional.cross_entropy
    return Workload(Side(lambda: loss(ours(x), labels)), Side(lambda: loss(theirs(x), labels)),
                    CallCounter(ours[1].func), params=list(ours.parameters()),
                    make_optimizer=lambda: torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9),
                    reset=_snapshot([ours], 0), ours_solver=vars(spec))


@case("cnf2d_train_step", adjoints=(True,))
def cnf2d_train_step(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """The paper's 2-D CNF (width 64, hypernetwork 32, exact trace) on 512 (quick: 128) two-circles
    samples: -log p(x) through the flow, backward, Adam step. dopri5, rtol = atol = 1e-5."""
    from neuralode.data import toy2d
    from neuralode.models.cnf import CNF, GatedHyperDynamics

    batch = 128 if quick else 512
    torch.manual_seed(0)
    spec = default_spec(1e-5, adjoint)
    dynamics = GatedHyperDynamics(2, 64, 32, "exact").to(device)
    ours = CNF(dynamics, 1.0, "rademacher", spec).to(device)
    theirs = CNF(dynamics, 1.0, "rademacher", spec).to(device)
    theirs.block = TorchdiffeqBlock(dynamics, spec)
    x = toy2d.sampler("two_circles")(batch, torch.Generator().manual_seed(0)).to(device)
    return Workload(Side(lambda: -ours.log_prob(x).mean()), Side(lambda: -theirs.log_prob(x).mean()),
                    CallCounter(dynamics), params=list(dynamics.parameters()),
                    make_optimizer=lambda: torch.optim.Adam(dynamics.parameters(), lr=1e-3),
                    reset=_snapshot([dynamics], 0), ours_solver=vars(spec))


@case("spiral_latent_ode_train_step", adjoints=(False, True))
def spiral_latent_ode_train_step(device: torch.device, quick: bool, adjoint: bool) -> Workload:
    """The spiral latent ODE (latent 4, GRU encoder 25, dynamics MLP 20) on 100 (quick: 32) spirals with
    100 observations each (so ~100 output times per solve): negative ELBO, backward, Adam step.
    dopri5, rtol = atol = 1e-5 (the task default); direct backprop is what the task trains with."""
    from neuralode.data.spiral import GRID_STEP, generate_spirals
    from neuralode.models.latent_ode import LatentODE

    batch = 32 if quick else 100
    torch.manual_seed(0)
    spec = default_spec(1e-5, adjoint)
    data = generate_spirals(n_spirals=2 * batch, seed=0).to(device)  # 80% train: >= batch spirals
    kw = dict(latent_dim=4, rec_hidden=25, ode_hidden=20, dec_hidden=20, obs_std=0.3, time_unit=GRID_STEP)
    ours = LatentODE(spec, **kw).to(device)
    theirs = LatentODE(spec, **kw).to(device)
    theirs.encoder, theirs.decoder = ours.encoder, ours.decoder
    theirs.ode = TorchdiffeqBlock(ours.ode.func, spec)
    obs_idx, obs_x = data.train.observations(torch.arange(batch, device=device))
    return Workload(Side(lambda: ours.loss(data.t, obs_idx, obs_x)[0]),
                    Side(lambda: theirs.loss(data.t, obs_idx, obs_x)[0]),
                    CallCounter(ours.ode.func), params=list(ours.parameters()),
                    make_optimizer=lambda: torch.optim.Adam(ours.parameters(), lr=0.01),
                    reset=_snapshot([ours], 0), ours_solver=vars(spec))


# -------------------------------------------------------------------------------------------- harness

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_run(w: Workload, side: Side) -> Callable[[], torch.Tensor]:
    """The timed unit: a no-grad solve, or a train step (forward, loss, backward, optimiser step)."""
    if not w.params:
        def solve() -> torch.Tensor:
            with torch.no_grad():
                return side.forward()
        return solve
    opt = w.make_optimizer() if w.make_optimizer is not None else None

    def train_step() -> torch.Tensor:
        for p in w.params:
            p.grad = None
        w.counter.phase = "forward"
        loss = side.forward()
        w.counter.phase = "backward"
        loss.backward()
        if opt is not None:
            opt.step()
        w.counter.phase = "forward"
        return loss.detach()
    return train_step


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms; on CUDA from events around the queued work, then a synchronize."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def saved_for_backward_mb(forward: Callable[[], torch.Tensor]) -> float:
    """MiB of distinct tensor storages that autograd saves for backward during ``forward`` (the memory a
    train step holds between forward and backward; flat in the number of steps for the adjoint)."""
    storages: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        s = x.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        forward()
    return sum(storages.values()) / 2**20


def cuda_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak allocated memory of one call above what was allocated before it, in MiB."""
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def prime_torch(device: torch.device) -> None:
    """Pay torch's one-off, per-process costs before any case: the first ``torch.autograd.grad`` call imports
    torch.fx's symbolic shapes and sympy (0.5-0.8 s on this CPU), which would otherwise land on whichever
    library a case with ``--warmup 0`` runs first (ours, in the first round)."""
    x = torch.ones(2, device=device, requires_grad=True)
    torch.autograd.grad((x * x).sum(), x, torch.ones((), device=device))
    _sync(device)


def run_case(c: Case, device: torch.device, quick: bool, warmup: int, repeats: int) -> dict:
    w = c.build(device, quick, c.adjoint)
    reset = w.reset or (lambda: None)
    runs = (make_run(w, w.ours), make_run(w, w.theirs))
    times: tuple[list[float], list[float]] = ([], [])
    nfe: list[dict[str, int]] = [{}, {}]
    outputs: list[torch.Tensor | None] = [None, None]
    for r in range(warmup + repeats):
        # Interleaved, alternating which goes first, so load from other processes hits both alike.
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            reset()
            w.counter.reset()
            _sync(device)
            if r < warmup:
                outputs[i] = runs[i]()
            else:
                times[i].append(_time_once(lambda: outputs.__setitem__(i, runs[i]()), device))
            nfe[i] = dict(w.counter.counts)
    ours_ms, theirs_ms = statistics.median(times[0]), statistics.median(times[1])
    row = {
        "case": c.name, "device": str(device), "adjoint": c.adjoint,
        "ours_ms": round(ours_ms, 2), "torchdiffeq_ms": round(theirs_ms, 2),
        "speedup": round(theirs_ms / ours_ms, 3),
        "nfe_ours": nfe[0]["forward"] + nfe[0]["backward"],
        "nfe_torchdiffeq": nfe[1]["forward"] + nfe[1]["backward"],
        "nfe_fwd_ours": nfe[0]["forward"], "nfe_bwd_ours": nfe[0]["backward"],
        "nfe_fwd_torchdiffeq": nfe[1]["forward"], "nfe_bwd_torchdiffeq": nfe[1]["backward"],
    }
    if device.type == "cuda":
        peaks = []
        for run in runs:
            reset()
            peaks.append(round(cuda_peak_mb(run, device), 2))
        row.update(peak_mem_mb_ours=peaks[0], peak_mem_mb_torchdiffeq=peaks[1])
    else:
        row.update(peak_mem_mb_ours=None, peak_mem_mb_torchdiffeq=None,
                   peak_mem_note="CPU: no allocator peak; saved_mb = tensors saved for backward")
    if w.params:
        saved = []
        for side in (w.ours, w.theirs):
            reset()
            saved.append(round(saved_for_backward_mb(side.forward), 3))
        row.update(saved_mb_ours=saved[0], saved_mb_torchdiffeq=saved[1])
    else:
        row.update(saved_mb_ours=None, saved_mb_torchdiffeq=None)
    a, b = outputs
    row["max_abs_diff"] = float(f"{(a.detach() - b.detach()).abs().max().item():.3g}")
    if w.ours_solver is not None:
        row["ours_adjoint_options"] = w.ours_solver["adjoint_options"] if c.adjoint else None
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI)")
    p.add_argument("--cases", default=None,
                   help=f"comma-separated subset of: {', '.join(case_names())} (default: all; --quick and "
                        f"--device cuda: all but the peer cases)")
    p.add_argument("--adjoint", default="both", choices=["both", "true", "false"],
                   help="run only the adjoint (true) or direct (false) variant of cases that have both")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per library (default 7, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads for CPU runs (default 1: the machine is shared, and intra-op "
                        "threads on a busy machine make timings erratic); 0 keeps torch's default")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.cases is None:
        args.cases = ",".join(n for n in case_names()
                              if not ((args.quick or args.device != "cpu") and n in PEER_CASES))
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in case_names()]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(case_names())}")
    peers = [n for n in names if n in PEER_CASES]
    if peers and args.device != "cpu":
        p.error(f"the peer cases ({', '.join(peers)}) run on the CPU only; leave them out of --device {args.device}")
    for flag in ("repeats", "warmup"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "repeats" else 0):
            p.error(f"--{flag} must be >= {1 if flag == 'repeats' else 0}, got {getattr(args, flag)}")
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads > 0 and args.device == "cpu":
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = 1 if args.warmup is None else args.warmup
    device = torch.device(args.device)
    # The run's context goes to stderr, so stdout holds exactly one JSON line per case.
    print(json.dumps({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                      "torch": torch.__version__, "python": platform.python_version(),
                      "threads": torch.get_num_threads(), "quick": args.quick, "repeats": repeats,
                      "warmup": warmup, "device_name": torch.cuda.get_device_name(device)
                      if device.type == "cuda" else platform.processor() or platform.machine()}),
          file=sys.stderr, flush=True)
    prime_torch(device)
    for c in CASES:
        if c.name in names and args.adjoint in ("both", str(c.adjoint).lower()):
            print(json.dumps(run_case(c, device, args.quick, warmup, repeats)), flush=True)
    if peers:
        main_peers(peers, warmup, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
