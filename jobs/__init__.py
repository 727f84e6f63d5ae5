"""Thin entrypoints: the `semtok` command and `python -m jobs.<name>` modules for `ray job submit`."""
