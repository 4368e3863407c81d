"""The house rules a newcomer relies on: small modules, one trainer a file, imports that only go down."""
import ast
import os

import pytest

from conftest import ROOT

# A module imports only from lower layers (the data package's modules also from each other).
LAYERS = {"utils": 0, "worker_processes": 0, "config": 0, "data": 1, "layers": 1, "distribution": 1, "training_loop": 2, "model": 2, "probes": 2, "hparams": 2, "run_report": 2,
          "best_refiner": 2,
          "pose_model": 3, "checkpoints": 3, "estimation_probe": 3, "export": 4, "trainer": 5, "refine": 5, "estimation": 5, "main": 6}
MAX_LINES = 450
MAX_TRAINER_LINES = 400
LONG_ON_PURPOSE = {os.path.join("data", "gaze_sample.py")}  # the procedural eye renderer


def program_files():
    """Paths, relative to the root, of the program's modules (not the tests)."""
    files = [name for name in os.listdir(ROOT) if name.endswith(".py")]
    files += [os.path.join("data", name) for name in os.listdir(os.path.join(ROOT, "data"))
              if name.endswith(".py") and name != "__init__.py"]
    return sorted(files)


def module_name(path):
    return path[:-3].replace(os.sep, ".")


def layer(module):
    return LAYERS["data" if module.startswith("data.") else module]


def imports(path):
    """Names of the program's modules that path imports."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    known = {module_name(file) for file in program_files()}
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "data":
            found |= {f"data.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & known


def test_every_module_has_a_layer():
    assert all(module_name(path) in LAYERS or path.startswith("data") for path in program_files())


@pytest.mark.parametrize("path", program_files())
def test_imports_only_go_down(path):
    module = module_name(path)
    for imported in imports(path):
        same_package = module.startswith("data.") and imported.startswith("data.")
        assert layer(imported) < layer(module) or same_package, f"{module} imports {imported}"


def test_no_import_circle():
    graph = {module_name(path): imports(path) for path in program_files()}

    def visit(module, trail):
        assert module not in trail, " -> ".join([*trail, module])
        for imported in graph[module]:
            visit(imported, [*trail, module])

    for module in graph:
        visit(module, [])


@pytest.mark.parametrize("path", program_files())
def test_modules_stay_small_and_hold_one_trainer_at_most(path):
    source = open(os.path.join(ROOT, path), encoding="utf-8").read()
    lines = len(source.splitlines())
    limit = MAX_TRAINER_LINES if path == "trainer.py" else MAX_LINES
    assert path in LONG_ON_PURPOSE or lines <= limit, f"{path}: {lines} lines"
    trainers = [node.name for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ClassDef) and node.name.endswith("Trainer")]
    assert len(trainers) <= 1, f"{path} holds {trainers}"


def test_every_data_set_has_its_loader_and_estimation_task_in_one_table():
    import main
    from config import DATA_SET_DEFAULTS
    from data.data_set import DataSet
    from model import EstimationTask
    assert list(main.DATA_SETS) == list(DATA_SET_DEFAULTS)  # --data_set's choices
    for name, (load, task) in main.DATA_SETS.items():
        # Plain folders have no labels: no estimation task.
        assert load.__module__ == f"data.{name.rstrip('s')}_data" if name == "folders" else f"data.{name}_data"
        assert isinstance(task, EstimationTask) or (name == "folders" and task is None)
    from data.folder_data import FolderData
    from data.gaze_data import GazeData
    from data.hand_data import HandData
    for data_set in (GazeData, HandData, FolderData):
        assert issubclass(data_set, DataSet) and not data_set.__abstractmethods__  # the whole contract kept
