"""Training on a semtok output: the flat LM vocabulary (`token_layout`), document packing
(`packing`) and a resumable, sharded PyTorch loader plus a Ray Data reader (`loader`).

Builds only on the output's building blocks (dataset, io, config, records, codec); no job imports it.
"""
