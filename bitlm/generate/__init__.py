"""Generation: the KV-cached next-bit predictor and the sampling loop (`decoder`), the n-gram draft that lets
one cached step check several guessed bytes (`draft`), and the K/C/S safety gate (`gate`). Reads the model only
through its methods; imports `bitlm.model` and `bitlm.bits`.
"""
