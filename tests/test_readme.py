"""The README a newcomer reads: short, exactly two set-up commands, a Python snippet that runs, command lines
that answer `--help`, and links that lead somewhere."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "assets" / "MODEL_CARD.md"]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def section(text: str, heading: str) -> str:
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"the README has no '## {heading}' section"
    return m.group(1)


def test_the_readme_fits_a_first_five_minutes():
    assert len(README.encode("utf-8")) <= 10_000


def test_set_up_holds_exactly_the_two_commands():
    commands = blocks(section(README, "Set up"), "bash")
    assert len(commands) == 2
    launch, test = (c.strip() for c in commands)
    assert "\n" not in launch and "pip install -r requirements.txt" in launch and launch.endswith("python app.py")
    assert "\n" not in test and "requirements-dev.txt" in test and test.endswith("python -m pytest")
    assert README.index("<!-- test-command") < README.index(test)   # the one .ci/run reads


@pytest.mark.slow
def test_the_python_snippet_runs(tmp_path):
    snippet = blocks(README, "python")
    assert len(snippet) == 1 and "assert" in snippet[0]
    script = tmp_path / "snippet.py"
    script.write_text(snippet[0])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bits per byte" in run.stdout


def cli_modules() -> list[str]:
    """Every `python -m bitlm.cli.NAME` the README and docs show, and every console script's module."""
    shown = {m for path in DOCS for m in re.findall(r"-m (bitlm\.cli\.[a-z_]+)\b", path.read_text(encoding="utf-8"))}
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    installed = {target.split(":")[0] for target in scripts.values()}
    return sorted(shown | installed)


def test_every_command_line_is_shown_and_installed():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {p.stem for p in (ROOT / "bitlm" / "cli").glob("*.py") if p.stem != "__init__"}
    assert {name.removeprefix("bitlm-") for name in scripts} == modules
    assert all(target == f"bitlm.cli.{name.removeprefix('bitlm-')}:main" for name, target in scripts.items())
    assert {m.removeprefix("bitlm.cli.") for m in cli_modules()} == modules


@pytest.mark.slow
def test_every_command_shown_answers_help():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for m in cli_modules()}
    for module, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{module} --help: {err[-1000:]}"
        assert out.startswith("usage: python -m " + module), out[:200]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(path):
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_the_api_list_names_every_endpoint():
    """docs/app.md's API paragraph lists every `api_name` app.py wires (it once lacked the file endpoints)."""
    import re
    root = Path(__file__).resolve().parents[1]
    wired = set(re.findall(r'api_name="([a-z_]+)"', (root / "app.py").read_text(encoding="utf-8")))
    api = (root / "docs" / "app.md").read_text(encoding="utf-8").split("- **API.**")[1].split("- **")[0]
    listed = set(re.findall(r"`([a-z_]+)`", api))
    assert wired and wired <= listed, sorted(wired - listed)
