"""The README is a user's guide (issue 24): short, every path it names exists, and every
command in its fenced blocks either runs here, in seconds, or is marked `# long:`.

A fenced ```bash block holds commands, one per line (a trailing `\\` continues a line). A
comment line `# long: why` marks the command after it as one this test does not run (it
trains, installs, needs a cluster or a remote); such a command is still checked: every
`--flag` it passes must be in its program's `--help`, a Snakemake command must pass a dry
run (`-n`), the extras it installs must exist in pyproject.toml and the params it sets must
exist in the schema. Every other command runs, verbatim, in a copy of the working tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
SCHEMA = ROOT / "src" / "midigen" / "params.schema.yaml"
MAX_LINES = 250
QUICK_TIMEOUT_S = 120

# Folders the pipeline writes (ignored by git): a path under them names an output, not a file
# of the repository.
OUTPUT_ROOTS = (
    "data/",
    "models/",
    "samples/",
    "metrics/",
    "plots/",
    "reports/",
    "logs/",
    "continued/",
    "checkpoints/",
    "mutants/",
    "bench/out/",
)
# Folders and files of the repository that a path must start with (or be) to be checked.
REPO_ROOTS = (
    "src/",
    "tests/",
    "bench/",
    "workflow/",
    "experiments/",
    "docs/",
    ".test/",
    ".ci/",
    ".dvc/",
)
REPO_FILES = ("README.md", "params.yaml", "dvc.yaml", "pyproject.toml")
LONG = re.compile(r"(?:^|\s)#\s*long:")
COMMAND_LANGS = {"bash", "sh", "shell"}


# ---------------------------------------------------------------------------------- parsing


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(info string, line number of the opening fence, lines) of every ``` block."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence and current is None:
            current = (fence.group(1), number, [])
        elif fence:
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"the ``` block opened on line {current[1]} is never closed"
    return blocks


def fenced_commands(text: str) -> list[tuple[str, bool]]:
    """(command, marked long) for every command in the text's shell blocks."""
    commands = []
    for lang, start, lines in fenced_blocks(text):
        if lang not in COMMAND_LANGS:
            continue
        long, pending = False, ""
        for line in lines:
            if pending:
                line, pending = pending + " " + line.strip(), ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1].rstrip()
                continue
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                long = long or bool(LONG.search(stripped))
                continue
            commands.append((stripped, long or bool(LONG.search(stripped))))
            long = False
        assert not long, f"a `# long:` in the block of line {start} marks no command"
    return commands


def path_tokens(text: str) -> set[str]:
    """Everything in the text that names a repository path: tokens that start with one of
    its folders or are one of its top-level files, and `*.md` documents."""
    found = set()
    for token in re.split(r"[\s`()\[\]\"',;|=:]+", text):
        token = token.rstrip(".!?")
        if token.startswith(REPO_ROOTS + OUTPUT_ROOTS) or token in REPO_FILES:
            found.add(token)
        elif token.endswith(".md") and "/" not in token and not token.startswith("."):
            found.add(token)  # a document at the top level, e.g. README.md
    return found


def link_targets(text: str) -> set[str]:
    """Targets of markdown links and images, less web addresses and anchors."""
    targets = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        target = target.split("#")[0]
        if target and not re.match(r"^[a-z]+:", target):
            targets.add(target)
    return targets


def is_placeholder(path: str) -> bool:
    """An output the pipeline writes, or a path with a placeholder segment (S, V, <id>, ...)."""
    if path.startswith(OUTPUT_ROOTS):
        return True
    return any(
        re.fullmatch(r"[A-Z][A-Z0-9_]*", part) or re.search(r"[<>{}]", part)
        for part in path.split("/")
    )


def missing_paths(text: str, base: Path = ROOT) -> list[str]:
    """Repository paths the text names that do not exist (links resolved from `base`)."""
    missing = []
    for path in sorted(path_tokens(text)):
        if is_placeholder(path):
            continue
        if not (glob_exists(ROOT, path) if "*" in path else (ROOT / path).exists()):
            missing.append(path)
    for target in sorted(link_targets(text)):
        resolved = (base / target).resolve()
        inside = resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else None
        if inside is not None and is_placeholder(inside.as_posix()):
            continue
        if not resolved.exists():
            missing.append(f"link {target}")
    return missing


def glob_exists(root: Path, pattern: str) -> bool:
    return any(root.glob(pattern.rstrip("/")))


@cache
def schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def schema_entry(key: str) -> dict | None:
    """The schema of a dotted params key (`train.steps`, `encode.events.merges`), or None."""
    node = schema()
    for part in key.split("."):
        node = (node.get("properties") or {}).get(part)
        if node is None:
            return None
    return node


def params_keys(text: str) -> list[str]:
    """Dotted params keys the text names in backticks (`train.steps`, `encode.remi.merges`)."""
    sections = "|".join(schema()["properties"])
    return re.findall(rf"`((?:{sections})(?:\.[a-z_0-9]+)+)`", text)


def yaml_keys(data, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return []
    keys = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        if schema_entry(dotted) is not None and "properties" in schema_entry(dotted):
            keys += yaml_keys(value, dotted + ".")
    return keys


def pyproject_extras() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return set(tomllib.loads(PYPROJECT.read_text())["project"].get("optional-dependencies", {}))


# ------------------------------------------------------------------------- the repo copy


def interpreter_env() -> dict[str, str]:
    """The environment with the test interpreter's scripts (midigen, snakemake) first."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The working tree as git sees it (tracked and new files), where a user would type."""
    out = tmp_path_factory.mktemp("readme") / "repo"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        for name in listed.stdout.splitlines():
            if (ROOT / name).is_file():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, out / name)
    else:  # not a git checkout: everything but the outputs
        shutil.copytree(
            ROOT,
            out,
            ignore=shutil.ignore_patterns(
                ".git", *(r.rstrip("/") for r in OUTPUT_ROOTS), "__pycache__", ".snakemake"
            ),
        )
    return out


def run(command: str | list[str], cwd: Path) -> subprocess.CompletedProcess:
    args = ["bash", "-c", command] if isinstance(command, str) else command
    return subprocess.run(
        args,
        cwd=cwd,
        env=interpreter_env(),
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT_S,
    )


# --------------------------------------------------------------------------------- tests

TEXT = README.read_text()
COMMANDS = fenced_commands(TEXT)
QUICK = [command for command, long in COMMANDS if not long]
LONG_COMMANDS = [command for command, long in COMMANDS if long]


def test_the_readme_is_short():
    lines = len(TEXT.splitlines())
    assert lines <= MAX_LINES, (
        f"README.md has {lines} lines (at most {MAX_LINES}): measurements go to "
        "bench/RESULTS.md, an experiment's story to docs/<experiment>.md"
    )


def test_every_path_the_readme_names_exists():
    missing = missing_paths(TEXT)
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_every_path_pyproject_names_exists():
    missing = missing_paths(PYPROJECT.read_text())
    assert not missing, f"pyproject.toml names paths that do not exist: {missing}"


def test_every_link_in_the_docs_resolves():
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        broken = [t for t in sorted(link_targets(text)) if not (page.parent / t).exists()]
        assert broken == [], f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_two_commands_are_there_verbatim():
    assert "pip install torch==2.13.0 -e . && snakemake --cores all" in LONG_COMMANDS
    assert 'pip install torch==2.13.0 -e ".[test]" && python -m pytest' in LONG_COMMANDS


def test_every_block_says_what_it_holds():
    """An untagged block could hide a command from the checks below."""
    untagged = [start for lang, start, _ in fenced_blocks(TEXT) if not lang]
    assert untagged == [], f"``` blocks without a language on lines {untagged}"
    assert QUICK, "no quick command: the README's commands would go untested"


@pytest.mark.parametrize("command", QUICK)
def test_quick_command_runs(command, checkout):
    """Every fenced command not marked `# long:` runs, as typed, in seconds."""
    result = run(command, checkout)
    assert result.returncode == 0, (
        f"`{command}` failed (exit {result.returncode}); fix it, or mark it `# long: why` "
        f"if it cannot run in seconds:\n{(result.stdout + result.stderr)[-3000:]}"
    )


def parts(command: str) -> list[list[str]]:
    """The simple commands of a command line, split where the shell would chain them."""
    out, current = [], []
    for word in shlex.split(command, comments=True):
        if word in ("&&", "||", ";", "|"):
            out.append(current)
            current = []
        else:
            current.append(word)
    return [p for p in out + [current] if p]


def help_command(words: list[str]) -> list[str] | None:
    """The `--help` call that lists the flags `words` may pass (None: nothing to ask)."""
    program = words[0]
    leading = []
    for word in words[1:]:
        if word.startswith("-"):
            break
        leading.append(word)
    if program == "midigen":
        return ["midigen", *leading[:1], "--help"]
    if program in ("python", "python3") and words[1:3] == ["-m", "pytest"]:
        return [sys.executable, "-m", "pytest", "--help"]
    if program in ("python", "python3") and leading[:1] and leading[0].endswith(".py"):
        return [sys.executable, leading[0], "--help"]
    if program == "bash" and leading[:1]:
        return ["bash", leading[0], "--help"]
    if program == "snakemake":
        return ["snakemake", "--help"]
    if program == "dvc":
        return ["dvc", *leading[:2], "--help"]
    return None


@cache
def help_text(call: tuple[str, ...], cwd: Path) -> str:
    result = run(list(call), cwd)
    assert result.returncode == 0, f"{shlex.join(call)} failed:\n{result.stderr[-2000:]}"
    return result.stdout + result.stderr


@pytest.mark.parametrize("command", LONG_COMMANDS)
def test_long_command_is_well_formed(command, checkout):
    """A command too long to run here still names real flags, extras, params and workflows."""
    for words in parts(command):
        program = words[0]
        assert shutil.which(program, path=interpreter_env()["PATH"]), f"{program}: not found"
        if program in ("pip", "pip3"):
            extras = {
                e
                for spec in words
                for group in re.findall(r"\.\[([^\]]+)\]", spec)
                for e in group.split(",")
            }
            unknown = extras - pyproject_extras()
            assert not unknown, f"`{command}` installs extras pyproject.toml lacks: {unknown}"
            continue
        call = help_command(words)
        if call is None:
            continue
        text = help_text(tuple(call), checkout)
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"`{command}`: {shlex.join(call)} lists no {flag}"
            )
        if program == "dvc":
            for i, word in enumerate(words[:-1]):
                if word in ("-S", "--set-param"):
                    key = words[i + 1].split("=")[0]
                    assert schema_entry(key) is not None, f"`{command}`: no param {key}"
        if program == "snakemake":
            dry = [w for w in words if w not in ("-n", "--dry-run")] + ["-n"]
            result = run(dry, checkout)
            assert result.returncode == 0, (
                f"dry run of `{command}` failed:\n{(result.stdout + result.stderr)[-3000:]}"
            )


def test_the_params_it_names_exist_with_the_defaults_it_gives():
    unknown = sorted({key for key in params_keys(TEXT) if schema_entry(key) is None})
    assert unknown == [], f"params the schema lacks: {unknown}"
    for lang, start, lines in fenced_blocks(TEXT):
        if lang == "yaml":
            keys = yaml_keys(yaml.safe_load("\n".join(lines)))
            bad = [k for k in keys if schema_entry(k) is None]
            assert bad == [], f"yaml block of line {start}: params the schema lacks: {bad}"
    rows = re.findall(r"^\| `([a-z_.]+)` \| `([^`]*)` \|", TEXT, re.M)
    assert rows, "no params table"
    for key, default in rows:
        entry = schema_entry(key)
        assert entry is not None, f"params table: no param {key}"
        assert yaml.safe_load(default) == entry.get("default"), (
            f"params table: {key} defaults to {entry.get('default')!r}, not {default}"
        )
