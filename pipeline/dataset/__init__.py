"""A semtok output: layout, Parquet/WebDataset writers, manifest, commits, writer lease, versions,
dataset card."""
