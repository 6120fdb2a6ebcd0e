"""The command line of the BitLM compressor (`python -m bitlm.cli.compress`, installed as `bitlm-compress`),
with gzip's conventions:

    python -m bitlm.cli.compress notes.txt            # -> notes.txt.blm, notes.txt removed (-k keeps it)
    python -m bitlm.cli.compress -d notes.txt.blm     # -> notes.txt
    python -m bitlm.cli.compress -c data.bin > data.blm
    cat data.bin | python -m bitlm.cli.compress | python -m bitlm.cli.compress -d > copy.bin

`-d` decompress, `-c` write to stdout (keeps the input), `-k` keep the input, `-f` overwrite an existing
output, `-q` quiet, `-` or no file for stdin/stdout; `--method` chooses a method (default auto: the
smallest of all, the model's only when the model loads; `nomodel`: cm and the classics). The older form
`compress FILE` / `decompress FILE` (which keeps its input) still works. Output goes to a temporary
file beside the target, renamed into place only once complete, so a failure leaves no partial file and
the input is removed only after. A tqdm bar on stderr follows coding of inputs of 64 KiB and more.
Every failure is one line on stderr and exit status 1 (2 for bad usage); with several files, each
failure is reported and the rest are still done. The model is loaded only when needed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bitlm.bits.codec import CodecError
from bitlm.compress import container as nc
from bitlm.compress.exact import ExactnessError
from bitlm.paths import assets_dir

PROG = "python -m bitlm.cli.compress"   # also installed as `bitlm-compress`
SUFFIX = ".blm"
DEFAULT_MODEL = assets_dir()
PROGRESS_FROM = 64 << 10          # bytes: smaller inputs get no progress bar
NO_MODEL = tuple(m for m in nc.METHODS if m not in ("neural", "neural+cm"))
METHOD_CHOICES = ("auto", "nomodel") + nc.METHODS


class CliError(Exception):
    """A failure reported as one line and exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("files", nargs="*", metavar="FILE", help="files to (de)compress; - or none: stdin to stdout")
    p.add_argument("-d", "--decompress", action="store_true", help="decompress")
    p.add_argument("-c", "--stdout", action="store_true", help="write to stdout, keep the input files")
    p.add_argument("-k", "--keep", action="store_true", help="keep the input files")
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary lines, no progress bar")
    p.add_argument("-o", "--output", help="output file, or - for stdout (one input only)")
    p.add_argument("--method", default="auto", choices=METHOD_CHOICES,
                   help="auto (default): the smallest of all methods; nomodel: cm and the classics; or one method")
    p.add_argument("--classic", action="store_true", help=argparse.SUPPRESS)      # the older spelling of nomodel
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (config.json + model.safetensors; "
                                                               "default: the shipped model)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the output does not depend on it)")
    p.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N "
                                                   "(the output does not depend on it)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="decompressing: refuse files that say they hold more bytes than this (default: 64 MiB)")
    return p


def _parse(argv: list[str]) -> argparse.Namespace:
    """gzip-style arguments; the older `compress|decompress FILE` form keeps its input."""
    legacy = argv[:1] in (["compress"], ["decompress"])
    args = _parser().parse_args((["-d"] if argv[:1] == ["decompress"] else []) + argv[1:] if legacy else argv)
    args.keep = args.keep or legacy or args.stdout
    if args.classic:
        args.method = "nomodel"
    if not args.files:
        args.files = ["-"]
    if args.output and len(args.files) > 1:
        raise CliError("-o names one output; give one input file")
    return args


def _load_model(path: str):
    from bitlm.model.transformer import BitTransformerLM
    try:
        return BitTransformerLM.from_pretrained(path).eval()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the model from {path}: {e}") from None


def _output_path(args: argparse.Namespace, name: str) -> str:
    if args.output:
        return args.output
    if name == "-" or args.stdout:
        return "-"
    if not args.decompress:
        if name.endswith(SUFFIX):
            raise CliError(f"{name} already ends in {SUFFIX}; rename it, or name the output with -o")
        return name + SUFFIX
    if not name.endswith(SUFFIX):
        raise CliError(f"{name} does not end in {SUFFIX}; name the output with -o, or use -c")
    return name[:-len(SUFFIX)]


def _progress(total: int, desc: str) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    if total < PROGRESS_FROM:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, leave=False)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)
    return update, bar.close


def _write(out: str, data: bytes, force: bool) -> None:
    """Write to a temp file beside out, then rename it into place (stdout for -)."""
    if out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    target = Path(out)
    if target.exists() and not force:
        raise CliError(f"{out} exists; pass --force to overwrite it")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give what a plain new file gets
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _methods(args: argparse.Namespace) -> tuple[str, ...]:
    return {"auto": nc.METHODS, "nomodel": NO_MODEL}.get(args.method, (args.method,))


def _one(args: argparse.Namespace, name: str, models: dict) -> None:
    """(De)compress one input as args say; raises CliError / CodecError / OSError with the reason."""
    out = _output_path(args, name)
    if out != "-" and Path(out).exists() and not args.force:      # before any work
        raise CliError(f"{out} exists; pass -f to overwrite it")
    if out == "-" and not args.decompress and sys.stdout.isatty() and not args.force:
        raise CliError("compressed data not written to a terminal; redirect it, or pass -f")
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror or e}") from None

    def model():
        if "m" not in models:
            models["m"] = _load_model(args.model)
        return models["m"]

    if not args.decompress:
        methods = _methods(args)
        needs_model = any(m in methods for m in ("neural", "neural+cm"))
        update, close = _progress(0 if args.quiet else len(data), "compressing")
        try:
            result = nc.compress_file(data, model() if needs_model else None, methods=methods,
                                      on_progress=update, device=args.device)
        finally:
            close()
        _write(out, result.blob, args.force)
        if not args.quiet:
            print(f"{name}: {len(data):,} -> {len(result.blob):,} bytes ({result.method}"
                  f"{f', {result.bits_per_byte:.3f} bits/byte' if data else ''})", file=sys.stderr)
    else:
        header = nc.read_header(data)
        with_model = header.method in (nc.NEURAL, nc.NEURAL_CM)
        update, close = _progress(0 if args.quiet or header.method in (nc.STORED, nc.ZLIB, nc.BZ2, nc.LZMA)
                                  else header.length, "decompressing")
        try:
            original = nc.decompress_file(data, model() if with_model else None,
                                          max_bytes=args.max_bytes or nc.DEFAULT_MAX_BYTES,
                                          on_progress=update, device=args.device)
        except CodecError as e:
            if with_model and "loaded model" in str(e):
                raise CliError(f"{e} (loaded from {args.model})") from None
            raise
        finally:
            close()
        _write(out, original, args.force)
    if name != "-" and not args.keep:
        Path(name).unlink()


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (raises SystemExit(2) for bad usage)."""
    args = _parse(sys.argv[1:] if argv is None else list(argv))
    if args.threads < 1:
        raise CliError(f"--threads must be ≥ 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f"--device {args.device!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise CliError(f"--device {args.device}: {'no CUDA device here' if device.type == 'cuda' else 'use cpu or cuda'}")
    status, models = 0, {}
    for name in args.files:
        try:
            _one(args, name, models)
        except (CliError, CodecError, ExactnessError, OSError) as e:
            if len(args.files) == 1:
                raise
            _error(f"{name}: {e}")
            status = 1
    return status


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command, turning every failure into one line on stderr and status 1."""
    threads = torch.get_num_threads()
    try:
        return run(argv)
    except (CliError, CodecError, ExactnessError, OSError) as e:
        _error(str(e))
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)         # when called in-process, leave the caller's setting alone


if __name__ == "__main__":
    sys.exit(main())
