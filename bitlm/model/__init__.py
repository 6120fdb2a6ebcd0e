"""The model: its hyper-parameters (`config`), building blocks (`layers`), K/C/S telemetry (`telemetry`) and
`BitTransformerLM` itself (`transformer`: losses, compressed forward, files). Imports only `bitlm.bits`,
except the three generation front doors of `BitTransformerLM`, which call `bitlm.generate` when used.
"""
