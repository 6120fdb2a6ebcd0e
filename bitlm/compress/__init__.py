"""The file compressor: the model re-expressed in integer arithmetic (`exact`), the container that codes each
input with whichever method is smallest (`container`: `compress_file` / `decompress_file`), and the float
bit-by-bit coder that benchmarks measure the exact path against (`float_reference`).
"""
