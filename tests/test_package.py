"""The package's public names, its command-line entry points, and `pip install .` giving both outside the clone."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bitlm

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", bitlm.__all__)
def test_public_names_resolve(name):
    assert getattr(bitlm, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bitlm.nope


def test_the_spec_names_live_in_bitlm_bits():
    from bitlm.bits import bits_to_text, text_to_bits
    assert bits_to_text(text_to_bits("ok")) == "ok"


def test_codec_demo_runs_cleanly():
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "bitlm.cli.codec", "--demo"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "pydoc text (parity frames)" in run.stdout and "round trip" in run.stdout


@pytest.mark.slow
def test_pip_install_gives_the_package_its_model_and_its_commands_anywhere(tmp_path):
    # --no-deps: the dependencies are this venv's (the same pins); --no-build-isolation: no download.
    # Copied first so that the build's own files (build/, *.egg-info) never land in the clone.
    source, target, elsewhere = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "test-output", "__pycache__", ".pytest_cache", ".hypothesis",
                                  "*.egg-info", "build")
    shutil.copytree(ROOT, source, ignore=skip)
    elsewhere.mkdir()
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "bitlm" / "assets" / "model.safetensors").stat().st_size > 1_000_000
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    check = subprocess.run([sys.executable, "-c", "import bitlm, bitlm.paths; print(bitlm.BitTransformerLM, "
                            "bitlm.paths.assets_dir())"], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr
    assert "bitlm.model.transformer.BitTransformerLM" in check.stdout and str(target) in check.stdout
    for script in ("bitlm-compress", "bitlm-train", "bitlm-sample", "bitlm-evaluate", "bitlm-gate", "bitlm-codec"):
        run = subprocess.run([str(target / "bin" / script), "--help"], cwd=elsewhere, env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.startswith("usage:"), (script, run.stderr[-1000:])
    (elsewhere / "note.txt").write_text("To be, or not to be, that is the question. " * 20)
    for argv in (["compress", "note.txt"], ["decompress", "note.txt.blm", "-o", "copy.txt"]):
        run = subprocess.run([str(target / "bin" / "bitlm-compress"), *argv], cwd=elsewhere, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    assert (elsewhere / "copy.txt").read_bytes() == (elsewhere / "note.txt").read_bytes()
