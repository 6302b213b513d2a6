"""Step controllers on a trained ODE-Net: NFE and gradient error of one adjoint training step per controller.

For each of a few test batches of a ``task=mnist model=odenet`` checkpoint: forward NFE, backward (adjoint)
NFE and the relative error of the gradient of the cross-entropy with respect to every parameter, against a
float64 reference by direct backpropagation at a tight tolerance. ``integral`` is the public API's default
(torchdiffeq's steps), ``pi`` the runner's. This is what chose the runner's controller (RUNNER_CONTROLLER).

    python scripts/controller_study.py <run dir or last.pt> [--tol 1e-3] [--batches 4] [--batch-size 64]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch
from torch import nn

from neuralode.models.odeblock import collect_solve_stats, reset_solve_stats
from neuralode.report.figure3 import load_odenet, ode_blocks
from neuralode.solvers.controller import CONTROLLERS


def configure(model: nn.Module, tol: float, adjoint: bool, controller: str) -> None:
    for block in ode_blocks(model):
        block.use_solver(rtol=tol, atol=tol, adjoint=adjoint, options={**block.solver.options, "controller": controller},
                         adjoint_options={})


def gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--ref-tol", type=float, default=1e-7)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model, images, labels, info = load_odenet(args.checkpoint, args.batches * args.batch_size, "cpu")
    model.eval()
    reference = copy.deepcopy(model).double()
    configure(reference, args.ref_tol, adjoint=False, controller="integral")
    print(f"checkpoint {info['checkpoint']} (epoch {info['epoch']}), tol {args.tol}, reference: direct backprop "
          f"in float64 at {args.ref_tol}, {args.batches} batches of {args.batch_size}")
    rows: dict[str, list[tuple[int, int, float]]] = {c: [] for c in CONTROLLERS}
    for b in range(args.batches):
        x = images[b * args.batch_size:(b + 1) * args.batch_size]
        y = labels[b * args.batch_size:(b + 1) * args.batch_size]
        g_ref = gradient(reference, x.double(), y)
        for controller in CONTROLLERS:
            configure(model, args.tol, adjoint=True, controller=controller)
            reset_solve_stats(model)
            g = gradient(model, x, y).double()
            stats = collect_solve_stats(model)
            err = float((g - g_ref).norm() / g_ref.norm())
            rows[controller].append((stats.nfe_forward, stats.nfe_backward, err))
            print(f"batch {b} {controller:8s} forward NFE {stats.nfe_forward:3d} backward NFE {stats.nfe_backward:3d} "
                  f"gradient rel. error {err:.2%}", flush=True)
    for controller, r in rows.items():
        print(f"{controller:8s} mean forward NFE {statistics.mean(f for f, _, _ in r):.1f}, mean backward NFE "
              f"{statistics.mean(bw for _, bw, _ in r):.1f}, gradient rel. error {min(e for *_, e in r):.2%}-"
              f"{max(e for *_, e in r):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
