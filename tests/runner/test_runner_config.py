"""Config composition through Hydra's compose API: group defaults, overrides, tolerance resolution, checks."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from runner_helpers import compose_config, toy_config

from neuralode.config import ConfigError, config_dir, run_name, validate
from neuralode.models.odeblock import RUNNER_CONTROLLER, RUNNER_MAX_STEPS_PER_SOLVE, RUNNER_OPTIONS, ODEBlock, SolverSpec
from neuralode.solvers import SOLVERS, MaxNumStepsError, odeint
from neuralode.utils.runtime import resolve_solver


def test_defaults_pick_every_group():
    cfg = compose_config(hydra=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.task, choices.solver, choices.profile) == ("mnist", "dopri5", "quick")
    assert (cfg.task.name, cfg.model.name, cfg.data.name, cfg.profile.name) == ("mnist", "odenet", "mnist", "quick")
    assert cfg.solver.method == "dopri5" and cfg.solver.tol is None and cfg.solver.adjoint is True
    assert cfg.seed == 0 and cfg.device == "auto"
    assert (cfg.trainer.resume, cfg.trainer.progress, cfg.trainer.log_every_steps) == (True, "auto", 50)  # the schema's
    validate(compose_config())


def test_every_registered_method_is_a_solver_option():
    """The solver group is derived from the registry: no hand-written per-method file exists."""
    assert not (config_dir() / "solver").exists()
    for method in SOLVERS:
        assert OmegaConf.to_container(toy_config(f"solver={method}").solver) == {
            "method": method, "tol": None, "rtol": None, "atol": None, "adjoint": True,
            "options": {}, "adjoint_options": {}, "compile": False, "per_sample": False}


def test_lsoda_preset_is_the_paper_solver_family():
    """solver=lsoda: SciPy's LSODA behind scipy_solver, valid for the runner, with the runner's step cap."""
    cfg = toy_config("solver=lsoda")
    assert OmegaConf.to_container(cfg.solver)["method"] == "scipy_solver"
    assert OmegaConf.to_container(cfg.solver)["options"] == {"solver": "LSODA"}
    validate(cfg)
    spec = SolverSpec.from_config(cfg.solver, default_tol=cfg.task.default_tol)
    assert (spec.method, spec.options) == ("scipy_solver", {"solver": "LSODA",
                                                          "max_steps_per_solve": RUNNER_MAX_STEPS_PER_SOLVE})


@pytest.mark.parametrize(("overrides", "rtol", "atol"), [
    ((), 1e-3, 1e-3),                                           # tol null: the task's default_tol
    (("solver.tol=1e-5",), 1e-5, 1e-5),                         # tol sets both
    (("solver.tol=1e-5", "solver.rtol=1e-2"), 1e-2, 1e-5),      # rtol/atol override tol
    (("solver.atol=1e-9",), 1e-3, 1e-9),
])
def test_tolerance_resolution(overrides: tuple[str, ...], rtol: float, atol: float):
    spec = resolve_solver(toy_config(*overrides))
    assert (spec.rtol, spec.atol) == (rtol, atol)


def test_a_task_without_a_default_tolerance_needs_solver_tol():
    cfg = toy_config()
    del cfg.task.default_tol
    with pytest.raises(ConfigError, match="task=toy sets no task.default_tol and solver.tol is null; set the tolerance"):
        resolve_solver(cfg)
    cfg.solver.tol = 1e-4
    assert (resolve_solver(cfg).rtol, resolve_solver(cfg).atol) == (1e-4, 1e-4)


@pytest.mark.parametrize(("profile", "epochs"), [("smoke", 1), ("quick", 5), ("full", 10)])
def test_profiles(profile: str, epochs: int):
    cfg = toy_config(f"profile={profile}")  # no task_profile/toy_*.yaml: the generic profile's epochs
    assert cfg.profile.name == profile and cfg.trainer.epochs == epochs


def test_task_profile_overrides_generic_profile():
    cfg = compose_config("profile=smoke", "data=fashion_mnist")
    assert cfg.data.name == "fashion_mnist" and cfg.data.limit_train is not None


def test_overrides_and_options():
    cfg = toy_config("trainer.epochs=7", "seed=3", "solver=rk4", "++solver.options.step_size=0.1", "solver.adjoint=false")
    assert cfg.trainer.epochs == 7 and cfg.seed == 3
    spec = SolverSpec.from_config(cfg.solver, default_tol=cfg.task.default_tol)
    assert (spec.method, spec.options, spec.adjoint) == ("rk4", {"step_size": 0.1}, False)


def test_the_runner_caps_adaptive_steps_and_the_options_override_it():
    assert SolverSpec.from_config(toy_config().solver, 1e-3).options == RUNNER_OPTIONS
    assert SolverSpec.from_config(toy_config("++solver.options.max_steps_per_solve=7", "++solver.options.dtype=float64",
                                             "++solver.options.controller=integral").solver, 1e-3).options == {
        "max_steps_per_solve": 7, "controller": "integral", "dtype": "float64"}
    # max_num_steps is torchdiffeq's per-interval cap: it adds to the runner's per-solve one.
    assert SolverSpec.from_config(toy_config("++solver.options.max_num_steps=7").solver, 1e-3).options == {
        **RUNNER_OPTIONS, "max_num_steps": 7}
    assert SolverSpec.from_config(toy_config("solver=rk4").solver, 1e-3).options == {}  # fixed steps: no cap


def test_a_time_dtype_is_given_by_name(train_toy):
    validate(toy_config("++solver.options.dtype=float64"))
    with pytest.raises(ConfigError, match=r"solver.options\['dtype'\] must be torch.float32 or torch.float64"):
        validate(toy_config("++solver.options.dtype=float65"))
    _, records = train_toy("++solver.options.dtype=float64", "trainer.epochs=1")
    assert records[0]["nfe_forward"] > 0


def test_the_runner_keeps_its_numerics():
    """The runner's policy keeps what runs were trained with before odeint took torchdiffeq's defaults: time in the
    state's dtype (not float64) and a step cap over each whole solve (not per output interval)."""
    func = lambda t, y: torch.stack([y[1], -(t / 10) ** 2 * y[0]])  # noqa: E731
    y0, t = torch.tensor([1.0, 0.0]), torch.linspace(100.0, 102.0, 11)
    block = ODEBlock(func, SolverSpec.from_config(toy_config("solver.adjoint=false").solver, 1e-5))
    state_dtype_time = odeint(func, y0, t, rtol=1e-5, atol=1e-5, options=dict(controller=RUNNER_CONTROLLER,
                                                                               dtype=torch.float32))
    assert torch.equal(block(y0, t, last_only=False), state_dtype_time)
    assert not torch.equal(odeint(func, y0, t, rtol=1e-5, atol=1e-5, options=dict(controller=RUNNER_CONTROLLER)),
                           state_dtype_time)
    capped = ODEBlock(func, SolverSpec.from_config(toy_config("solver.adjoint=false",
                                                              "++solver.options.max_steps_per_solve=30").solver, 1e-5))
    with pytest.raises(MaxNumStepsError, match="max_steps_per_solve=30"):
        capped(y0, t, last_only=False)
    odeint(func, y0, t, rtol=1e-5, atol=1e-5, options=dict(controller=RUNNER_CONTROLLER, max_num_steps=30))


def test_adjoint_options_add_to_the_forward_options():
    cfg = toy_config("++solver.options.max_num_steps=50", "++solver.options.norm=seminorm",
                     "++solver.adjoint_options.norm=seminorm", "++solver.adjoint_options.first_step=0.1")
    spec = SolverSpec.from_config(cfg.solver, default_tol=cfg.task.default_tol)
    assert spec.backward_options() == {**RUNNER_OPTIONS, "max_num_steps": 50, "norm": "seminorm", "first_step": 0.1}
    assert SolverSpec(options={"max_num_steps": 50}).backward_options() is None  # odeint_adjoint inherits itself


def test_solver_compile_selects_the_compiled_step_of_an_adaptive_method():
    cfg = toy_config("solver.compile=true")
    validate(cfg)
    assert SolverSpec.from_config(cfg.solver, default_tol=cfg.task.default_tol).options["compile"] is True
    assert "compile" not in SolverSpec.from_config(toy_config().solver, default_tol=1e-3).options
    with pytest.raises(ConfigError, match=r"solver\.compile=true needs an adaptive explicit Runge-Kutta method "
                                          r"\(.*dopri5.*\); solver\.method=rk4 has no compiled step"):
        validate(toy_config("solver=rk4", "++solver.options.step_size=0.1", "solver.compile=true"))


def test_solver_per_sample_passes_per_sample_to_odeint_and_refuses_what_it_lacks():
    cfg = toy_config("solver.per_sample=true", "++solver.adjoint_options.norm=seminorm")
    validate(cfg)
    spec = SolverSpec.from_config(cfg.solver, default_tol=cfg.task.default_tol)
    assert spec.options == {**RUNNER_OPTIONS, "per_sample": True}
    assert "per_sample" not in SolverSpec.from_config(toy_config().solver, default_tol=1e-3).options
    with pytest.raises(ConfigError, match=r"^solver\.per_sample=true and solver\.compile=true cannot be combined"):
        validate(toy_config("solver.per_sample=true", "solver.compile=true"))
    with pytest.raises(ConfigError, match=r"^solver\.per_sample=true needs an adaptive explicit Runge-Kutta method "
                                          r"\(.*dopri5.*\); solver\.method=rk4 cannot"):
        validate(toy_config("solver=rk4", "++solver.options.step_size=0.1", "solver.per_sample=true"))
    with pytest.raises(ConfigError, match=r"^solver\.per_sample=true does not support solver\.options\.step_t; "):
        validate(toy_config("solver.per_sample=true", "++solver.options.step_t=[0.5]"))
    with pytest.raises(ConfigError, match=r"^solver\.per_sample=true cannot integrate regularize\.kinetic .*; set "
                                          r"regularize\.kinetic=0 or solver\.per_sample=false$"):
        validate(toy_config("solver.per_sample=true", "regularize.kinetic=0.01"))


def test_run_dir_is_named_by_the_overrides():
    cfg = compose_config("task=toy", "solver=rk4", "trainer.epochs=2", "device=cpu", "trainer.progress=false",
                         "trainer.threads=1", "trainer.figures_every=1", "trainer.log_every_steps=5", "seed=1",
                         hydra=True)
    # task is in the path already; device, length and reporting don't change the experiment: a longer
    # trainer.epochs lands in the same dir, and continues the run there.
    assert cfg.hydra.run.dir == "outputs/toy/seed=1,solver=rk4"
    assert compose_config("task=toy", hydra=True).hydra.run.dir == "outputs/toy/default"
    assert run_name("++solver.options.step_size=0.1,x=a/b") == "solver.options.step_size=0.1,x=a_b"


@pytest.mark.parametrize(("override", "message"), [
    ("solver.tol=-1", "solver.tol=-1.0 is invalid"),
    ("solver.rtol=0", "solver.rtol=0.0 is invalid"),
    ("solver.method=rk5", "solver.method='rk5' is unknown"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid"),
    ("trainer.figures_every=-1", "trainer.figures_every=-1 is invalid"),
    ("trainer.log_every_steps=-1", "trainer.log_every_steps=-1 is invalid"),
    ("trainer.progress=sometimes", "trainer.progress='sometimes' is invalid; use auto"),
    ("solver=rk4", "solver.method=rk4 takes fixed steps; set their size with solver.options.step_size=<size>"),
    ("device=gpu", "device='gpu' is invalid"),
    ("+trainer.lr=0.1", "trainer.lr is not a known key"),
    ("++solver.options.controller=PI", "solver.options['controller'] must be 'integral' or 'pi', got 'PI'"),
    ("++solver.adjoint_options.norm=foo", "solver.adjoint_options.norm='foo' is invalid; use "
                                          "solver.adjoint_options.norm=seminorm"),
])
def test_value_checks(override: str, message: str):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.").replace("[", r"\[")):
        validate(toy_config(override))


TASK_MODELS = {"mnist": ("odenet", "rknet", "resnet", "mlp"), "spiral": ("latent_ode", "rnn", "rnn_dt"),
               "cnf": ("cnf", "planar"), "cnf_match": ("cnf", "planar"),
               "poisson": ("latent_ode_poisson", "poisson_const"),
               "dynamics": ("node", "rnn", "rnn_dt", "resnet_euler")}


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
@pytest.mark.parametrize(("task", "model"), [(t, m) for t, models in TASK_MODELS.items() for m in models])
def test_every_task_model_and_profile_composes_and_validates(task: str, model: str, profile: str):
    cfg = compose_config(f"task={task}", f"model={model}", f"profile={profile}")
    assert (cfg.task.name, cfg.model.name, cfg.profile.name) == (task, model, profile)
    validate(cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (("task=spiral", "+task.bach_size=3"), "task.bach_size is not a key of task=spiral; did you mean task.batch_size?"),
    (("task=cnf", "+task.grid_sise=3"), "task.grid_sise is not a key of task=cnf; did you mean task.grid_size?"),
    (("task=cnf_match", "+model.widht=3"), "model.widht is not a key of model=cnf; did you mean model.width?"),
    (("task=mnist", "+data.limit_trian=3"), "data.limit_trian is not a key of data=mnist; did you mean data.limit_train?"),
    (("task=spiral", "task.lr=fast"), "task.lr='fast' has the wrong type; task=spiral expects float, e.g. task.lr=0.01"),
    (("task=cnf", "task.batch_size=1.5"), "task.batch_size=1.5 has the wrong type; task=cnf expects int"),
])
def test_a_typo_or_a_wrong_type_in_any_task_is_refused_with_the_valid_keys(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    if "not a key" in message:
        assert "its keys are: " in str(err.value)


def test_a_profile_without_sizes_for_the_task_is_refused():
    """A task has no defaults worth training for a profile it does not size (they would train 10 epochs)."""
    with pytest.raises(ConfigError, match=r"^profile=demo has no sizes for task=spiral; use one of: full, quick, smoke$"):
        validate(compose_config("task=spiral", "profile=demo"))
    with pytest.raises(ConfigError, match=r"profile=converged has no sizes for task=cnf; use one of: full, quick, smoke$"):
        validate(compose_config("task=cnf", "profile=converged"))
    for profile in ("demo", "converged"):
        validate(compose_config("task=mnist", f"profile={profile}"))


def test_the_demo_fixes_its_thread_count():
    """The README's demo accuracy was measured on 2 threads; another count sums in another order."""
    cfg = compose_config("task=mnist", "data=digits", "profile=demo")
    assert cfg.trainer.threads == 2


def test_the_dynamics_profiles_train_on_one_thread():
    """Its 50-unit MLP's ops are too small to split: a second thread only waits (20x the CPU per step at load 13)."""
    for profile in ("smoke", "demo", "quick", "full"):
        assert compose_config("task=dynamics", f"profile={profile}").trainer.threads == 1, profile


def test_use_solver_re_solves_a_block_with_only_the_settings_given():
    """figure3 and controller_study re-solve a trained model through ODEBlock.use_solver."""
    func = lambda t, y: -y  # noqa: E731
    block = ODEBlock(func, resolve_solver(toy_config()))
    trained = block.solver
    block.use_solver(rtol=1e-6, atol=1e-7, adjoint=False)
    assert (block.solver.rtol, block.solver.atol, block.solver.adjoint) == (1e-6, 1e-7, False)
    assert (block.solver.method, block.solver.options) == (trained.method, trained.options)
    options = {"step_size": 0.25}
    block.use_solver(method="rk4", options=options, adjoint_options={})
    options["step_size"] = 1.0  # the block keeps its own copy
    assert (block.solver.method, block.solver.options, block.solver.rtol) == ("rk4", {"step_size": 0.25}, 1e-6)
    y0 = torch.tensor([1.0])
    block.stats.reset()
    assert torch.allclose(block(y0), torch.exp(-y0), atol=1e-3) and block.stats.nfe_forward == 16  # 4 rk4 steps
