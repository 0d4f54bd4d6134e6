"""The library's layers (utils/__init__.py): a module imports only from its own layer
or the layers above it, so that the architecture stays readable from the folders."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Top to bottom: each may import from those before it. models/ and kernels/ sit between runtime and data.
LAYERS = ["runtime", "models", "kernels", "data", "engine", "deploy", "distill", "reporting", "pipeline"]
TOP_LEVEL = ("models", "kernels")  # layers that are packages of their own, beside utils/


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in TOP_LEVEL:
        return parts[0]
    if parts[0] == "utils" and len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return None


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return modules


def test_every_import_points_to_the_same_or_a_lower_layer():
    sources = sorted((ROOT / "utils").glob("*/*.py")) + [path for package in TOP_LEVEL
                                                         for path in sorted((ROOT / package).glob("*.py"))]
    assert len(sources) > 20
    wrong = []
    for path in sources:
        own = layer_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in imported_modules(path):
            target = layer_of(module)
            if target and LAYERS.index(target) > LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)} ({own}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_utils_holds_only_the_layer_packages():
    loose = [p.name for p in (ROOT / "utils").glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside a layer: {loose}"
    assert sorted(p.name for p in (ROOT / "utils").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(layer for layer in LAYERS if layer not in TOP_LEVEL)


def test_the_networks_know_nothing_of_the_cpu_kernels():
    """models/ holds the networks, attention and weights; the speed-ups are applied from outside."""
    for path in sorted((ROOT / "models").glob("*.py")):
        assert not any(layer_of(module) == "kernels" for module in imported_modules(path)), path.name
