"""The command line of the BitLM compressor (`python -m bitlm.cli.compress`): compress or decompress a
file, or stdin/stdout with `-`, with the shipped model or `--model DIR`.

    python -m bitlm.cli.compress compress notes.txt                  # -> notes.txt.blm
    python -m bitlm.cli.compress decompress notes.txt.blm -o copy.txt
    cat data.bin | python -m bitlm.cli.compress compress - > data.blm

Output goes to a temporary file beside the target, renamed into place only once complete, so a failure
leaves no partial file; an existing output is kept unless `--force`. A tqdm bar on stderr follows the
neural coder for inputs of 64 KiB and more. Every failure is one line on stderr and exit status 1
(2 for bad usage). The model is loaded only when needed: compressing, or decompressing a neural file.
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


class CliError(Exception):
    """A failure reported as one line and exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, what in (("compress", "compress a file (neural, lzma, bz2, zlib or stored: the smallest)"),
                       ("decompress", "decompress a file written by compress")):
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("input", help="input file, or - for stdin")
        s.add_argument("-o", "--output", help=f"output file, or - for stdout (default: the input name "
                                              f"{'+' if name == 'compress' else 'without'} {SUFFIX}; stdout for stdin)")
        s.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder (config.json + model.safetensors; "
                                                                   "default: the shipped model in assets/)")
        s.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the output does not depend on it)")
        s.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N "
                                                       "(the output does not depend on it)")
        s.add_argument("--force", action="store_true", help="overwrite an existing output file")
        if name == "compress":
            s.add_argument("--classic", action="store_true", help="classic methods only (no model needed)")
        else:
            s.add_argument("--max-bytes", type=int, default=None,
                           help="refuse files that say they hold more bytes than this (default: 64 MiB)")
    return p


def _load_model(path: str):
    from bitlm.model.transformer import BitTransformerLM
    try:
        return BitTransformerLM.from_pretrained(path).eval()
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the model from {path}: {e}") from None


def _output_path(args: argparse.Namespace) -> str:
    if args.output:
        return args.output
    if args.input == "-":
        return "-"
    if args.command == "compress":
        return args.input + SUFFIX
    if not args.input.endswith(SUFFIX):
        raise CliError(f"{args.input} does not end in {SUFFIX}; name the output with -o")
    return args.input[:-len(SUFFIX)]


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


def run(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (raises SystemExit(2) for bad usage)."""
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise CliError(f"--threads must be ≥ 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise CliError(f"--device {args.device!r} is not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise CliError(f"--device {args.device}: {'no CUDA device here' if device.type == 'cuda' else 'use cpu or cuda'}")
    out = _output_path(args)
    if out != "-" and Path(out).exists() and not args.force:      # before any work
        raise CliError(f"{out} exists; pass --force to overwrite it")
    try:
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as e:
        raise CliError(f"cannot read {args.input}: {e.strerror or e}") from None
    if args.command == "compress":
        model = None if args.classic else _load_model(args.model)
        update, close = _progress(len(data), "compressing")
        try:
            result = nc.compress_file(data, model, methods=nc.METHODS[:4] if args.classic else nc.METHODS,
                                      on_progress=update, device=args.device)
        finally:
            close()
        _write(out, result.blob, args.force)
        print(f"{len(data):,} -> {len(result.blob):,} bytes ({result.method}"
              f"{f', {result.bits_per_byte:.3f} bits/byte' if data else ''})", file=sys.stderr)
        return 0
    header = nc.read_header(data)
    model = _load_model(args.model) if header.method == nc.NEURAL else None
    update, close = _progress(header.length if header.method == nc.NEURAL else 0, "decompressing")
    try:
        original = nc.decompress_file(data, model, max_bytes=args.max_bytes or nc.DEFAULT_MAX_BYTES,
                                      on_progress=update, device=args.device)
    except CodecError as e:
        if header.method == nc.NEURAL and "loaded model" in str(e):
            raise CliError(f"{e} (loaded from {args.model})") from None
        raise
    finally:
        close()
    _write(out, original, args.force)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the command, turning every failure into one line on stderr and status 1."""
    threads = torch.get_num_threads()
    try:
        return run(argv)
    except (CliError, CodecError, ExactnessError, OSError) as e:
        msg = " ".join(str(e).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)         # when called in-process, leave the caller's setting alone


if __name__ == "__main__":
    sys.exit(main())
