"""Every command the README and docs/ show works as written: each `python -m gptlab.X ...` line
(in a code block or in the text) composes its config (`--cfg job`, for the Hydra entry points:
train, sample, eval, bench, prepare) or parses its arguments (compare, convert), with its
placeholders (outputs/DATE/TIME and the like) filled with a run and a sweep made here. The ones
shown as refused are refused."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from gptlab import compare, convert
from gptlab.runs import sweep_directory
from tests.conftest import REPO_ROOT, TINY, run_here, sweep_here

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
HYDRA_ENTRY_POINTS = {"train", "sample", "eval", "bench", "prepare"}
# commands the docs show to be refused (the bad-input table), with words of their error
REFUSED = {"python -m gptlab.train model.n_layer=two": "model.n_layer"}


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for each distinct command: code-block lines (a trailing backslash goes on
    to the next line; a `$ ` prompt and a `# comment` are left out) and inline code."""
    found: dict[str, str] = {}
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("python -m gptlab."):
                    found.setdefault(shlex.join(shlex.split(line, comments=True)), page.name)
        for inline in re.findall(r"`(python -m gptlab\.[^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            found.setdefault(shlex.join(shlex.split(inline)), page.name)
    return sorted((page, command) for command, page in found.items())


def is_synopsis(command: str) -> bool:
    """A command's form rather than a command: `[optional]` parts, `...` or `<what>` to fill in."""
    return bool(re.search(r" '?\[|\.\.\.|<(?!the run>)", command))


COMMANDS = [(page, c) for page, c in shown_commands() if not is_synopsis(c)]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, shakespeare: Path) -> dict[str, str]:
    """What the placeholders stand for: a run, and a sweep of two jobs, trained here."""
    where = tmp_path_factory.mktemp("docs")
    sweep_dir = where / "sweep"
    tiny = [*TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "logger=none"]
    result = sweep_here(sweep_dir, *tiny, "seed=1,2")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = where / "run"
    shutil.copytree(sweep_dir / "0", run_dir)
    return {
        "outputs/multirun/DATE/TIME": str(sweep_dir),
        "outputs/DATE/TIME": str(run_dir),
        "<the run>": str(run_dir),
        "/tmp/sl/dd": str(run_dir),
        "FOLDER": str(sweep_dir),
        "DIR": str(sweep_dir),
        "LOSS": "1.8",
        "seed=N": "seed=1",
    }


def filled(command: str, made: dict[str, str]) -> list[str]:
    for placeholder, value in made.items():
        command = command.replace(placeholder, value)
    return shlex.split(command)


def one_job(arguments: list[str]) -> list[str]:
    """A sweep's command line as the config of its first job: `resume=DIR` becomes the command
    line the sweep was launched with, -m goes, and each swept value gives its first: of a list,
    or of an Optuna search's range, interval or choice."""
    arguments = sweep_directory.relaunch_arguments(arguments)
    job = []
    for argument in arguments:
        if argument in ("-m", "--multirun"):
            continue
        key, _, value = argument.partition("=")
        searched = re.search(r"(?:interval|range|choice)\(([^,)]+)", value)
        if searched:
            argument = f"{key}={searched.group(1).strip()}"
        elif "," in value and not value.startswith(("[", "{", "'", '"')):
            argument = f"{key}={value.split(',')[0]}"
        job.append(argument)
    return job


def test_the_docs_show_commands() -> None:
    pages = {page for page, _ in COMMANDS}
    assert len(COMMANDS) > 50 and {"README.md", "training.md", "sweeps.md", "sampling.md"} <= pages


@pytest.mark.slow
@pytest.mark.parametrize(("page", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_a_command_shown_in_the_docs_works_as_written(
    page: str, command: str, made: dict[str, str], tmp_path: Path
) -> None:
    python, dash_m, module, *arguments = filled(command, made)
    entry = module.removeprefix("gptlab.")
    if entry in HYDRA_ENTRY_POINTS:
        # from a folder of its own: what --cfg job may create (a run directory's lock) stays there
        result = run_here(entry, *one_job(arguments), "--cfg", "job", cwd=tmp_path)
        if command in REFUSED:
            assert result.returncode == 1 and REFUSED[command] in result.stderr
            return
        assert result.returncode == 0, f"{page}: {command}\n{result.stderr[-2000:]}"
        assert result.stdout.strip()  # the composed config, printed
    else:
        parse = {"compare": compare.arguments, "convert": convert.arguments}[entry]
        parse(arguments)  # argparse exits on arguments it does not take
