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
