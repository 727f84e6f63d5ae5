"""`semtok export`: a committed semtok output rewritten in the formats trainers load directly.

`job.py` drives an export (plan, per-unit parts, final index) the way tokenize commits units, so a
killed export resumes without losing or duplicating an item; `state.py` holds the export's own
records and atomic publishing; `shar.py` (lhotse Shar), `hf.py` (Hugging Face Parquet folder) and
`token_stream.py` (flat `tokens.bin` + `tokens.idx` for Megatron/nanoGPT-style loaders) write the
formats. Builds only on the output's building blocks (dataset, io, config) and `pipeline.training`'s
output resolution and token layout; no job imports it.
"""
