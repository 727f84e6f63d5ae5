"""Finding and loading SemantiCodec weights, unchanged, from wherever the user keeps them.

A weight source is one of:
- a local folder in the official layout: `encoder.ckpt`, `decoder.ckpt` and
  `codebook_idx/combine_<S>_audioset_dominate/codebook_<V/2>_0.npy`; or the root of a copy of the hub
  repo (`semanticodec_tokenrate_<R>/{encoder,decoder}.ckpt` beside a shared `codebook_idx/`);
- an fsspec URL (`s3://…`, `gs://…`) of either layout, fetched once per machine into a local cache;
- `"hub"`: the official repo `haoheliu/SemantiCodec` through `huggingface_hub`, when reachable;
- `"random:SEED"`: seeded random weights for tests and demos (see `random_weights`).

Loading is strict and safe: `torch.load(..., weights_only=True)` (no pickled code runs), and every
missing, unexpected or mis-shaped key is an error that names it. Only the files a replica needs are
read: an encode-only replica never touches `decoder.ckpt`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from .config import SemantiCodecConfig

HUB_REPO = "haoheliu/SemantiCodec"
_RANDOM = re.compile(r"^random:(\d+)$")


class CheckpointError(ValueError):
    """A weight file that does not match the architecture; the message names the keys."""


@dataclass(frozen=True)
class WeightFiles:
    """Local paths of the files one replica needs (None where not needed)."""

    source: str
    codebook: Path
    encoder: Path | None = None
    decoder: Path | None = None

    def part(self, name: Literal["encoder", "decoder"]) -> Path:
        """The file of `name`; resolving without that part and then asking for it is a bug."""
        path = self.encoder if name == "encoder" else self.decoder
        if path is None:
            raise ValueError(f"{name} weights of {self.source} were not resolved")
        return path


def is_random_source(source: str) -> bool:
    return bool(_RANDOM.match(source))


def random_seed(source: str) -> int:
    match = _RANDOM.match(source)
    if not match:
        raise ValueError(f"not a random weight source: {source!r} (expected 'random:SEED')")
    return int(match.group(1))


def default_cache_dir() -> Path:
    root = os.environ.get("SEMTOK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semtok"
    )
    return Path(root)


def _model_relpaths(config: SemantiCodecConfig, part: str) -> list[str]:
    """Where `part` (encoder/decoder/codebook) may lie, relative to the source root, in order."""
    if part == "codebook":
        return [config.codebook_relpath]
    rate_dir = f"semanticodec_tokenrate_{config.token_rate}"
    return [f"{part}.ckpt", f"{rate_dir}/{part}.ckpt"]


def resolve_weights(
    source: str,
    config: SemantiCodecConfig,
    *,
    parts: tuple[str, ...] = ("encoder",),
    cache_dir: Path | None = None,
) -> WeightFiles:
    """Local paths of `parts` (and the k-means table) for `source`, fetching remote files once."""
    if is_random_source(source):
        raise ValueError("random weights have no files; use codec.random_weights")
    if source == "hub":
        return _resolve_hub(config, parts, cache_dir)
    protocol = source.split("://", 1)[0] if "://" in source else "file"
    if protocol == "file":
        return _resolve_local(source.removeprefix("file://"), config, parts)
    return _resolve_remote(source, config, parts, cache_dir or default_cache_dir())


def _resolve_local(root: str, config: SemantiCodecConfig, parts: tuple[str, ...]) -> WeightFiles:
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"weights folder {base} does not exist")
    found: dict[str, Path] = {}
    for part in (*parts, "codebook"):
        candidates = [base / rel for rel in _model_relpaths(config, part)]
        if part == "codebook":  # the hub layout keeps codebook_idx/ beside the per-rate folders
            candidates.append(base.parent / config.codebook_relpath)
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            tried = ", ".join(str(c) for c in candidates)
            raise FileNotFoundError(f"no {part} file for {config} under {base} (looked for {tried})")
        found[part] = path
    return WeightFiles(
        source=str(base),
        codebook=found["codebook"],
        encoder=found.get("encoder"),
        decoder=found.get("decoder"),
    )


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One download per machine: concurrent replicas on a node wait for the first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _resolve_remote(
    url: str, config: SemantiCodecConfig, parts: tuple[str, ...], cache_dir: Path
) -> WeightFiles:
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    local_root = cache_dir / "weights" / hashlib.sha256(url.encode()).hexdigest()[:16]
    found: dict[str, Path] = {}
    for part in (*parts, "codebook"):
        candidates = [f"{root}/{rel}" for rel in _model_relpaths(config, part)]
        if part == "codebook":
            candidates.append(f"{root.rsplit('/', 1)[0]}/{config.codebook_relpath}")
        remote = next((c for c in candidates if fs.isfile(c)), None)
        if remote is None:
            raise FileNotFoundError(f"no {part} file for {config} under {url}")
        local = local_root / remote.removeprefix(root.rsplit("/", 1)[0]).lstrip("/")
        with _file_lock(local.with_name(local.name + ".lock")):
            if not local.is_file() or local.stat().st_size != fs.size(remote):
                local.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(dir=local.parent, delete=False) as tmp:
                    fs.get_file(remote, tmp.name)
                os.replace(tmp.name, local)
        found[part] = local
    return WeightFiles(
        source=url, codebook=found["codebook"], encoder=found.get("encoder"), decoder=found.get("decoder")
    )


def _resolve_hub(config: SemantiCodecConfig, parts: tuple[str, ...], cache_dir: Path | None) -> WeightFiles:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as error:
        raise RuntimeError("weights='hub' needs huggingface_hub: pip install 'semtok[hub]'") from error
    found: dict[str, Path] = {}
    for part in (*parts, "codebook"):
        relpath = _model_relpaths(config, part)[-1]
        found[part] = Path(
            hf_hub_download(
                repo_id=HUB_REPO, filename=relpath, cache_dir=str(cache_dir) if cache_dir else None
            )
        )
    return WeightFiles(
        source="hub", codebook=found["codebook"], encoder=found.get("encoder"), decoder=found.get("decoder")
    )


def file_digest(path: Path, cache_dir: Path | None = None) -> str:
    """SHA-256 of a weight file, remembered per (path, size, mtime) so replicas hash it once."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = (
        (cache_dir or default_cache_dir())
        / "digests"
        / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
    )
    try:
        return json.loads(memo.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):
        memo.parent.mkdir(parents=True, exist_ok=True)
        memo.write_text(json.dumps({"key": key, "sha256": value}))
    return value


def load_centroids(path: Path, expected_shape: tuple[int, int]) -> torch.Tensor:
    """The k-means table: float32 [vocab, D] from `.npy` (never unpickled)."""
    table = np.load(path, allow_pickle=False)
    if tuple(table.shape) != expected_shape:
        raise CheckpointError(f"{path}: k-means table has shape {table.shape}, expected {expected_shape}")
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.float32))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} checkpoint, memory-mapped, with no pickled code executed."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a flat state dict, got {type(state).__name__}")
    return dict(state)


def check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    where: str,
    scalar_ok: frozenset[str] = frozenset(),
) -> None:
    """Raise `CheckpointError` naming every missing, unexpected and mis-shaped key."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{name}: file {tuple(state[name].shape)} vs model {expected[name]}"
        for name in sorted(set(state) & set(expected))
        if tuple(state[name].shape) != tuple(expected[name])
        and not (name in scalar_ok and state[name].numel() == 1)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if names:
            shown = ", ".join(names[:8]) + (f" … (+{len(names) - 8} more)" if len(names) > 8 else "")
            problems.append(f"{len(names)} {label} key(s): {shown}")
    if problems:
        raise CheckpointError(f"{where} does not match the model: " + "; ".join(problems))


def check_state(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    where: str,
    ignored: Mapping[str, tuple[int, ...]],
    scalar_ok: frozenset[str] = frozenset(),
) -> None:
    """Strictly check `state` against `module` plus the known-unused `ignored` keys (names, shapes,
    float dtypes) without touching either: `module` may live on the meta device."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    overlap = set(expected) & set(ignored)
    if overlap:
        raise AssertionError(f"keys both used and ignored: {sorted(overlap)}")
    check_keys(state, {**expected, **ignored}, where=where, scalar_ok=scalar_ok)
    for name in expected:
        if not state[name].is_floating_point():
            raise CheckpointError(f"{where}: {name} has dtype {state[name].dtype}, expected a float tensor")


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    where: str,
    ignored: Mapping[str, tuple[int, ...]],
    scalar_ok: frozenset[str] = frozenset(),
) -> None:
    """Strictly check `state` against `module` plus the known-unused `ignored` keys, then assign.

    The module may live on the meta device: its tensors are replaced by the (memory-mapped) ones
    from the file, so loading never holds two copies of the weights.
    """
    check_state(module, state, where=where, ignored=ignored, scalar_ok=scalar_ok)
    used = {name: state[name] for name in module.state_dict()}
    module.load_state_dict({n: t.float() for n, t in used.items()}, strict=True, assign=True)


# -- checking weights before a job starts ------------------------------------------------------------

HUB_UNREACHABLE = (
    "cannot reach the model hub for weights=hub; pass --weights FOLDER_OR_URL "
    "(a copy of the official checkpoints)"
)
HUB_PROBE_TIMEOUT_S = 3.0


class WeightsError(ValueError):
    """Weights a job could not load; one line naming the file (or source) and the reason."""

    def __init__(self, file: str, reason: str) -> None:
        self.file, self.reason = file, reason
        super().__init__(f"{file}: {reason}" if file else reason)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the proxy in front of it) opens within `timeout`.

    Runs in a daemon thread so a hanging DNS lookup cannot hold the caller past the timeout.
    """
    import socket
    import threading
    import urllib.parse
    import urllib.request

    if hub_offline():
        return False
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = urllib.request.getproxies().get(endpoint.scheme)
    target = (
        urllib.parse.urlsplit(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else endpoint
    )
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    reached: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
            reached.append(True)

    thread = threading.Thread(target=probe, name="semtok-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(reached)


def _hub_cached(config: SemantiCodecConfig, parts: tuple[str, ...]) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return all(
        isinstance(try_to_load_from_cache(HUB_REPO, _model_relpaths(config, part)[-1]), str)
        for part in (*parts, "codebook")
    )


def check_hub(config: SemantiCodecConfig, parts: tuple[str, ...] = ("encoder",)) -> None:
    """`WeightsError` at once when weights='hub' would wait on a hub that cannot be reached (files
    already in the local hub cache do not need it)."""
    if not _hub_cached(config, parts) and not hub_reachable():
        raise WeightsError("", HUB_UNREACHABLE)


def _read_checked(path: Path) -> dict[str, torch.Tensor]:
    """`read_state_dict`, its failures as one-line `WeightsError`s (safe loading only)."""
    import pickle

    try:
        return read_state_dict(path)
    except pickle.UnpicklingError:
        raise WeightsError(
            str(path), "not a plain tensor checkpoint: it holds pickled objects that safe loading refuses"
        ) from None
    except CheckpointError as error:
        raise WeightsError(str(path), str(error).removeprefix(f"{path}: ")) from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        if isinstance(error, OSError) and not isinstance(error, (FileNotFoundError, IsADirectoryError)):
            raise  # a storage problem, not a bad file
        first = (str(error).strip().splitlines() or [""])[0]
        detail = "" if "weights_only" in first else f" ({type(error).__name__}: {first[:160]})"
        raise WeightsError(str(path), f"cannot be read as a PyTorch checkpoint{detail}") from None


def _check_module(module: nn.Module, path: Path, **kwargs) -> None:
    try:
        check_state(module, _read_checked(path), where=str(path), **kwargs)
    except CheckpointError as error:
        raise WeightsError(str(path), str(error).removeprefix(str(path)).lstrip(": ")) from None


def check_semanticodec_weights(
    options: Mapping[str, object], components: tuple[str, ...] = ("encoder",)
) -> None:
    """Open every file a SemantiCodec replica built from `options` would load (memory-mapped, safe
    loading) and check names, shapes and dtypes strictly against the model built on the meta device.
    Random weights have no files: nothing to check. Raises `WeightsError` (one line)."""
    from .condition import ConditionBuilder
    from .decoder import SemantiCodecDecoder, unused_decoder_keys
    from .encoder import SemantiCodecEncoder
    from .semanticodec import SemantiCodec, _encoder_ignored_keys

    opts = SemantiCodec._checked(dict(options))
    config = SemantiCodecConfig(
        opts.get("token_rate", 50), opts.get("semantic_vocab_size", 16384), opts.get("size", "full")
    )
    weights = opts.get("weights") or ("hub" if config.size == "full" else None)
    if weights is None:
        raise WeightsError("", "no official weights exist for size='tiny': pass weights='random:SEED'")
    if is_random_source(str(weights)):
        return
    parts = tuple(c for c in ("encoder", "decoder") if c in components) or ("encoder",)
    if weights == "hub":
        check_hub(config, parts)
    cache = Path(str(opts["cache_dir"])) if opts.get("cache_dir") else None
    try:
        files = resolve_weights(str(weights), config, parts=parts, cache_dir=cache)
    except FileNotFoundError as error:
        raise WeightsError(str(weights), str(error).removeprefix(f"{weights}: ")) from None
    shape = (config.semantic_vocab_size, config.feature_dim)
    try:
        table = np.load(files.codebook, mmap_mode="r", allow_pickle=False)
    except (ValueError, EOFError) as error:
        raise WeightsError(str(files.codebook), f"not a .npy k-means table ({error})") from None
    if tuple(table.shape) != shape:
        raise WeightsError(
            str(files.codebook), f"k-means table has shape {tuple(table.shape)}, expected {shape}"
        )
    with torch.device("meta"):
        encoder = SemantiCodecEncoder(config, torch.empty(shape))
    _check_module(
        encoder,
        files.part("encoder"),
        ignored=_encoder_ignored_keys(config),
        scalar_ok=frozenset({"quantizer._codebook.initted"}),
    )
    if "decoder" in parts:
        conditions = ConditionBuilder(
            encoder.quantizer, encoder.semantic_quantizer, config.tokens_per_segment
        )
        with torch.device("meta"):
            decoder = SemantiCodecDecoder(config, conditions)
        _check_module(decoder, files.part("decoder"), ignored=unused_decoder_keys(decoder))
