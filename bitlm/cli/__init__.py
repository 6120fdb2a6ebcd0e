"""Every command line, one module each, all alike: `main(argv) -> exit status`, run as `python -m bitlm.cli.NAME`
or, after `pip install .`, as `bitlm-NAME`: `train`, `evaluate`, `sample`, `compress` (the file compressor),
`codec` (the bit-stream codec), `gate` (the safety gate's calibration). The only place that parses argv.
"""
