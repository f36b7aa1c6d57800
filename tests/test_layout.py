"""The house's layout: imports between the project's groups run one way (README, Layout), and no
module imports itself back through others. Lazy imports (inside functions) count too: they only
delay a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas", "fixed_necks", "search_spaces")
# Lowest first; a module may import its own group and any group of a lower rank.
RANKS = {
    "base": 0,  # nas.errors, nas.genotype, nas.settings, nas.tables: torch-free vocabulary
    "nets": 1,  # nas.nets: ops, genotype builder, backbone body
    "data": 1,  # nas.data: COCO loading, letterboxing, the embedded dataset
    "necks": 2,  # fixed_necks, search_spaces: made of nets, used by the proxy
    "proxy": 3,  # nas.proxy: detector, pretraining, training, scoring
    "controllers": 3,  # nas.controllers: Optuna samplers
    "search": 4,  # nas.search: driver, trials, run folder, compare, calibrate
    "inspect": 5,  # nas.inspect: leaderboard, report, dashboard, drawings
    "export": 6,  # nas.export: standalone modules
    "top": 7,  # nas (the package's API), nas.cli, nas.__main__
}


def group(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("fixed_necks", "search_spaces"):
        return "necks"
    if module in ("nas", "nas.cli", "nas.__main__"):
        return "top"
    if len(parts) > 2 or (len(parts) == 2 and (ROOT / "nas" / parts[1]).is_dir()):
        return parts[1]
    return "base"


def imports() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports, anywhere in its body."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            targets = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                targets |= {n for n in names if n.split(".")[0] in PACKAGES}
            found[module] = targets
    return {m: {t for t in ts if t in found and t != m} for m, ts in found.items()}


def test_every_module_has_a_group() -> None:
    assert {group(m) for m in imports()} <= set(RANKS)


def test_imports_between_groups_run_one_way() -> None:
    upward = [
        f"{m} ({group(m)}) imports {t} ({group(t)})"
        for m, targets in imports().items()
        for t in sorted(targets)
        if group(t) != group(m) and RANKS[group(t)] >= RANKS[group(m)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_loop() -> None:
    graph = imports()
    state: dict[str, int] = {}
    loops = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                loops.append(" -> ".join([*path[path.index(t) :], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not loops, "\n".join(loops)
