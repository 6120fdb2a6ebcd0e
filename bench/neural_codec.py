"""Neural codec benchmark: on the first --bytes bytes of a held-out split (default: Shakespeare's
validation split), the bits per byte of the neural codec (whole stream, header included), of the
model's own cross-entropy along the codec's context (the ideal an exact coder would reach) and of
`evaluate_model` (non-overlapping block windows, as training's validation), beside zlib -9, bz2 -9
and lzma -9e on the same bytes (ratios against bz2 -9); then encode and decode speed in bytes/s
(both run the KV-cached predictor bit by bit, over min(16, patches // 256) lanes stepped together;
the round trip is checked).

    python bench/neural_codec.py                                        # assets/, shakespeare, 2000 bytes
    python bench/neural_codec.py --model runs/pydoc-small/best --corpus pydoc --bytes 2000
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.quality import load_model_arg  # noqa: E402
from bitlm.data import load_corpus, split_corpus  # noqa: E402
from bitlm.evaluate import classic_bits_per_byte, evaluate_model  # noqa: E402
from bitlm.neural_codec import HEADER_BYTES, decompress_bytes, encode_bytes, lane_count  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="assets", help="checkpoint or run folder (default: assets)")
    p.add_argument("--corpus", default="shakespeare", help="'shakespeare', 'pydoc' or a text file/folder")
    p.add_argument("--bytes", type=int, default=2000, help="first N bytes of the validation split (default: 2000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, fastest for 1-patch steps)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model_arg(p, args.model)[1].eval()
    data = "".join(split_corpus(load_corpus(args.corpus))[1]).encode("utf-8")[:args.bytes]
    n = len(data)

    t0 = time.perf_counter()
    enc = encode_bytes(model, data)
    t_enc = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = decompress_bytes(model, enc.stream)
    t_dec = time.perf_counter() - t0
    if out != data:
        raise SystemExit("round trip FAILED: decoded bytes differ from the original")
    windows = evaluate_model(model, data)

    rows = {"neural codec (stream)": 8 * len(enc.stream) / n,
            "neural codec (payload)": enc.payload_bits / n,
            "model CE, codec context": enc.ideal_bits / n,
            "model CE, block windows": windows["bits_per_byte"]}
    rows.update(classic_bits_per_byte(data))
    base = rows["bz2 -9"]

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s) "
          f"(of {torch.multiprocessing.cpu_count()} cores), torch {torch.__version__}")
    print(f"model: {args.model} ({model.num_params():,} parameters, block {model.config.block_size} bits, "
          f"{model.config.local}); text: {args.corpus} validation split, first {n:,} bytes; header {HEADER_BYTES} B\n")
    print(f"{'method':<26} {'bits/byte':>9} {'vs bz2 -9':>9}")
    for name, bpb in rows.items():
        print(f"{name:<26} {bpb:>9.4f} {bpb / base:>8.3f}x")
    overhead = enc.payload_bits / enc.ideal_bits - 1
    print(f"\npayload vs ideal: {overhead:+.3%};  lanes: {lane_count(enc.n_bits, model.config.patch_size)};  "
          "round trip exact: yes")
    print(f"{'speed':<26} {'bytes/s':>9} {'seconds':>9}")
    print(f"{'encode':<26} {n / t_enc:>9.1f} {t_enc:>9.2f}")
    print(f"{'decode':<26} {n / t_dec:>9.1f} {t_dec:>9.2f}")
    print(f"{'decode / encode':<26} {t_enc / t_dec:>8.3f}x")


if __name__ == "__main__":
    main()
