"""Toy transformers trained here on a generated corpus whose mechanisms are known.

`data` generates the corpus, `tokenizer` trains its byte-level BPE, `model` is the hooked
transformer, `train` and `evaluate` are the CLIs, and `zoo` names the configs and finds the
shipped checkpoints.
"""
