"""The layout shows the architecture: every stage's DVC deps cover the code it runs, and
no module or function outgrows its room.

A stage's code is its script in stages/ and every module of src/dcgan that the script
imports, directly or through other modules, at the top of a file or inside a function
(the stage scripts import their package function inside `main()`). dvc.yaml must list a
folder or file covering each, or an edit there would leave a stale cache. Empty package
`__init__.py` files run nothing and are exempt; one that gains code must be listed. The
reverse holds as a target, checked with real DVC in test_pipeline: an edit elsewhere
reruns nothing.

Run with `pytest tests/test_layout.py -q`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(dotted: str) -> Path | None:
    """The file of module `dotted` under src (a package's __init__.py), or None."""
    base = SRC.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """The dcgan modules `path` imports anywhere in it (`from a.b import c` counts a.b.c
    when c is a module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dcgan"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "dcgan":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if _module_file(f"{node.module}.{a.name}")}
    return found


def import_closure(script: Path) -> set[Path]:
    """Every file of src/dcgan that running `script` may import, package __init__s included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for dotted in _imports(todo.pop()):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                path = _module_file(".".join(parts[:i]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT)
    if path.name == "__init__.py" and not path.read_text().strip():
        return True  # runs nothing
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_deps_cover_the_code_the_stage_runs(stage: str) -> None:
    deps = STAGES[stage]["deps"]
    script = ROOT / "stages" / f"{stage}.py"
    assert f"stages/{stage}.py" in deps
    missing = sorted(str(p.relative_to(ROOT)) for p in import_closure(script)
                     if not _covered(p, deps))
    assert missing == [], f"dvc.yaml's {stage} stage runs code it does not depend on"


def test_every_dep_exists() -> None:
    """A dep DVC cannot find fails `dvc repro`; one that names a moved file would too."""
    for name, stage in STAGES.items():
        for dep in stage["deps"]:
            if "${" not in dep:
                assert (ROOT / dep).exists(), f"{name}: {dep}"


def test_train_does_not_depend_on_code_it_does_not_run() -> None:
    """The expensive stage reruns only for its own code: not for the evaluate stage's
    scoring, the probe, generate's sampling or the sync step."""
    deps = STAGES["train"]["deps"]
    for other in ("src/dcgan/evaluation/evaluate.py", "src/dcgan/features/probe.py",
                  "src/dcgan/sampling/generate.py", "src/dcgan/tracking/sync.py",
                  "src/dcgan/tools/cli.py", "README.md"):
        assert not _covered(ROOT / other, deps), other


def test_closure_follows_function_level_and_from_imports() -> None:
    closure = {str(p.relative_to(SRC)) for p in import_closure(ROOT / "stages" / "evaluate.py")}
    assert "dcgan/evaluation/metrics.py" in closure       # evaluate -> metrics, at the top
    assert "dcgan/evaluation/inception.py" in closure     # inside a function
    assert "dcgan/core/stage.py" in closure and "dcgan/__init__.py" in closure
    assert not any(p.startswith(("dcgan/tracking", "dcgan/tools", "dcgan/training"))
                   for p in closure)
