"""Names cited in docstrings and comments that no longer exist: the checker behind
test_layout's stale-reference tests. It reads source with `ast` and `tokenize` and
imports nothing of the package, so it runs in milliseconds.

A reference is one of:
- a dotted name that starts at a subpackage or top-level module of the package, with or
  without `dcgan.` in front: `ingest.preprocessing`, `nets.ema.average_of`,
  `dcgan.runtime.stage`. The subpackages are read from the folder at check time, so a
  renamed folder is picked up. It resolves when its longest module prefix is a file or
  package and the rest names something that module defines at top level (def, class,
  assignment, import) and, one level further, a member of that class;
- a capitalised name alone in backticks, `DatasetWriter` or `Checkpoint()`: it must be
  defined or imported somewhere in the checked files, be a builtin, or be one of the few
  library names in LIBRARY_NAMES. All-capital names (`TF_CONFIG`, `BEST`) are left out:
  in prose they are as often environment variables or params as Python names;
- a path `src/dcgan/...`: the file or folder must exist.

Use `stale_references(root, files, yaml_files)`; test_layout runs it on the real tree.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import tokenize
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

# Library classes the docs cite in backticks that no file imports by name (the code uses
# them as attributes). Add one here only when a docstring starts citing it.
LIBRARY_NAMES = frozenset({
    "BackupAndRestore",  # keras.callbacks.BackupAndRestore
    "BatchNormalization",  # keras.layers.BatchNormalization
    "Conv2D",            # keras.layers.Conv2D
    "Conv2DBackpropFilter",  # tf.raw_ops.Conv2DBackpropFilter
    "Conv2DTranspose",   # keras.layers.Conv2DTranspose
    "MlflowClient",      # mlflow.tracking.MlflowClient
})

BACKTICKED = re.compile(r"`([A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)*)(?:\(\))?`")
PACKAGE_PATH = re.compile(r"(?<![\w/])src/dcgan(?:/[\w.]+)*")


def subpackages(pkg: Path) -> list[str]:
    """The subpackages and top-level modules of `pkg` (dunder files left out)."""
    return sorted(p.stem for p in pkg.iterdir() if not p.name.startswith(("_", "."))
                  and (p.suffix == ".py" or p.is_dir()))


def dotted_pattern(pkg: Path) -> re.Pattern[str]:
    """Dotted names starting at one of `pkg`'s subpackages, not inside a longer name."""
    heads = "|".join(map(re.escape, subpackages(pkg)))
    return re.compile(rf"(?<![\w./-])(?:dcgan\.)?(?:{heads})(?:\.[A-Za-z_]\w*)+")


def python_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each `#` comment and each line of each module, class and
    function docstring in `path`."""
    source = path.read_text()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                for offset, line in enumerate(first.value.value.splitlines()):
                    yield first.lineno + offset, line


def yaml_comments(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each `#` comment in a YAML file (a `#` after a space or at
    the start of the line; dvc.yaml quotes no `#`)."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.search(r"(?:^|\s)#(.*)", line)
        if match:
            yield number, match.group(1)


def _flat(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of `body` and of the if/try/with/for blocks in it, not of defs."""
    for stmt in body:
        yield stmt
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _flat(getattr(stmt, field, []))


def _bound(stmt: ast.stmt) -> list[str]:
    """The names `stmt` binds in its own scope."""
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in stmt.names]
    targets = {ast.Assign: lambda s: s.targets, ast.AnnAssign: lambda s: [s.target],
               ast.AugAssign: lambda s: [s.target]}.get(type(stmt), lambda s: [])(stmt)
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _members(cls: ast.ClassDef) -> set[str]:
    """What a class defines: its body's names and the `self.x` its methods assign."""
    names = {name for stmt in _flat(cls.body) for name in _bound(stmt)}
    names |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
              and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
              and n.value.id == "self"}
    return names


@cache
def top_level(path: Path) -> dict[str, set[str] | None]:
    """Each top-level name of a module, with its members where it is a class here."""
    names: dict[str, set[str] | None] = {}
    for stmt in _flat(ast.parse(path.read_text()).body):
        for name in _bound(stmt):
            names[name] = _members(stmt) if isinstance(stmt, ast.ClassDef) else None
    return names


def module_file(pkg: Path, parts: list[str]) -> Path | None:
    """The file of module `parts` inside `pkg` (a package's __init__.py), or None."""
    base = pkg.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def resolves(pkg: Path, dotted: str) -> bool:
    """Whether dotted name (package-relative, `dcgan.` optional) exists in `pkg`."""
    parts = dotted.split(".")[1:] if dotted.startswith("dcgan.") else dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = module_file(pkg, parts[:cut])
        if path is not None:
            break
    else:
        return False
    rest, names = parts[cut:], top_level(path)
    if not rest:
        return True
    if rest[0] not in names:
        return False
    members = names[rest[0]]
    return len(rest) == 1 or members is None or rest[1] in members


def defined_anywhere(files: Iterable[Path]) -> set[str]:
    """Every name any of `files` binds, at any depth, plus Python's builtins."""
    names = set(dir(builtins)) | LIBRARY_NAMES
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.stmt):
                names.update(_bound(node))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return names


def _missing(root: Path, text: str, dotted: re.Pattern[str], known: set[str]) -> Iterator[str]:
    pkg = root / "src" / "dcgan"
    for match in dotted.finditer(text):
        if not resolves(pkg, match.group()):
            yield match.group()
    for match in BACKTICKED.finditer(text):
        if match.group(1) not in known:
            yield match.group(1)
    for match in PACKAGE_PATH.finditer(text):
        if not (root / match.group().rstrip(".")).exists():
            yield match.group().rstrip(".")


def stale_references(root: Path, files: list[Path], yaml_files: list[Path]) -> list[str]:
    """`path:line: name does not exist` for each reference in the docstrings and comments
    of the Python `files` and the comments of `yaml_files` that does not resolve within
    `root`/src/dcgan (backticked names: within `files`)."""
    dotted, known = dotted_pattern(root / "src" / "dcgan"), defined_anywhere(files)
    texts = [(p, sorted(python_texts(p))) for p in files]
    texts += [(p, yaml_comments(p)) for p in yaml_files]
    return [f"{path.relative_to(root)}:{line}: {name} does not exist"
            for path, lines in texts for line, text in lines
            for name in _missing(root, text, dotted, known)]
