"""Published quality figures an audit can be held against, each with where it was published.

Why a file and not constants: a reference line is only honest when someone can check it. semtok
bundles none, because the SemantiCodec paper's result tables could not be read where this was
built (only its abstract), and a remembered number is not a citation. Users who have the paper (or
their own accepted baseline) pass a JSON list:

    [{"metric": "visqol", "value": 3.1, "domain": "speech", "token_rate": 50,
      "label": "SemantiCodec paper (arXiv 2405.00233), Table N, LibriTTS"}]

`domain` and `token_rate` are optional filters: a figure for another token rate than the audited
output's is not drawn. `label` is required and shown next to the line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import fsspec

from pipeline.audio_metrics import DOMAINS, METRICS

#: Figures that ship with semtok (see the module docstring for why there are none).
BUNDLED: tuple[ReferenceFigure, ...] = ()


@dataclass(frozen=True)
class ReferenceFigure:
    metric: str
    value: float
    label: str  # where the figure was published: paper, table, test set
    domain: str | None = None
    token_rate: int | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"reference figure: unknown metric {self.metric!r}; known: {sorted(METRICS)}")
        if self.domain is not None and self.domain not in DOMAINS:
            raise ValueError(f"reference figure: domain must be one of {DOMAINS}, got {self.domain!r}")
        if not str(self.label).strip():
            raise ValueError("reference figure: `label` (where it was published) is required")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_reference_figures(url: str | None, fingerprint: Mapping[str, Any] | None = None
                           ) -> list[ReferenceFigure]:
    """Bundled figures plus those in the JSON file at `url`, kept when they match the token rate."""
    figures = list(BUNDLED)
    if url:
        with fsspec.open(url, "r") as handle:
            data = json.load(handle)
        if not isinstance(data, list):
            raise ValueError(f"{url}: expected a JSON list of reference figures")
        for entry in data:
            if not isinstance(entry, dict):
                raise ValueError(f"{url}: each reference figure must be an object, got {entry!r}")
            figures.append(ReferenceFigure(metric=entry.get("metric", ""), value=float(entry["value"]),
                                           label=str(entry.get("label", "")), domain=entry.get("domain"),
                                           token_rate=entry.get("token_rate")))
    rate = (fingerprint or {}).get("token_rate")
    return [f for f in figures if f.token_rate is None or rate is None or int(f.token_rate) == int(rate)]
