"""Where the shipped files live: the model (`config.json`, `model.safetensors`, `gate.json`) and the Shakespeare
archive. In a clone they are the repository's `assets/` folder; `pip install .` copies that folder into the
wheel as `bitlm/assets/`, so the command lines find the shipped model from any working directory.
"""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def assets_dir() -> Path:
    """The folder of the shipped files: the installed copy if there is one, else the clone's `assets/`
    (returned even when missing, so an error can name where it looked)."""
    installed = _PACKAGE / "assets"
    return installed if installed.is_dir() else _PACKAGE.parent / "assets"
