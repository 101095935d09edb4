"""The front door stays runnable: README.md and docs/*.md are checked against the code without running
anything long. Every command line they show parses with the real parser, a journey reads only checkpoints
an earlier line of it wrote, every benchmark they name exists, every Python block compiles and its imports
resolve, and every relative link (images included) points to a file of the repository."""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from spiketwin.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Documents whose command blocks are journeys run top to bottom: a --checkpoint must come from an earlier --out.
JOURNEYS = [ROOT / "README.md", ROOT / "docs" / "cli.md"]


def blocks(path: Path, languages: tuple[str, ...]) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", path.read_text(), re.S) if lang in languages]


def command_lines(path: Path) -> list[list[str]]:
    """The shell lines of ``path`` (continuations joined, comments dropped) as argument lists."""
    lines = []
    for body in blocks(path, ("sh", "bash", "")):  # unlabelled blocks also hold program output: keep commands
        for line in body.replace("\\\n", " ").splitlines():
            words = line.split()
            if (words[:1] == ["spiketwin"] and (len(words) == 1 or words[1] in COMMANDS or words[1][0] == "-")
                    or words[:1] == ["torchrun"] or words[:2] == ["python", "-m"]):
                lines.append(shlex.split(line, comments=True))
    return lines


def spiketwin_args(words: list[str]) -> list[str] | None:
    """The arguments of a ``spiketwin`` call, also as ``python -m spiketwin.train`` or under ``torchrun``."""
    if words[0] == "spiketwin":
        return words[1:]
    if "spiketwin.train" in words and "-m" in words:
        return ["train", *words[words.index("spiketwin.train") + 1:]]
    return None


def _cases(paths):
    return [pytest.param(p, id=str(p.relative_to(ROOT))) for p in paths]


@pytest.mark.parametrize("path", _cases(DOCS))
def test_every_command_line_parses(path):
    parser = build_parser()
    for words in command_lines(path):
        args = spiketwin_args(words)
        if args is None or "..." in args:  # "..." stands for the flags of the line before
            continue
        parsed, extra = parser.parse_known_args(args)  # a bad flag raises cli.UsageError
        assert not extra, f"{path.name}: {' '.join(words)}: unknown arguments {extra}"
        assert parsed.command, f"{path.name}: {' '.join(words)}: no subcommand"


@pytest.mark.parametrize("path", _cases(JOURNEYS))
def test_journeys_read_only_checkpoints_written_before(path):
    parser = build_parser()
    written: set[str] = set()
    for words in command_lines(path):
        args = spiketwin_args(words)
        if args is None or "..." in args:
            continue
        parsed, _ = parser.parse_known_args(args)
        checkpoint = getattr(parsed, "checkpoint", None)
        assert checkpoint is None or checkpoint in written, \
            f"{path.name}: {' '.join(words)}: reads {checkpoint}, which no earlier line writes with --out"
        if getattr(parsed, "out", None):
            written.add(parsed.out)


@pytest.mark.parametrize("path", _cases(DOCS))
def test_named_benchmarks_exist(path):
    names = re.findall(r"python -m bench\.(\w+)", path.read_text())
    names += [args[1] for words in command_lines(path) if (args := spiketwin_args(words))
              and args[0] == "bench" and len(args) > 1 and not args[1].startswith("-")]
    for name in names:
        assert (ROOT / "bench" / f"{name}.py").is_file(), f"{path.name}: benchmark bench/{name}.py does not exist"


@pytest.mark.parametrize("path", _cases(DOCS))
def test_python_blocks_compile_and_their_imports_resolve(path):
    for body in blocks(path, ("python",)):
        tree = ast.parse(body, filename=str(path))  # a syntax error fails here
        imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        if imports:
            code = compile(ast.Module(body=imports, type_ignores=[]), str(path), "exec")
            exec(code, {})  # a renamed function or module fails here


@pytest.mark.parametrize("path", _cases(DOCS))
def test_relative_links_point_to_files(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = path.parent / target.split("#")[0]
        assert file.exists(), f"{path.name}: link to {target}, which is not in the repository " \
                              "(an image ignored by .gitignore?)"


@pytest.mark.parametrize("path", _cases(DOCS))
def test_python_blocks_use_no_undefined_name(path, tmp_path):
    """A document's Python blocks, read in order as one session, define every name they use (ruff F821)."""
    pytest.importorskip("ruff", reason="the undefined-name check runs ruff")
    code = "\n".join(blocks(path, ("python",)))
    if not code:
        return
    script = tmp_path / "doc.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--no-cache", "--select", "F821",
                             "--output-format", "concise", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, f"{path.name}: {result.stdout.replace(str(script), 'block')}"
