"""The file compressor: the model re-expressed in integer arithmetic (`exact`, built of `integers`, its numba
kernels in `attention_kernel`), online context mixing in integers (`cm`), the model's two methods
(`neural`: the predictor to a range coder or into the mixer), the container's header (`header`), the
container that codes each input with whichever method is smallest (`container`: `compress_file` /
`decompress_file`), and the float bit-by-bit coder that benchmarks measure the exact path against
(`float_reference`).
"""
