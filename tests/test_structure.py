"""The package's shape: subpackages in one dependency order, no import cycles, lazy imports.

Imports are read with `ast` from every module, function-level and TYPE_CHECKING ones
included, so a cycle hidden inside a function still fails here.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


from conftest import REPO, cli_env

PKG = REPO / "lrgi_ooc"

# Lowest first. A module may import its own subpackage and any subpackage of a lower rank;
# subpackages of the same rank do not import each other.
ORDER: list[tuple[str, ...]] = [
    ("base",),
    ("store",),
    ("cluster",),
    ("ingest", "csr", "sample", "nn", "converters"),
    ("stages", "pyg"),
    ("api",),
    ("cli",),
    ("__main__", "__init__"),
]
RANK = {name: r for r, names in enumerate(ORDER) for name in names}


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every lrgi_ooc module that `path` imports anywhere in its body."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != "lrgi_ooc" and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, m, known) for m, p in mods.items()}


def part(mod: str) -> str:
    """The subpackage (or top-level module) a module belongs to."""
    bits = mod.split(".")
    return "__init__" if len(bits) == 1 else bits[1]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_every_subpackage_has_a_rank_and_says_what_it_owns():
    parts = {part(m) for m in modules()}
    assert parts <= set(RANK), f"subpackages without a rank: {sorted(parts - set(RANK))}"
    for sub in PKG.iterdir():
        if sub.is_dir() and (sub / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text()))
            assert doc and "must not import" in " ".join(doc.split()).lower(), f"{sub.name}/__init__.py: no ownership note"


def test_no_import_cycle_among_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_follow_the_declared_order():
    bad = []
    for m, deps in graph().items():
        for d in deps:
            pm, pd = part(m), part(d)
            if pm == pd or m == "lrgi_ooc":
                continue
            if RANK[pd] >= RANK[pm]:
                bad.append(f"{m} imports {d} ({pd} is not below {pm})")
    assert not bad, "\n".join(sorted(bad))


def test_the_checker_sees_cycles_and_upward_imports(tmp_path):
    # a test that cannot fail is a defect: the checker itself on a made-up graph
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from lrgi_ooc.stages import train\n"
                   "if False:\n    import lrgi_ooc.cli.main\n")
    got = imports_of(src, "lrgi_ooc.store.m", set(modules()))
    assert got == {"lrgi_ooc.stages", "lrgi_ooc.stages.train", "lrgi_ooc.cli.main"}


def test_import_and_preprocess_do_not_load_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "import lrgi_ooc\n"
        "assert 'torch' not in sys.modules and 'torch_geometric' not in sys.modules\n"
        f"d = {str(tmp_path)!r}\n"
        "np.save(d + '/e.npy', np.array([[0, 1], [1, 2], [2, 0]], dtype=np.int64))\n"
        "np.save(d + '/x.npy', np.ones((3, 4), dtype=np.float32))\n"
        "lrgi_ooc.preprocess(edges=d + '/e.npy', features=d + '/x.npy', out=d + '/g.zarr')\n"
        "view = lrgi_ooc.open_store(d + '/g.zarr')\n"
        "assert view.num_nodes == 3 and view.features().shape == (3, 4)\n"
        "bad = [m for m in ('torch', 'torch_geometric') if m in sys.modules]\n"
        "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
