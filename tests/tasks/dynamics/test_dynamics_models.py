"""task=dynamics models: the batched solve over irregular windows, the ResNet-as-Euler steps, and a neural ODE
that learns a linear system's vector field."""
from __future__ import annotations

import torch

from neuralode.data.dynamics import System, generate_dynamics
from neuralode.models.dynamics import DynamicsRNN, NeuralODE, ResNetEuler, Scales, VectorField
from neuralode.models.odeblock import SolverSpec
from neuralode.tasks.base import validated
from neuralode.tasks.dynamics import DynamicsTask, DynamicsTaskConfig

LINEAR_A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]])
LINEAR = System("linear", lambda y: y @ LINEAR_A.to(y.dtype).T, (2.0, 0.0), (0.0, 0.0))
SOLVER = SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, adjoint=False)


def scales() -> Scales:
    return Scales(states=torch.randn(50, 2), rate=torch.ones(2))


def test_a_batch_of_irregular_windows_is_solved_as_each_window_alone():
    torch.manual_seed(0)
    model = NeuralODE(VectorField(scales(), hidden=16), SOLVER)
    times = torch.sort(torch.rand(3, 5) * 2, dim=1).values
    y0 = torch.randn(3, 2)
    with torch.no_grad():
        batched = model(y0, times)
        for i in range(3):  # the field is autonomous: a window starting at t0 is solved from 0
            alone = model.ode(y0[i:i + 1], times[i] - times[i, 0], last_only=False)[:, 0]
            torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)


def test_resnet_euler_takes_one_step_per_observation_whatever_the_gaps():
    field = VectorField(scales(), hidden=8)
    model = ResNetEuler(field, dt=0.1)
    y0 = torch.randn(2, 2)
    regular = torch.arange(4.0).expand(2, -1) * 0.1
    irregular = torch.tensor([[0.0, 0.01, 0.5, 0.6], [0.0, 0.3, 0.31, 2.0]])
    with torch.no_grad():
        assert torch.equal(model(y0, regular), model(y0, irregular))
        # predict() places the steps at multiples of dt and interpolates linearly between them.
        steps = model.predict(y0, regular)
        halfway = model.predict(y0, torch.tensor([[0.0, 0.05]]).expand(2, -1))[:, 1]
    torch.testing.assert_close(steps, model(y0, regular))
    torch.testing.assert_close(halfway, (steps[:, 0] + steps[:, 1]) / 2)


def test_the_rnn_reads_the_gaps_only_with_use_dt():
    torch.manual_seed(0)
    y0 = torch.randn(2, 2)
    a, b = torch.tensor([[0.0, 0.1, 0.2]]).expand(2, -1), torch.tensor([[0.0, 0.5, 0.6]]).expand(2, -1)
    with torch.no_grad():
        for use_dt in (False, True):
            model = DynamicsRNN(scales(), hidden=8, use_dt=use_dt, time_unit=0.1)
            assert torch.equal(model(y0, a), model(y0, b)) != use_dt
            assert torch.equal(model(y0, a)[:, 0], y0)


def test_a_neural_ode_learns_a_linear_system():
    """y' = A y with A a damped rotation: from short windows of two clean trajectories, the learned field
    converges to the true one over the region the data covers."""
    torch.manual_seed(0)
    data = generate_dynamics(LINEAR, t_end=3.0, n_points=16, extrapolate=1.0, noise_std=0.0, irregular=False,
                             n_trajectories=2, n_test=4, ic_scale_min=0.7, seed=0)
    model = NeuralODE(VectorField(Scales.of(data.train.times, data.train.values), hidden=32), SOLVER)
    settings = validated(DynamicsTaskConfig, {"name": "dynamics", "lr": 0.02, "iters_per_epoch": 200}, "task")
    task = DynamicsTask(data, model, model_name="node", task=settings,
                        window=5, batch_size=16, seed=0)
    before = task.evaluate()
    optimizer, scheduler = task.configure_optimizers(1)
    for batch in task.train_batches(1):
        optimizer.zero_grad()
        task.training_step(batch).loss.backward()
        optimizer.step()
        scheduler.step()
    after = task.evaluate()
    assert before["field_rel_l2"] > 0.5 and before["rel_l2_train"] > 0.5
    assert after["field_rel_l2"] < 0.05 and after["rel_l2_train"] < 0.03
