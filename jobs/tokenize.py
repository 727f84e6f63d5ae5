"""`python -m jobs.tokenize --config job.yaml [flags]`: the tokenize job for `ray job submit`."""

from __future__ import annotations

import sys

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenize", *sys.argv[1:]]))
