"""The Table 1 networks: parameter counts as the reference code, output shapes, solver wiring."""
from __future__ import annotations

import pytest
import torch

from neuralode.models.mnist import MODELS, build_mnist_model, count_parameters
from neuralode.models.odeblock import ODEBlock, SolverSpec, collect_solve_stats, reset_solve_stats

# odenet/rknet: the reference odenet_mnist.py's count (paper: 0.22M); resnet: paper 0.60M; mlp: 784-300-10.
EXPECTED_PARAMS = {"odenet": 208_266, "rknet": 208_266, "resnet": 576_778, "mlp": 238_510}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_and_output_shape(name: str) -> None:
    torch.manual_seed(0)
    model = build_mnist_model(name, SolverSpec(method="rk4", options={"step_size": 0.5}))
    assert count_parameters(model) == EXPECTED_PARAMS[name]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize(("name", "adjoint"), [("odenet", True), ("rknet", False)])
def test_odenet_solves_the_adjoint_and_rknet_backpropagates_through_the_solver(name: str, adjoint: bool) -> None:
    """Both asked for the adjoint: the ODE-Net uses it (a backward solve), the RK-Net never does."""
    torch.manual_seed(0)
    model = build_mnist_model(name, SolverSpec(method="dopri5", rtol=1e-3, atol=1e-3, adjoint=True))
    assert [m.solver.adjoint for m in model.modules() if isinstance(m, ODEBlock)] == [adjoint]
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    stats = collect_solve_stats(model)
    assert stats.nfe_forward >= 6 and (stats.nfe_backward > 0) == adjoint
    assert all(p.grad is not None for p in model.parameters())
    reset_solve_stats(model)
    assert collect_solve_stats(model).nfe_forward == 0


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="choose one of: odenet, resnet, rknet, mlp"):
        build_mnist_model("vgg", SolverSpec())
