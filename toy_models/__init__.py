"""Toy transformers trained here on a generated corpus whose mechanisms are known.

`data` generates the corpus (spans carry their values), `tokenizer` trains its byte-level BPE,
`model` is the hooked transformer, `checkpoint` its files and identity (safetensors + JSON,
validated, no pickles), `resumable` the one resumable training loop, `train` and `evaluate`
are the CLIs, `ship` puts a run into the zoo, and `zoo` names the configs and finds the
shipped checkpoints. `cli` and `files` are what every CLI of the project shares: one-line
errors and atomic writes.
"""
