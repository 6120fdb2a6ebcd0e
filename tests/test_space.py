"""The repository as a Hugging Face Space takes it: the README's front matter is a valid Space config for this
app, and every file a Space would refuse outside Git LFS (binary, or over 10 MB) is covered by an LFS rule in
`.gitattributes` (see docs/space.md)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPACE_MAX_PLAIN_BYTES = 10 * 1024 * 1024   # a Space takes larger files only through LFS


def front_matter(readme: str) -> dict[str, str]:
    """The README's YAML front matter as {key: value} (flat `key: value` lines, as a Space config has).
    Raises ValueError when there is none or a line is not `key: value`."""
    m = re.match(r"---\n(.*?)\n---\n", readme, re.S)
    if not m:
        raise ValueError("the README does not start with a --- front matter block ---")
    config = {}
    for line in m.group(1).splitlines():
        key, sep, value = line.partition(":")
        if not sep or not key.strip() or key != key.strip():
            raise ValueError(f"not a top-level 'key: value' line: {line!r}")
        config[key] = value.strip().strip('"').strip("'")
    return config


def pinned(requirement: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"{re.escape(requirement)}(\[[\w,]+\])?==(\S+)", line.strip())
        if m:
            return m.group(2)
    raise AssertionError(f"{requirement} is not pinned in requirements.txt")


def tracked_files(repo: Path) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    return [repo / p for p in out.decode().split("\0") if p]


def needs_lfs(path: Path) -> bool:
    """A Space refuses this file in a plain git blob: over 10 MB, or binary (a NUL byte, or not UTF-8)."""
    if path.stat().st_size > SPACE_MAX_PLAIN_BYTES:
        return True
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def outside_lfs(repo: Path) -> list[str]:
    """Tracked files a Space would refuse, because no `.gitattributes` rule sends them through LFS."""
    wanted = [p for p in tracked_files(repo) if p.is_file() and needs_lfs(p)]
    if not wanted:
        return []
    names = [str(p.relative_to(repo)) for p in wanted]
    out = subprocess.run(["git", "check-attr", "filter", "--", *names], cwd=repo, capture_output=True, text=True,
                         check=True).stdout
    return [line.split(": filter: ")[0] for line in out.splitlines() if not line.endswith(": filter: lfs")]


def in_a_git_checkout() -> bool:
    return subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True).returncode == 0


def test_the_readme_front_matter_is_a_space_config_for_this_app():
    config = front_matter((ROOT / "README.md").read_text())
    assert config["sdk"] == "gradio"
    assert config["sdk_version"] == pinned("gradio")
    assert (ROOT / config["app_file"]).is_file()
    assert re.fullmatch(r"3\.\d+", config["python_version"])
    assert config["title"]


def test_front_matter_parser_refuses_what_a_space_would():
    with pytest.raises(ValueError, match="front matter"):
        front_matter("# BitLM\n")
    with pytest.raises(ValueError, match="key: value"):
        front_matter("---\nsdk gradio\n---\n")


@pytest.mark.skipif(not in_a_git_checkout(), reason="needs the git checkout (tracked files, .gitattributes)")
def test_every_binary_or_large_tracked_file_goes_through_lfs():
    assert outside_lfs(ROOT) == []


@pytest.mark.skipif(not in_a_git_checkout(), reason="needs git")
def test_a_large_file_outside_lfs_is_found(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (tmp_path / "big.txt").write_text("a" * (SPACE_MAX_PLAIN_BYTES + 1))      # text, but over 10 MB
    (tmp_path / "weights.safetensors").write_bytes(bytes(range(256)) * 50_000)
    (tmp_path / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\0")
    (tmp_path / "notes.md").write_text("small text\n")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    assert sorted(outside_lfs(tmp_path)) == ["big.txt", "picture.png"]
