"""The layout shows the architecture: every stage's DVC deps cover the code it runs, and
no module or function outgrows its room.

A stage's code is its script in stages/ and every module of src/dcgan that the script
imports, directly or through other modules, at the top of a file or inside a function
(the stage scripts import their package function inside `main()`). dvc.yaml must list a
folder or file covering each, or an edit there would leave a stale cache. Empty package
`__init__.py` files run nothing and are exempt; one that gains code must be listed. The
reverse holds as a target, checked with real DVC in test_pipeline: an edit elsewhere
reruns nothing.

Room: a module of src/dcgan or stages/ has at most MAX_MODULE_LINES lines and a function
(method, nested function: each counted whole, decorators not) at most MAX_FUNCTION_LINES.
Names that docstrings and comments cite (`ingest.preprocessing`, `DatasetWriter`,
src/dcgan/... paths) must still exist; docstring_names.py says what counts as one.

Run with `pytest tests/test_layout.py -q`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from docstring_names import stale_references

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 50


def _code_files(root: Path) -> list[Path]:
    """The modules whose size and docs are checked: the package, the stage scripts and the
    benchmarks (their tests aside)."""
    return (sorted((root / "src" / "dcgan").rglob("*.py")) + sorted((root / "stages").glob("*.py"))
            + sorted((root / "benchmarks").glob("*.py")))


def _module_file(dotted: str) -> Path | None:
    """The file of module `dotted` under src (a package's __init__.py), or None."""
    base = SRC.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _runs(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` that can run: all but the bodies of `if TYPE_CHECKING:` blocks,
    whose imports only type checkers follow."""
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path) -> set[str]:
    """The dcgan modules `path` imports anywhere in it that can run (`from a.b import c`
    counts a.b.c when c is a module, else a.b)."""
    found = set()
    for node in _runs(ast.parse(path.read_text())):
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
    for other in ("src/dcgan/evaluation/evaluate.py", "src/dcgan/evaluation/probe.py",
                  "src/dcgan/sampling/generate.py", "src/dcgan/tracking/sync.py",
                  "src/dcgan/tools/cli.py", "README.md"):
        assert not _covered(ROOT / other, deps), other


def test_closure_follows_function_level_and_from_imports() -> None:
    closure = {str(p.relative_to(SRC)) for p in import_closure(ROOT / "stages" / "evaluate.py")}
    assert "dcgan/evaluation/metrics.py" in closure       # evaluate -> metrics, at the top
    assert "dcgan/evaluation/inception.py" in closure     # inside a function
    assert "dcgan/runtime/stage.py" in closure and "dcgan/__init__.py" in closure
    assert not any(p.startswith(("dcgan/tracking", "dcgan/tools", "dcgan/training"))
                   for p in closure)


def _functions(nodes: list[ast.AST], prefix: str = "") -> list[tuple[str, ast.AST]]:
    """(qualified name, node) of every def in `nodes`, methods and nested ones included."""
    found = []
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((prefix + node.name, node))
        named = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        inner = f"{prefix}{node.name}." if named else prefix
        found += _functions(list(ast.iter_child_nodes(node)), inner)  # in if/try blocks too
    return found


def oversized(root: Path, files: list[Path], max_module: int = MAX_MODULE_LINES,
              max_function: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:line name N lines` for each module over `max_module` lines and each function
    over `max_function` (from `def` to its last line, decorators excluded)."""
    found = []
    for path in files:
        source = path.read_text()
        rel, lines = path.relative_to(root), len(source.splitlines())
        if lines > max_module:
            found.append(f"{rel}:1 <module> {lines} lines")
        for name, node in _functions(ast.parse(source).body):
            size = node.end_lineno - node.lineno + 1
            if size > max_function:
                found.append(f"{rel}:{node.lineno} {name} {size} lines")
    return found


def test_no_module_or_function_outgrows_its_room() -> None:
    """STYLE.md's sizes: past them a module or function is usually two concepts."""
    found = oversized(ROOT, _code_files(ROOT))
    assert found == [], "too long:\n" + "\n".join(found)


def _planted_def(name: str, lines: int, indent: str = "") -> str:
    """Source of a function `name` that is exactly `lines` lines long."""
    return f"{indent}def {name}():\n" + "".join(f"{indent}    x = {i}\n" for i in range(lines - 1))


def test_size_check_reports_a_planted_offender(tmp_path: Path) -> None:
    source = ("@decorator\n" + _planted_def("fits", 50)            # lines 1-51
              + "class Holder:\n" + _planted_def("grown", 51, "    ")  # method at 53
              + "def outer():\n" + _planted_def("inner", 51, "    "))  # 104, nested at 105
    module = tmp_path / "src" / "m.py"
    module.parent.mkdir()
    module.write_text(source + "\n" * (301 - len(source.splitlines())))
    assert oversized(tmp_path, [module]) == ["src/m.py:1 <module> 301 lines",
                                             "src/m.py:53 Holder.grown 51 lines",
                                             "src/m.py:104 outer 52 lines",
                                             "src/m.py:105 outer.inner 51 lines"]
    module.write_text(source[:source.index("class Holder")] + "\n" * 249)  # 300 lines
    assert oversized(tmp_path, [module]) == []


def test_names_cited_in_docstrings_and_comments_exist() -> None:
    """A docstring or comment that names a moved module or a renamed class sends the
    reader to something that is not there."""
    found = stale_references(ROOT, _code_files(ROOT), [ROOT / "dvc.yaml"])
    assert found == [], "stale references:\n" + "\n".join(found)


def test_name_check_reports_planted_stale_references(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "dcgan"
    (pkg / "core").mkdir(parents=True)
    (pkg / "core" / "__init__.py").write_text("")
    (pkg / "core" / "config.py").write_text(
        "from pathlib import Path as Where\n\nLIMIT = 3\n\n\nclass Params:\n"
        "    def load(self):\n        self.seen = True\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}  # see core.config.Gone\n")
    user = pkg / "user.py"
    user.write_text(
        '"""Uses `core.config.Params.load`, `dcgan.core.config.LIMIT`, `Params()`, `Where`,\n'
        'src/dcgan/core/config.py and core.config.Params.seen.\n\n'
        'Stale: `core.config.Params.gone`, `core.configs`, `DatasetWriter`, src/dcgan/x.py.\n'
        '"""\n\n\ndef f():\n    """Moved to `user.f`."""\n    # user.g moved\n')
    assert stale_references(tmp_path, [pkg / "core" / "config.py", user],
                            [tmp_path / "dvc.yaml"]) == [
        "src/dcgan/user.py:4: core.config.Params.gone does not exist",
        "src/dcgan/user.py:4: core.configs does not exist",
        "src/dcgan/user.py:4: DatasetWriter does not exist",
        "src/dcgan/user.py:4: src/dcgan/x.py does not exist",
        "src/dcgan/user.py:10: user.g does not exist",
        "dvc.yaml:1: core.config.Gone does not exist",
    ]


def _top_level_imports(path: Path) -> set[str]:
    """The top-level names of every module `path` imports that can run."""
    found = set()
    for node in _runs(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_the_product_never_imports_the_benchmarks_or_their_peer() -> None:
    """benchmarks/ may import dcgan, never the reverse; PyTorch is the benchmarks' alone,
    and requirements-bench.txt is the only requirements file that names it."""
    offenders = sorted(str(p.relative_to(ROOT)) for p in (SRC / "dcgan").rglob("*.py")
                       if _top_level_imports(p) & {"benchmarks", "torch"})
    assert offenders == []
    assert not list((SRC / "dcgan").rglob("bench*.py"))
    for name in ("requirements.txt", "constraints.txt", "requirements-docs.txt"):
        assert "torch" not in (ROOT / name).read_text(), name
    assert "torch==" in (ROOT / "requirements-bench.txt").read_text()


def test_the_import_check_sees_a_planted_benchmark_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n"
                      "def f():\n    from benchmarks.records import machine\n")
    assert _top_level_imports(module) == {"typing", "benchmarks"}
