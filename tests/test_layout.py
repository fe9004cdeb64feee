"""The code's layout: classes a reader holds at once."""

import ast

from .conftest import REPO_ROOT

MAX_CLASS_LINES = 250


def test_no_class_in_the_package_is_over_250_lines_configs_aside():
    long = []
    for path in sorted((REPO_ROOT / "modeling_vqshape").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and not node.name.endswith("Config") and lines > MAX_CLASS_LINES:
                long.append(f"{path.name}: {node.name} ({lines} lines)")
    assert not long, "split these classes: " + ", ".join(long)


# the modules that never travel with a saved model live in subpackages; their old flat paths still import, with a
# FutureWarning, for a deprecation period (modeling_vqshape/_moved.py)
OLD_CLI_MODULES = ("recordings", "visualization", "demo", "export_onnx")


def moved_modules():
    from modeling_vqshape._moved import MOVED

    return MOVED


def test_the_package_top_level_holds_the_carried_modules_and_the_old_paths_only():
    from .test_loading import CARRIED_FILES, PERSISTENCE_CARRIED_FILES, TEXT_CARRIED_FILES

    carried = {name for name in CARRIED_FILES | TEXT_CARRIED_FILES | PERSISTENCE_CARRIED_FILES if name.endswith(".py")}
    old_paths = {f"{old}.py" for old in moved_modules()}
    top_level = {path.name for path in (REPO_ROOT / "modeling_vqshape").glob("*.py")}
    assert top_level == carried | old_paths | {"__init__.py", "_moved.py"}
    folders = {path.name for path in (REPO_ROOT / "modeling_vqshape").iterdir() if path.is_dir()} - {"__pycache__"}
    assert folders == {"corpora", "tasks", "sharing"}


def test_each_old_path_warns_and_is_the_new_module():
    import importlib
    import sys
    import warnings

    for old, new in moved_modules().items():
        old, new = f"modeling_vqshape.{old}", f"modeling_vqshape.{new}"
        sys.modules.pop(old, None)  # import the old path afresh, as a user's first import would
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            __import__(old)  # as an import statement does
        assert sys.modules[old] is importlib.import_module(new)
        [warning] = [warning for warning in caught if issubclass(warning.category, FutureWarning)]
        assert f"`{new}`" in str(warning.message), warning.message
        assert warning.filename == __file__  # points at the importer, not at the shim


def test_from_the_package_import_an_old_name_warns(monkeypatch):
    import sys

    import pytest

    import modeling_vqshape

    monkeypatch.delitem(sys.modules, "modeling_vqshape.training", raising=False)
    monkeypatch.delattr(modeling_vqshape, "training", raising=False)
    with pytest.warns(FutureWarning, match="modeling_vqshape.tasks.training"):
        from modeling_vqshape import training
    from modeling_vqshape.tasks import training as new

    assert training is new


def test_the_old_command_lines_still_run(monkeypatch, capsys):
    import runpy
    import sys
    import warnings

    import pytest

    for old in OLD_CLI_MODULES:
        monkeypatch.setattr(sys, "argv", [f"{old}.py", "--help"])
        monkeypatch.delitem(sys.modules, f"modeling_vqshape.{old}", raising=False)  # as in a fresh `python -m`
        with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit) as exit_:
            warnings.simplefilter("always")
            runpy.run_module(f"modeling_vqshape.{old}", run_name="__main__")
        assert exit_.value.code == 0, old
        assert any(issubclass(warning.category, FutureWarning) for warning in caught), old
        assert "usage:" in capsys.readouterr().out, old


def test_nothing_in_the_repository_uses_an_old_path():
    import re
    import subprocess

    names = "|".join(moved_modules())
    old = re.compile(rf"modeling_vqshape\.({names})\b|modeling_vqshape/({names}|space)\b"
                     rf"|from modeling_vqshape import [^\n]*\b({names})\b")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    shims = {f"modeling_vqshape/{name}.py" for name in moved_modules()} | {"modeling_vqshape/_moved.py",
                                                                           "tests/test_layout.py"}
    found = []
    for name in files:
        if name in shims or name.startswith("tests/fixtures") or not name.endswith((".py", ".md", ".txt", ".cfg")):
            continue
        path = REPO_ROOT / name
        if path.is_file():
            found += [f"{name}: {match.group(0)}" for match in old.finditer(path.read_text(encoding="utf-8"))]
    assert not found, found
