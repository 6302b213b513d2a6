"""What a fresh install imports: the CLI's help and the solver library stay light, and every third-party
module the package imports is a declared dependency."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import name -> distribution name in pyproject.toml.
DISTRIBUTIONS = {"torch": "torch", "torchvision": "torchvision", "hydra": "hydra-core", "omegaconf": "omegaconf",
                 "matplotlib": "matplotlib", "tqdm": "tqdm", "sklearn": "scikit-learn", "numpy": "numpy",
                 "yaml": "pyyaml", "PIL": "pillow", "scipy": "scipy", "tensorboard": "tensorboard"}
RUNNER_ONLY = ("hydra", "omegaconf", "matplotlib", "tensorboard", "torchvision", "sklearn")


def run_and_list_modules(code: str) -> tuple[str, set[str]]:
    """What ``code`` prints in a fresh interpreter, and the top-level modules in sys.modules after it."""
    probe = f"{code}\nimport sys\nprint()\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    printed, _, modules = result.stdout.rstrip("\n").rpartition("\n")
    return printed, set(modules.split())


def loaded_after(code: str) -> set[str]:
    """The top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    return run_and_list_modules(code)[1]


def test_the_cli_and_its_help_load_neither_torch_nor_hydra():
    assert not {"torch", "hydra", "omegaconf"} & loaded_after("import neuralode.cli")
    help_run = "import neuralode.cli\ntry:\n    neuralode.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert not {"torch", "hydra", "omegaconf"} & loaded_after(help_run)


@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_commands_help_loads_neither_torch_nor_hydra(command):
    help_run = (f"import neuralode.cli\ntry:\n    neuralode.cli.main([{command!r}, '--help'])\n"
                "except SystemExit as e:\n    assert not e.code, e.code")
    stdout, loaded = run_and_list_modules(help_run)
    assert f"usage: neuralode {command}" in stdout and "dopri5" in stdout and "solver." in stdout
    assert not {"torch", "hydra"} & loaded


def test_hydras_help_for_overrides_loads_no_torch():
    # Composing registers one solver=<name> option per method: the names come without the solvers' torch code.
    help_run = ("import neuralode.cli\ntry:\n    neuralode.cli.main(['train', 'task=spiral', '--help'])\n"
                "except SystemExit:\n    pass")
    stdout, loaded = run_and_list_modules(help_run)
    assert "name: spiral" in stdout and "dopri5" in stdout
    assert "hydra" in loaded and "torch" not in loaded


def test_the_solver_library_imports_with_torch_alone():
    loaded = loaded_after("import neuralode, neuralode.solvers\nfrom neuralode import odeint, odeint_adjoint")
    assert "torch" in loaded
    assert not set(RUNNER_ONLY) & loaded


def test_the_solver_names_and_errors_load_without_torch():
    assert "torch" not in loaded_after("import neuralode.solvers.names, neuralode.errors")


def test_odeint_stays_the_function_when_its_submodule_loads_first():
    # neuralode.solvers loads its API lazily; importing the submodule of the same name must not replace the function.
    code = ("import types\nimport neuralode.solvers.odeint\nfrom neuralode.solvers import odeint\n"
            "from neuralode import odeint as top\nassert not isinstance(odeint, types.ModuleType) and top is odeint")
    assert "torch" in loaded_after(code)


def test_every_imported_package_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(req) for req in project["dependencies"]}
    declared |= {_name(req) for reqs in project["optional-dependencies"].values() for req in reqs}
    imported = set()
    for path in (ROOT / "neuralode").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"neuralode", "__future__"}
    assert third_party <= set(DISTRIBUTIONS), f"map these to their distributions: {third_party - set(DISTRIBUTIONS)}"
    assert {DISTRIBUTIONS[m] for m in third_party} <= declared


def _name(requirement: str) -> str:
    for stop in "<>=![; ":
        requirement = requirement.split(stop)[0]
    return requirement.lower()
