"""The README and docs/ are checked like code: every figure agrees with its record, no path of
one machine, no dead link or image, and every `dcgan` command, flag and params key they name
exists. Each check is also run once against a planted mistake, so it is known to fail."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts/render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_docs = _render_docs()
DOCS = render_docs.docs_files(ROOT)
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/work/|/tmp/|/home/|/root/|/Users/|[A-Z]:\\\\)"
                          r"|sqlite:////")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
FENCE = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"`([^`\n]+)`")


def _text(path: Path) -> str:
    return path.read_text()


def _snippets(text: str) -> list[str]:
    """The code a page shows: fenced blocks' lines and inline code spans."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()[1:-1]]
    return lines + CODE.findall(FENCE.sub("", text))


# 1. Figures: every rendered block equals what its record gives.

def test_the_docs_exist_and_the_readme_is_a_landing_page():
    assert len(_text(ROOT / "README.md").splitlines()) <= 200
    assert len(DOCS) > 10


def test_every_figure_agrees_with_its_record():
    problems = [line for path in DOCS for line in render_docs.stale(path, ROOT)]
    assert problems == []


def test_every_measured_block_has_a_marker():
    """The README's results table comes from records, not prose."""
    readme = _text(ROOT / "README.md")
    assert "<!-- fig " in readme and "table:results" in readme


def test_a_stale_figure_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "data").mkdir()
    (tmp_path / "data/metrics.json").write_text('{"frechet_distance": 18.7076}')
    page.write_text("FD <!-- fig data/metrics.json frechet_distance|.1f -->18.7<!-- /fig -->\n")
    assert render_docs.stale(page, tmp_path) == []
    page.write_text("FD <!-- fig data/metrics.json frechet_distance|.1f -->21.6<!-- /fig -->\n")
    [problem] = render_docs.stale(page, tmp_path)
    assert "says '21.6', its record gives '18.7'" in problem
    with pytest.raises(render_docs.FigureError, match="no such key"):
        render_docs.render("<!-- fig data/metrics.json fid -->1<!-- /fig -->", tmp_path)


def test_rows_render_each_matching_record(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"b": "x", "s": 75.2, "n": 12000}\n'
                                      '{"b": "y", "s": 1}\n{"b": "x", "s": 3.21, "n": 5}\n')
    table = render_docs.rows("r.jsonl[b=x] time=s|dur; images=n|int", tmp_path)
    assert table.splitlines() == ["| time | images |", "|---|---|", "| 1 min 15 s | 12,000 |",
                                  "| 3.2 s | 5 |"]


# 2. No path of one machine.

def test_no_machine_paths():
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in DOCS
             for i, line in enumerate(_text(p).splitlines(), 1) if MACHINE_PATH.search(line)]
    assert found == []


@pytest.mark.parametrize("line", ["see /work/main/mlflow.db", "`sqlite:////srv/x.db`",
                                  "(/home/me/data)", "cd /tmp/fresh"])
def test_a_machine_path_is_caught(line):
    assert MACHINE_PATH.search(line)


@pytest.mark.parametrize("line", ["sqlite:///mlflow.db", "data/train/quality.csv",
                                  "models:/dcgan-generator/1", "http://127.0.0.1:5000/"])
def test_a_relative_path_is_not_a_machine_path(line):
    assert not MACHINE_PATH.search(line)


# 3. Links and images.

def _dead_links(path: Path) -> list[str]:
    dead = []
    for match in LINK.finditer(FENCE.sub("", _text(path))):
        target = (match[1] or match[2]).split("#", 1)[0]
        if not target or re.match(r"[a-z]+:", target):  # an anchor, or http:, mailto:
            continue
        if not (path.parent / target).exists():
            dead.append(f"{path.name}: {target}")
    return dead


def test_every_relative_link_and_image_exists():
    assert [dead for p in DOCS for dead in _dead_links(p)] == []


def test_a_dead_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("")
    page.write_text("[ok](there.md#a) [web](https://x.org) ![gone](pics/gone.png)")
    assert _dead_links(page) == ["page.md: pics/gone.png"]


# 4. Commands, flags and params keys.

def _benchmarks_parser() -> argparse.ArgumentParser:
    from benchmarks.cli import build_parser

    return build_parser()


def _dcgan_parser() -> argparse.ArgumentParser:
    from dcgan.tools.cli import build_parser

    return build_parser()


# The programs the docs run, and their parsers.
PROGRAMS = {"dcgan": _dcgan_parser, "python -m benchmarks": _benchmarks_parser}


def _commands(program: str = "dcgan") -> dict[str, set[str]]:
    """Every command path of `program` ('sample', 'train') and the flags it takes."""
    found: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        found[path] = {s for a in parser._actions for s in a.option_strings}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())

    walk(PROGRAMS[program](), "")
    return found


def _unknown_commands(text: str, commands: dict[str, set[str]],
                      program: str = "dcgan") -> list[str]:
    unknown = []
    name = re.escape(program).replace(r"\ ", r"\s+")
    for snippet in _snippets(text):
        for call in re.findall(rf"(?:^|[;&|(]\s*|\s){name}((?:\s+[^\s|;&)#]+)*)", snippet):
            words = call.split()
            if not words:  # the bare name: `dcgan`, or a directory (`cd dcgan`)
                continue
            path = ""
            while words and f"{path} {words[0]}".strip() in commands:
                path = f"{path} {words.pop(0)}".strip()
            if not path and not words[0].startswith("-"):  # a flag: the program's own
                unknown.append(f"{program} {' '.join(words[:1])}: no such command")
                continue
            for word in words:
                flag = word.split("=", 1)[0]
                if re.fullmatch(r"--?[a-zA-Z][\w-]*", flag) and flag not in commands[path]:
                    unknown.append(f"{program} {path} {flag}: no such flag")
    return unknown


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_command_and_flag_exists(program: str):
    commands = _commands(program)
    assert [u for p in DOCS for u in _unknown_commands(_text(p), commands, program)] == []


def test_an_unknown_command_or_flag_is_caught():
    commands = _commands()
    text = ("```bash\ndcgan sample models/generator.keras --n 4 --colour red\n"
            "dcgan bench train --steps 3\n```\nand `dcgan frobnicate`")
    assert _unknown_commands(text, commands) == ["dcgan sample --colour: no such flag",
                                                 "dcgan bench: no such command",
                                                 "dcgan frobnicate: no such command"]
    bench = _commands("python -m benchmarks")
    text = "```bash\npython -m benchmarks train --steps 3 --colour red\n```"
    assert _unknown_commands(text, bench, "python -m benchmarks") == [
        "python -m benchmarks train --colour: no such flag"]


def _params_keys() -> dict[str, set[str]]:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {section: set(keys) for section, keys in raw.items()}


def _unknown_keys(text: str, params: dict[str, set[str]]) -> list[str]:
    sections = "|".join(params)
    pattern = re.compile(rf"(?<![\w/.-])({sections})\.([a-z_][a-z0-9_]*)(?![\w/-]|\.[a-z])")
    files = {"py", "json", "csv", "keras", "yaml", "sh", "md", "txt", "gif", "png", "npy"}
    # An error message quotes the bad key it rejects: those lines are examples of mistakes.
    text = "\n".join(line for line in text.splitlines() if "error:" not in line)
    return sorted({f"{s}.{k}" for code in _snippets(text) + [FENCE.sub("", text)]
                   for s, k in pattern.findall(code) if k not in files and k not in params[s]})


def test_every_params_key_named_exists():
    params = _params_keys()
    assert [f"{p.name}: {k}" for p in DOCS for k in _unknown_keys(_text(p), params)] == []


def test_an_unknown_params_key_is_caught():
    text = "Set `train.lr` and `train.lrr`; stages/train.py reads train.epochs, not evaluate.n."
    assert _unknown_keys(text, _params_keys()) == ["evaluate.n", "train.lrr"]
