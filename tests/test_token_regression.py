"""Refactors keep every token: the pipeline reproduces tokens recorded before the subpackage split.

`tests/data/tiny_tokens_reference.npz` was written by `python -m tests.token_reference` at commit
de2ad07 (flat `pipeline/`). Same corpus bytes, same tiny random codec, same tokens, item by item.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import TokenizeConfig
from pipeline.tokenize.job import run_tokenize
from tests.token_reference import ITEMS, TINY, tokens_of, write_corpus

REFERENCE = Path(__file__).parent / "data" / "tiny_tokens_reference.npz"


def test_tokens_equal_those_recorded_before_the_redesign(tmp_path, ray_local):  # noqa: ARG001
    write_corpus(tmp_path / "in")
    config = TokenizeConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        files_per_unit=4,
        progress_interval_s=60,
        **TINY,
    )
    summary = run_tokenize(config)
    assert summary.items_ok == len(ITEMS) and summary.items_failed == 0
    (version,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    now = tokens_of(str(version))
    with np.load(REFERENCE) as recorded:
        assert sorted(now) == sorted(recorded.files)
        for item in recorded.files:
            assert np.array_equal(now[item], recorded[item]), item
