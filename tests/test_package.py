"""The package's public names and its command-line entry points."""
import subprocess
import sys

import pytest

import bitlm


@pytest.mark.parametrize("name", bitlm.__all__)
def test_public_names_resolve(name):
    assert getattr(bitlm, name) is not None


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bitlm.nope


def test_codec_demo_runs_cleanly():
    run = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "bitlm.cli.codec", "--demo"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "pydoc text (parity frames)" in run.stdout and "round trip" in run.stdout
