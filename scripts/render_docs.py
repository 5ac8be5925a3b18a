"""Render measured figures into README.md and docs/*.md from their records, or check them.

Every figure the docs quote lives in a record: benchmarks/results.jsonl (one JSON line per
measurement, with machine and commit) or a committed metrics file (data/metrics.json,
data/probe.json, data/train/selection.json, ...). The docs hold it between markers, and this
script writes the value between them:

    <!-- fig data/metrics.json frechet_distance|.1f -->18.7<!-- /fig -->
    <!-- fig benchmarks/results.jsonl[benchmark=noop_repro] seconds|dur -->0.7 s<!-- /fig -->
    <!-- fig table:metrics -->
    | ... a whole table, made by one of the TABLES below ... |
    <!-- /fig -->
    <!-- fig rows benchmarks/results.jsonl[benchmark=evaluate] N=samples|int; s=seconds -->
    | a table: one column per `header=key|format`, one row per matching record, in file order |
    <!-- /fig -->
    <!-- fig include:docs/examples/compare.txt -->
    ```text ... the file, a real command's output (scripts/docs_examples.sh) ... ```
    <!-- /fig -->

A source is a .json file with a dotted key, or a .jsonl file with `[key=value,...]` filters
(the last matching record) and a dotted key; `|FORMAT` is a Python format spec, `dur` (seconds
as "9 min 12 s") or `int` (thousands separated). Markers are HTML comments, so the rendered
page shows only the value.

Run from anywhere: `python scripts/render_docs.py` rewrites the files in place;
`python scripts/render_docs.py --check` changes nothing and exits 1, naming each block that
disagrees with its record (tests/test_docs.py runs the check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from itertools import zip_longest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!-- fig (?P<spec>.+?) -->(?P<body>.*?)<!-- /fig -->", re.S)
SOURCE = re.compile(r"(?P<path>[\w./-]+?\.jsonl?)(?:\[(?P<filters>[^\]]*)\])?$")


class FigureError(ValueError):
    """A marker whose record, key or format cannot be resolved."""


def docs_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def matching(source: str, root: Path = ROOT) -> list[dict]:
    """The records `source` names: a .json file's one, or a .jsonl file's lines that match
    its `[key=value,...]` filters, in file order."""
    match = SOURCE.match(source)
    if not match:
        raise FigureError(f"{source!r} is not a .json or .jsonl[filters] source")
    path = root / match["path"]
    if not path.is_file():
        raise FigureError(f"{match['path']} does not exist")
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    wanted = dict(pair.split("=", 1) for pair in (match["filters"] or "").split(",") if pair)
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = [r for r in records if all(str(lookup(r, k)) == v for k, v in wanted.items())]
    if not found:
        raise FigureError(f"no record in {match['path']} matches {match['filters']}")
    return found


def load(source: str, root: Path = ROOT) -> dict:
    """The record `source` names: a .json file, or the last matching line of a .jsonl file."""
    return matching(source, root)[-1]


def lookup(record: dict, key: str) -> object:
    """`record`'s value at a dotted key (`images_per_sec.ours`); None where it is absent."""
    value: object = record
    for part in key.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def fmt(value: object, spec: str = "") -> str:
    """`value` as the docs show it: `spec` a format spec, `dur` or `int`."""
    if value is None:
        raise FigureError("the record has no such key")
    if spec == "dur":
        seconds = round(float(value))
        if seconds < 60:
            return f"{float(value):.1f} s" if float(value) < 10 else f"{seconds} s"
        return f"{seconds // 60} min {seconds % 60} s"
    if spec == "int":
        return f"{int(value):,}"
    return format(value, spec)


def value(spec: str, root: Path = ROOT) -> str:
    """The rendered text of one marker's spec."""
    if spec.startswith("table:"):
        name = spec.removeprefix("table:")
        if name not in TABLES:
            raise FigureError(f"unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
        return "\n" + TABLES[name](root) + "\n"
    if spec.startswith("include:"):
        path = root / spec.removeprefix("include:")
        if not path.is_file():
            raise FigureError(f"{path.relative_to(root)} does not exist")
        return "\n```text\n" + path.read_text().rstrip("\n") + "\n```\n"
    if spec.startswith("rows "):
        return "\n" + rows(spec.removeprefix("rows "), root) + "\n"
    source, _, rest = spec.partition(" ")
    key, _, form = rest.strip().partition("|")
    return fmt(lookup(load(source, root), key), form)


def rows(spec: str, root: Path = ROOT) -> str:
    """A Markdown table of every record matching `spec`'s source, one column per
    `header=key|format` (separated by `;`)."""
    source, _, columns = spec.partition(" ")
    records = matching(source, root)
    cols = [c.strip().partition("=")[::2] for c in columns.split(";") if c.strip()]
    out = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for record in records:
        cells = []
        for _, key in cols:
            path, _, form = key.partition("|")
            cells.append(fmt(lookup(record, path.strip()), form.strip()))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def render(text: str, root: Path = ROOT) -> str:
    """`text` with every marker's body replaced by its value."""
    def one(match: re.Match) -> str:
        try:
            body = value(match["spec"], root)
        except FigureError as e:
            raise FigureError(f"<!-- fig {match['spec']} -->: {e}") from None
        return f"<!-- fig {match['spec']} -->{body}<!-- /fig -->"

    return MARKER.sub(one, text)


def stale(path: Path, root: Path = ROOT) -> list[str]:
    """One line per marker of `path` whose body differs from its record's value."""
    text = path.read_text()
    lines = []
    for old, new in zip(MARKER.finditer(text), MARKER.finditer(render(text, root)), strict=True):
        if old["body"] != new["body"]:
            # The first line that differs: a table's rows share their start.
            said, gives = next((a, b) for a, b in zip_longest(
                old["body"].strip().splitlines(), new["body"].strip().splitlines(),
                fillvalue="") if a != b)
            line = text.count("\n", 0, old.start()) + 1
            lines.append(f"{path.relative_to(root)}:{line}: <!-- fig {old['spec']} --> says "
                         f"{said.strip()[:160]!r}, its record gives {gives.strip()[:160]!r}")
    return lines


# Tables: each a function of the repo root returning Markdown. A table that needs a record that
# is absent raises FigureError, naming it.

def _records(root: Path, **match: str) -> list[dict]:
    lines = (root / "benchmarks/results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if all(lookup(r, k) == v for k, v in match.items())]


def _metrics_table(root: Path) -> str:
    """data/metrics.json's rows: the delivered generator, the floor and the ceilings."""
    metrics = load("data/metrics.json", root)
    rows = [("**trained (the delivered generator)**", metrics),
            ("floor: real training images", metrics["floor"]),
            ("ceiling: blurred test images", metrics["ceiling_blur"]),
            ("ceiling: pixel-shuffled test images", metrics["ceiling_shuffle"])]
    out = ["| | FD | KID | precision | recall | classifier score | modes | mode KL "
           "| memorisation |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in rows:
        out.append(f"| {name} | {m['frechet_distance']:.1f} | {m['kid']:.1f} ± "
                   f"{m['kid_std']:.1f} | {m['precision']:.3f} | {m['recall']:.3f} | "
                   f"{m['classifier_score']:.2f} | {m['modes_covered']} | {m['mode_kl']:.3f} | "
                   f"{m['memorisation_ratio']:.2f} |")
    return "\n".join(out)


def _probe_table(root: Path) -> str:
    """data/probe.json: the linear probe on D's features, a random D's and raw pixels'."""
    probe = load("data/probe.json", root)["probe"]
    out = ["| labelled images | trained D | random D | raw pixels |", "|---|---|---|---|"]
    for size, row in sorted(probe.items(), key=lambda item: int(item[0])):
        out.append(f"| {int(size):,} | {row['discriminator']:.3f} | "
                   f"{row['random_discriminator']:.3f} | {row['pixels']:.3f} |")
    return "\n".join(out)


def _targets_table(root: Path) -> str:
    """The latest record of each `python -m benchmarks` kind that states a target."""
    latest: dict[str, dict] = {}
    for record in _records(root):
        if "target" in record and "met" in record:
            key = record["benchmark"]
            if record["benchmark"] in ("train_throughput", "train_vs_pytorch"):
                key += f" {record.get('precision')} {record.get('update', 'alternating')}"
            latest[key] = record
    out = ["| benchmark | target | met | measured on |", "|---|---|---|---|"]
    for key, r in sorted(latest.items()):
        out.append(f"| `{key}` | {r['target']} | {'yes' if r['met'] else '**no**'} | "
                   f"{r['date'][:10]}, {r['git_commit']} |")
    return "\n".join(out)


def _peer_table(root: Path) -> str:
    """The latest `bench train --peer pytorch` record per precision and update mode."""
    latest: dict[tuple, dict] = {}
    for r in _records(root, benchmark="train_vs_pytorch"):
        latest[(r["precision"], r["update"])] = r
    if not latest:
        raise FigureError("no train_vs_pytorch record in benchmarks/results.jsonl")
    out = ["| precision | our update | ours, images/s | PyTorch, images/s | ratio | target "
           "| ours, share of GEMM peak |", "|---|---|---|---|---|---|---|"]
    for (precision, update), r in sorted(latest.items()):
        ips = r["images_per_sec"]
        out.append(f"| {precision} | `{update}` | {ips['ours']:.1f} | {ips['pytorch']:.1f} | "
                   f"**{r['ours_over_pytorch']:.2f}x** | {r['target']}: "
                   f"{'met' if r['met'] else 'missed'} | {r['ours_share_of_peak']:.0%} |")
    return "\n".join(out)


def _kernels_table(root: Path, shown: int = 6) -> str:
    """The latest oneDNN profile of our step (`--components`): per precision, the kernels
    that take the most of a step, the other kernels, and the rest (Eigen, executor, Keras)."""
    profiled = [r for r in _records(root, benchmark="train_vs_pytorch") if "kernel_ms" in r]
    if not profiled:
        raise FigureError("no train_vs_pytorch record with kernel_ms in benchmarks/results.jsonl")
    record = profiled[-1]
    out = ["| precision | kernel (primitive, implementation, pass) | ms per step | share |",
           "|---|---|---|---|"]
    for precision, profile in record["kernel_ms"].items():
        step, kernels = profile["step_ms"], list(profile["onednn_ms"].items())
        rows = [*kernels[:shown], ("other oneDNN kernels", sum(v for _, v in kernels[shown:])),
                ("the rest: Eigen ops, executor, Keras", profile["rest_ms"])]
        out += [f"| {precision} | {name} | {ms:.1f} | {ms / step:.0%} |" for name, ms in rows]
        out.append(f"| {precision} | **the step** | **{step:.1f}** | 100% |")
    return "\n".join(out) + f"\n\n*{record['date'][:10]}, {record['git_commit']}.*"


def _results_table(root: Path) -> str:
    """The README's results: quality from the committed metrics files, times and speed from
    the latest records of the pipeline, the test suite and the PyTorch comparison."""
    metrics, probe = load("data/metrics.json", root), load("data/probe.json", root)
    kept = load("data/train/selection.json", root)
    pipeline = load("benchmarks/results.jsonl[benchmark=pipeline]", root)
    tests = load("benchmarks/results.jsonl[benchmark=test_suite,exit_status=0]", root)
    peer = load("benchmarks/results.jsonl[benchmark=train_vs_pytorch,precision=mixed_bfloat16,"
                "update=alternating]", root)
    noop = load("benchmarks/results.jsonl[benchmark=noop_repro]", root)
    largest = str(max(int(size) for size in probe["probe"]))
    rows = [
        ("Fréchet distance of the delivered generator, N = "
         f"{metrics['frechet_samples']:,} ([metrics](docs/metrics.md))",
         f"**{metrics['frechet_distance']:.1f}** (real images: "
         f"{metrics['floor']['frechet_distance']:.1f})"),
        ("precision / recall", f"{metrics['precision']:.3f} / {metrics['recall']:.3f}"),
        ("epoch kept ([keep-best](docs/glossary.md#keep-best))",
         f"{kept['epoch']} of {kept['last_epoch']}"),
        (f"linear probe on D's features, {int(largest):,} labels",
         f"{probe['probe'][largest]['discriminator']:.3f} (raw pixels: "
         f"{probe['probe'][largest]['pixels']:.3f})"),
        (f"`{pipeline['command']}`, default params", fmt(pipeline["seconds"], "dur")),
        ("a second `dvc repro` (nothing to do)", fmt(noop["seconds"], "dur")),
        (f"`{tests['command']}`",
         f"{fmt(tests['seconds'], 'dur')} ({tests['summary'].split(' in ')[0]})"),
        ("training step against PyTorch's DCGAN, bfloat16 "
         "([performance](docs/performance.md))", f"{peer['ours_over_pytorch']:.2f}x"),
    ]
    out = ["| | |", "|---|---|", *(f"| {what} | {figure} |" for what, figure in rows)]
    isa = pipeline.get("cpu_isa")
    auto = "mixed_bfloat16" if isa in ("amx_bf16", "avx512_bf16") else "float32"
    where = f"{pipeline['cpu']} ({isa.upper()})" if isa else pipeline["cpu"]
    out.append(f"\n*Measured on {where}, {pipeline['cores']} cores, no GPU; `precision: auto`, "
               f"which is {auto} there.*")
    return "\n".join(out)


def _choices_table(root: Path) -> str:
    """Every choice's registry (the names params validation accepts), one row per entry."""
    from dcgan.ingest.sources import SOURCES
    from dcgan.nets.architectures import ARCHITECTURES
    from dcgan.nets.augment import AUGMENTATIONS
    from dcgan.nets.losses import LOSSES
    from dcgan.nets.updates import UPDATES

    registries = [("fetch.dataset", SOURCES, "src/dcgan/ingest/sources.py"),
                  ("train.arch", ARCHITECTURES, "src/dcgan/nets/architectures.py"),
                  ("train.update", UPDATES, "src/dcgan/nets/updates.py"),
                  ("train.loss", LOSSES, "src/dcgan/nets/losses.py"),
                  ("train.augment", AUGMENTATIONS, "src/dcgan/nets/augment.py")]
    out = ["| key | value | what it is | registry |", "|---|---|---|---|"]
    for key, registry, where in registries:
        for name, entry in registry.items():
            out.append(f"| `{key}` | `{name}` | {entry.description} | `{where}` |")
    return "\n".join(out)


def _datasets_table(root: Path) -> str:
    """The dataset registry: each `fetch.dataset` name, what it is, where its files come from."""
    from dcgan.ingest.sources import SOURCES

    def where(source: object) -> str:
        if source.base_url:
            return f"{source.base_url}, sha256-verified, cached in `data/cache/`"
        return "bundled: offline" if source.decode else "`fetch.folder` (below)"

    out = ["| name | what it is | files from |", "|---|---|---|"]
    out += [f"| `{name}` | {s.description} | {where(s)} |" for name, s in SOURCES.items()]
    return "\n".join(out)


def _stage_code_table(root: Path) -> str:
    """Each dvc.yaml stage's params sections and the code of src/dcgan it depends on."""
    import yaml

    out = ["| stage | params sections | code in `src/dcgan` |", "|---|---|---|"]
    for name, stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        code = [d.removeprefix("src/dcgan/") for d in stage["deps"]
                if d.startswith("src/dcgan/") and d != "src/dcgan/__init__.py"]
        sections = ", ".join(f"`{p}`" for p in stage.get("params", [])) or "none"
        out.append(f"| {name} | {sections} | {', '.join(f'`{c}`' for c in code)} |")
    return "\n".join(out)


TABLES: dict[str, Callable[[Path], str]] = {
    "choices": _choices_table,
    "datasets": _datasets_table,
    "stage_code": _stage_code_table,
    "results": _results_table,
    "metrics": _metrics_table,
    "probe": _probe_table,
    "targets": _targets_table,
    "peer": _peer_table,
    "kernels": _kernels_table,
}


def main(argv: list[str] | None = None) -> int:
    """Render (or with --check, check) the docs; the exit status for the shell."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 naming every block that disagrees")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = [line for path in docs_files() for line in stale(path)]
            for line in problems:
                print(line, file=sys.stderr)
            return 1 if problems else 0
        for path in docs_files():
            text = path.read_text()
            new = render(text)
            if new != text:
                path.write_text(new)
                print(f"rendered {path.relative_to(ROOT)}")
    except FigureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
