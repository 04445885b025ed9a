"""The package's layering, read from the source with ``ast``: which layer may import which, no
import cycle (imports inside functions count too), and no private name used from outside."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recognition", "defenses", "attacks", "env", "agents")  # folders installed as veil.<name>
NEVER = {  # layer -> layers it must not import
    "recognition": {"defenses", "attacks", "env", "agents"},
    "defenses": {"attacks", "env", "agents"},
    "attacks": {"env", "agents"},
    "env": {"agents"},
}


def modules(root: Path) -> dict[str, Path]:
    """``veil.<package>.<module>`` -> file, for every module of the package folders under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(["veil", *parts])] = f
    return out


def imported(name: str, f: Path) -> list[tuple[str, list[str]]]:
    """Every ``(module, names)`` that file ``f`` of module ``name`` imports, relative ones resolved."""
    tree = ast.parse(f.read_text(), str(f))
    base = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            anchor = base[: len(base) - node.level + 1] if node.level else []
            module = ".".join(anchor + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from veil.x import y`` counts ``veil.x.y`` when
    ``y`` is a module)."""
    mods = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for module, names in imported(m, f):
            for target in [module] + [f"{module}.{n}" for n in names]:
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in mods and target != m and target != "veil":
                    edges[m].add(target)
    return edges


def forbidden(edges: dict[str, set[str]]) -> list[str]:
    layer = lambda m: m.split(".")[1]  # noqa: E731
    return sorted(f"{m} -> {d}" for m, ds in edges.items() for d in ds if layer(d) in NEVER.get(layer(m), ()))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def private_imports(folder: Path) -> list[str]:
    """``file: module.name`` for every ``_private`` name a script in ``folder`` imports from veil."""
    out = []
    for f in sorted(folder.rglob("*.py")):
        for module, names in imported("script", f):
            if module.startswith("veil"):
                out += [f"{f.name}: {module}.{n}" for n in names if n.startswith("_")]
                out += [f"{f.name}: {module}" for part in module.split(".") if part.startswith("_")]
    return out


def test_each_layer_imports_only_the_layers_below_it() -> None:
    assert forbidden(graph(ROOT)) == []


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    assert cycles(graph(ROOT)) == []


@pytest.mark.parametrize("folder", ["benchmarks", "examples"])
def test_scripts_outside_the_package_use_only_its_public_names(folder: str) -> None:
    assert private_imports(ROOT / folder) == []


def test_the_checks_catch_a_forbidden_import_and_a_cycle(tmp_path: Path) -> None:
    """The same checks on a copy of the package with one bad import planted in each way."""
    for pkg in PACKAGES:
        for f in (ROOT / pkg).glob("*.py"):
            (tmp_path / pkg).mkdir(exist_ok=True)
            (tmp_path / pkg / f.name).write_text(f.read_text())
    trainer = tmp_path / "recognition" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\nfrom veil.agents import tracking\n")
    assert "veil.recognition.trainer -> veil.agents.tracking" in forbidden(graph(tmp_path))
    tracking = tmp_path / "agents" / "tracking.py"
    tracking.write_text(tracking.read_text() + "\n\ndef late():\n    from . import cli\n")
    assert any("veil.agents.cli" in c and "veil.agents.tracking" in c for c in cycles(graph(tmp_path)))
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "x.py").write_text("from veil.agents.train_fr import _tldmi_pretrain\n")
    assert private_imports(tmp_path / "examples") == ["x.py: veil.agents.train_fr._tldmi_pretrain"]
