"""The runtime stands alone: an ONNX Runtime generate imports none of the export stack, the
packages import each other in one direction only, and no module takes part in an import cycle
(function-level imports included)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "exporter", "models", "plugins")
FORBIDDEN = ("torch", "transformers", "onnx", "exporter", "models", "plugins")
# Which packages may import which: the runtime is the deployable base everything else builds on.
ALLOWED = {
    "runtime": set(),
    "plugins": {"runtime"},
    "models": {"runtime"},
    "exporter": {"runtime", "models", "plugins"},
}

_PROBE = """
import json, sys
from runtime.cli import main
code = main(sys.argv[1:])
names = sorted({m.split('.')[0] for m in sys.modules})
print(json.dumps({"code": code, "modules": names}))
"""


def test_onnxruntime_generate_imports_no_export_stack(engine, images):
    argv = ["generate", "--engine-dir", engine, "--image", str(images[0]), "--prompt", "what is in the picture?",
            "--max-new-tokens", "4", "--backend", "onnxruntime", "--json"]
    res = subprocess.run([sys.executable, "-c", _PROBE, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert json.loads(lines[0])["token_ids"]  # the generation ran
    probe = json.loads(lines[-1])
    assert probe["code"] == 0
    assert sorted(set(FORBIDDEN) & set(probe["modules"])) == []
    assert "onnxruntime" in probe["modules"]
    assert "backend: vision onnxruntime, decoder onnxruntime (requested with --backend)" in res.stderr


def test_import_runtime_is_light():
    code = "import sys, runtime; from runtime import Pipeline; print(sorted({m.split('.')[0] for m in sys.modules}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(eval(res.stdout))  # a printed list of names
    assert not loaded & {"torch", "transformers", "onnx", "onnxruntime", "exporter", "models", "plugins"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules `path` imports anywhere in its body (resolved to the longest existing
    module name; `from pkg import name` counts as importing pkg.name when that is a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            targets = [f"{stem}.{a.name}" for a in node.names] + [stem]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_packages_import_in_one_direction():
    wrong = sorted(
        f"{src} -> {dst}"
        for src, targets in _graph().items()
        for dst in targets
        if dst.split(".")[0] != src.split(".")[0] and dst.split(".")[0] not in ALLOWED[src.split(".")[0]]
    )
    assert wrong == []
