"""Published quality figures an audit can be held against, each with where it was published.

Why each figure carries its source: a reference line is only honest when someone can check it.
The bundled figures come from the one published quality figure readable here: the "ViSQOL Avg vs.
Accuracy" plot (`result.png`) in the official repository's README. Its values were read off the
plot's pixels (points against the grid lines, about ±0.02). The paper's result tables could not be read
(only its abstract), so nothing else is bundled. They are averages over the paper's evaluation sets, of
the three 32768-vocabulary configurations, and are drawn only for those configurations. Users
add their own (another paper, their accepted baseline) as a JSON list:

    [{"metric": "visqol", "value": 3.1, "domain": "speech", "token_rate": 50,
      "label": "paper X, Table N, LibriTTS test-clean"}]

`domain`, `token_rate` and `semantic_vocab_size` are optional filters: a figure for another
configuration than the audited output's is not drawn. `label` is required and shown with the line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import fsspec

from pipeline.audit.quality_metrics import DOMAINS, METRICS

OFFICIAL_PLOT = (
    "SemantiCodec, official README plot 'ViSQOL Avg vs. Accuracy' "
    "(github.com/haoheliu/SemantiCodec-inference, result.png), read off the plot"
)


@dataclass(frozen=True)
class ReferenceFigure:
    metric: str
    value: float
    label: str  # where the figure was published: paper, table, test set
    domain: str | None = None
    token_rate: int | None = None
    semantic_vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"reference figure: unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ValueError(f"reference figure: domain must be one of {DOMAINS}, got {self.domain!r}")
        if not str(self.label).strip():
            raise ValueError("reference figure: `label` (where it was published) is required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Figures that ship with semtok: ViSQOL averages of the three 32768-vocabulary configurations.
BUNDLED: tuple[ReferenceFigure, ...] = (
    ReferenceFigure(
        "visqol", 3.81, f"≈3.81 at 1.40 kbps: {OFFICIAL_PLOT}", token_rate=100, semantic_vocab_size=32768
    ),
    ReferenceFigure(
        "visqol", 3.55, f"≈3.55 at 0.70 kbps: {OFFICIAL_PLOT}", token_rate=50, semantic_vocab_size=32768
    ),
    ReferenceFigure(
        "visqol", 3.17, f"≈3.17 at 0.35 kbps: {OFFICIAL_PLOT}", token_rate=25, semantic_vocab_size=32768
    ),
)
_FILTERS = ("token_rate", "semantic_vocab_size")


def _applies(figure: ReferenceFigure, fingerprint: Mapping[str, Any], *, strict: bool) -> bool:
    """A figure fits a configuration when none of its filters contradicts it (`strict`: when the
    fingerprint states, and equals, every filter the figure has)."""
    for key in _FILTERS:
        wanted = getattr(figure, key)
        if wanted is None:
            continue
        if key not in fingerprint:
            if strict:
                return False
            continue
        if int(fingerprint[key]) != int(wanted):
            return False
    return True


def load_reference_figures(
    url: str | None, fingerprint: Mapping[str, Any] | None = None
) -> list[ReferenceFigure]:
    """Bundled figures of exactly this configuration, plus those in the JSON file at `url` that
    do not contradict it. Without a fingerprint no bundled figure applies."""
    fingerprint = fingerprint or {}
    figures = [f for f in BUNDLED if fingerprint and _applies(f, fingerprint, strict=True)]
    if url:
        with fsspec.open(url, "r") as handle:
            data = json.load(handle)
        if not isinstance(data, list):
            raise ValueError(f"{url}: expected a JSON list of reference figures")
        for entry in data:
            if not isinstance(entry, dict):
                raise ValueError(f"{url}: each reference figure must be an object, got {entry!r}")
            figure = ReferenceFigure(
                metric=entry.get("metric", ""),
                value=float(entry["value"]),
                label=str(entry.get("label", "")),
                domain=entry.get("domain"),
                token_rate=entry.get("token_rate"),
                semantic_vocab_size=entry.get("semantic_vocab_size"),
            )
            if _applies(figure, fingerprint, strict=False):
                figures.append(figure)
    return figures
