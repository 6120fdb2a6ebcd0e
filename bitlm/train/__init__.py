"""Training and evaluation: corpora and the held-out split (`data`), the compression-aware `Trainer` and its
presets (`trainer`), run folders (`checkpoints`), DDP and devices (`distributed`), and held-out bits per byte
beside the classic compressors (`evaluate`). The command line is `bitlm.cli.train`.
"""
