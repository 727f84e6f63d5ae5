"""Deterministic synthetic weights in the official SemantiCodec checkpoint layout.

The golden-parity tests (tests/data/golden/) compare our codec with outputs of the official code run on
synthetic weights. Those weights (4.2 GB) are not stored anywhere: this module rebuilds them, bit for
bit, from a state-dict manifest (name, shape, dtype of every tensor) and a seed, and checks every tensor
against published SHA-256 digests.

    python -m codec.testing.golden_weights --manifest M.json[.gz] --seed 1 --out DIR \
        [--check DIGESTS.json[.gz]] [--digests OUT.json]

DIR receives the layout of one token-rate folder of the official hub repository:
``encoder.ckpt`` and ``decoder.ckpt`` (``torch.save`` of a flat ``{name: tensor}`` dict, manifest order)
and the k-means table ``codebook_idx/.../codebook_8192_0.npy`` (float32, ``numpy.save``).

The rules (format tag ``semanticodec-golden/v1``):

* key(file, name) = first 8 bytes, little endian, of sha256("semanticodec-golden/v1|seed|file|name");
  file is ``encoder.ckpt``, ``decoder.ckpt`` or the codebook's relative path (name ``centroids``).
* word(i) for flat element i = SplitMix64 finaliser of key + (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64).
* normal(std): S = sum of the four 16-bit fields of the word (Irwin-Hall, n = 4);
  value = (S - 131070) * (std / sqrt((65536^2 - 1) / 3)): mean 0, standard deviation std.
* uniform(b): k = word >> 40; value = (k + 0.5) * (b / 2^23) - b.
* Values are formed in float64 and rounded once to float32.

Which rule a tensor gets (first match wins), see `tensor_values`. Deterministic tables (2-D sin-cos
positions, DDPM schedule) use Python's scalar ``math`` functions in float64.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FORMAT_TAG = "semanticodec-golden/v1"
GENERATOR = "codec.testing.golden_weights"

# Scales that depart from plain fan-in rules (documented with the golden data).
ATTN_PROJ_STD_GAIN = 0.2  # AudioMAE attention output projections: 0.2 / sqrt(fan_in)
LSTM_BOUND_GAIN = 2.0  # BiLSTM weights and biases: U(+-2 / sqrt(hidden))
KMEANS_STD = 0.5  # k-means centroid table
VQ_EMBED_STD = 0.05  # acoustic VQ codebook rows
SMALL_STD = 0.02  # biases, norm scales (around 1), cls/mask tokens, EMA copy

SCHEDULE = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)

_STEP = np.uint64(0x9E3779B97F4A7C15)
_MUL_A = np.uint64(0xBF58476D1CE4E5B9)
_MUL_B = np.uint64(0x94D049BB133111EB)
_FIELD = np.uint64(0xFFFF)
_IRWIN_HALL_MEAN = 4 * 65535 / 2  # 131070
_IRWIN_HALL_STD = math.sqrt((65536**2 - 1) / 3)
_BLOCK = 1 << 20  # elements per work item


def tensor_key(seed: int, file: str, name: str) -> int:
    digest = hashlib.sha256(f"{FORMAT_TAG}|{seed}|{file}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def splitmix_words(key: int, start: int, count: int) -> np.ndarray:
    """The 64-bit words of elements start .. start+count-1 (uint64 arithmetic wraps mod 2^64)."""
    x = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    x *= _STEP
    x += np.uint64(key)
    x ^= x >> np.uint64(30)
    x *= _MUL_A
    x ^= x >> np.uint64(27)
    x *= _MUL_B
    x ^= x >> np.uint64(31)
    return x


def _normal_block(words: np.ndarray, std: float, mean: float) -> np.ndarray:
    total = words & _FIELD
    for shift in (16, 32):
        total += (words >> np.uint64(shift)) & _FIELD
    total += words >> np.uint64(48)
    values = (total.astype(np.float64) - _IRWIN_HALL_MEAN) * (std / _IRWIN_HALL_STD)
    if mean:
        values += mean
    return values.astype(np.float32)


def _uniform_block(words: np.ndarray, bound: float) -> np.ndarray:
    k = (words >> np.uint64(40)).astype(np.float64)
    return ((k + 0.5) * (bound / 2.0**23) - bound).astype(np.float32)


_POOL: ThreadPoolExecutor | None = None


def _filled(shape, key: int, block_fn) -> np.ndarray:
    """float32 array of `shape`, element i = block_fn(word(i)); blocks run on threads (numpy frees
    the GIL)."""
    global _POOL
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)

    def work(start: int) -> None:
        count = min(_BLOCK, flat.size - start)
        flat[start : start + count] = block_fn(splitmix_words(key, start, count))

    starts = range(0, flat.size, _BLOCK)
    if flat.size <= _BLOCK:
        for start in starts:
            work(start)
        return out
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    list(_POOL.map(work, starts))
    return out


def normal(shape, key: int, std: float, mean: float = 0.0) -> np.ndarray:
    return _filled(shape, key, lambda w: _normal_block(w, std, mean))


def uniform(shape, key: int, bound: float) -> np.ndarray:
    return _filled(shape, key, lambda w: _uniform_block(w, bound))


def sincos_table(dim: int, rows: int = 8, cols: int = 64) -> np.ndarray:
    """[1, 1 + rows*cols, dim] 2-D sin-cos position table, row 0 (class token) zero.

    Patch p: column p % cols in channels [0, dim/2), row p // cols in [dim/2, dim). Each half holds
    sin(pos * w_k) then cos(pos * w_k), k < dim/4, w_k = 1 / 10000^(k / (dim/4)), in float64.
    """
    quarter = dim // 4
    freqs = [1.0 / math.pow(10000.0, k / quarter) for k in range(quarter)]

    def encode(pos: int) -> list[float]:
        angles = [pos * w for w in freqs]
        return [math.sin(a) for a in angles] + [math.cos(a) for a in angles]

    table = np.zeros((1 + rows * cols, dim), dtype=np.float64)
    for p in range(rows * cols):
        table[p + 1] = encode(p % cols) + encode(p // cols)
    # a new leading axis (stride 0), as the reference files hold it; byte-identical checkpoints need it
    return table.astype(np.float32)[np.newaxis]


def ddpm_schedule(steps: int = 1000, beta_start: float = 0.0015, beta_end: float = 0.0195) -> dict:
    """The 12 schedule buffers of the latent-diffusion "linear" schedule, float64 rounded to float32."""
    import torch  # torch.linspace: the reference betas follow its rounding

    betas = (torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2).tolist()
    abar, prev, running = [], [], 1.0
    for beta in betas:
        prev.append(running)
        running *= 1.0 - beta
        abar.append(running)
    post_var = [b * (1.0 - ap) / (1.0 - a) for b, a, ap in zip(betas, abar, prev, strict=True)]
    columns = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": [math.sqrt(a) for a in abar],
        "sqrt_one_minus_alphas_cumprod": [math.sqrt(1.0 - a) for a in abar],
        "log_one_minus_alphas_cumprod": [math.log(1.0 - a) for a in abar],
        "sqrt_recip_alphas_cumprod": [math.sqrt(1.0 / a) for a in abar],
        "sqrt_recipm1_alphas_cumprod": [math.sqrt(1.0 / a - 1.0) for a in abar],
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": [math.log(max(v, 1e-20)) for v in post_var],
        "posterior_mean_coef1": [
            b * math.sqrt(ap) / (1.0 - a) for b, a, ap in zip(betas, abar, prev, strict=True)
        ],
        "posterior_mean_coef2": [
            (1.0 - ap) * math.sqrt(1.0 - b) / (1.0 - a) for b, a, ap in zip(betas, abar, prev, strict=True)
        ],
    }
    return {name: np.asarray(values, dtype=np.float64).astype(np.float32) for name, values in columns.items()}


def _fan_in(shape) -> int:
    return math.prod(shape[1:])


def tensor_values(
    seed: int, file: str, name: str, shape: Sequence[int], dtype: str, memo: dict | None = None
) -> np.ndarray:
    """The values of one tensor by the rules of this module (an unknown key raises KeyError)."""
    memo = {} if memo is None else memo
    shape = tuple(shape)
    key = tensor_key(seed, file, name)

    def const(value) -> np.ndarray:
        return np.full(shape, value, dtype=np.dtype(dtype))

    if file == "decoder.ckpt":
        if name in SCHEDULE:
            if "schedule" not in memo:
                memo["schedule"] = ddpm_schedule()
            return memo["schedule"][name].reshape(shape)
        if name == "logvar":
            return const(0)
        if name == "scale_factor":
            return const(0.8)
        if name == "model_ema.decay":
            return const(0.9999)
        if name == "model_ema.num_updates":
            return const(0)
        if name.startswith("model_ema."):
            return normal(shape, key, SMALL_STD)
    elif file == "encoder.ckpt":
        if name in ("audiomae.model.pos_embed", "audiomae.model.decoder_pos_embed"):
            table = sincos_table(shape[-1])
            if table.shape != shape:
                raise ValueError(f"{name}: expected a [1, 513, dim] table, manifest says {list(shape)}")
            return table
        if name in ("audiomae.model.cls_token", "audiomae.model.mask_token"):
            return normal(shape, key, SMALL_STD)
        if name.startswith(("encoder.weight_", "encoder.bias_")):
            return uniform(shape, key, LSTM_BOUND_GAIN / math.sqrt(shape[0] // 4))
        if name.startswith("audiomae.model.") and name.endswith("attn.proj.weight"):
            return normal(shape, key, ATTN_PROJ_STD_GAIN / math.sqrt(_fan_in(shape)))
        if name in ("quantizer._codebook.initted", "quantizer._codebook.cluster_size"):
            return const(1.0)
        if name in ("quantizer._codebook.embed", "quantizer._codebook.embed_avg"):
            # embed_avg holds the same values as embed (consistent with cluster_size 1)
            return normal(shape, tensor_key(seed, file, "quantizer._codebook.embed"), VQ_EMBED_STD)
    else:  # the k-means centroid table
        return normal(shape, key, KMEANS_STD)
    if name.endswith(".bias"):
        return normal(shape, key, SMALL_STD)
    if name.endswith(".weight") and len(shape) == 1:
        return normal(shape, key, SMALL_STD, mean=1.0)
    if name.endswith(".weight") and len(shape) >= 2:
        return normal(shape, key, 1.0 / math.sqrt(_fan_in(shape)))
    raise KeyError(f"no rule for {file}:{name}")


def tensor_digest(array: np.ndarray) -> str:
    """sha256 of '<dtype.str>|<shape as a list>|' followed by the raw C-order bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}|{list(array.shape)}|".encode())
    digest.update(array.reshape(-1).data.cast("B"))
    return digest.hexdigest()


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def generate(manifest: dict, seed: int) -> Iterator[tuple[str, str, np.ndarray]]:
    """Yields (file, tensor name, values) in manifest order; the codebook's name is 'centroids'."""
    memo: dict = {}
    for file, entries in manifest["files"].items():
        for entry in entries:
            yield (
                file,
                entry["name"],
                tensor_values(seed, file, entry["name"], entry["shape"], entry["dtype"], memo),
            )
    book = manifest["codebook"]
    values = tensor_values(seed, book["path"], "centroids", book["shape"], book["dtype"])
    yield book["path"], "centroids", values


def write_weights(
    manifest: dict, seed: int, out: str | os.PathLike, expected: dict | None = None, progress=None
) -> dict:
    """Writes the weights folder; returns {'digests': {file: {name: sha256}}, 'mismatched': [...]}.

    With `expected` (a digests document), every tensor is compared as it is made; names missing on
    either side count as mismatches.
    """
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digests: dict[str, dict[str, str]] = {}
    pending: dict[str, np.ndarray] = {}
    current = None

    def flush() -> None:
        if current is None:
            return
        if current.endswith(".npy"):
            (out / current).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / current, pending["centroids"])
        else:
            torch.save({name: torch.from_numpy(values) for name, values in pending.items()}, out / current)
        pending.clear()

    for file, name, values in generate(manifest, seed):
        if file != current:
            flush()
            current = file
        pending[name] = values
        digests.setdefault(file, {})[name] = tensor_digest(values)
        if progress:
            progress(file, name)
    flush()
    mismatched = []
    if expected is not None:
        published = expected["files"]
        for file in sorted(set(published) | set(digests)):
            ours, theirs = digests.get(file, {}), published.get(file, {})
            names = sorted(set(ours) | set(theirs))
            mismatched += [f"{file}:{n}" for n in names if ours.get(n) != theirs.get(n)]
    return {"digests": digests, "mismatched": mismatched}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="state-dict manifest (.json or .json.gz)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="output folder (official layout)")
    parser.add_argument("--check", help="published digests (.json or .json.gz); exit 1 on any difference")
    parser.add_argument("--digests", help="write the per-tensor digests here")
    parser.add_argument("--marker", help="on success write this JSON record (the cache's completion marker)")
    args = parser.parse_args(argv)

    manifest = read_json(args.manifest)
    expected = read_json(args.check) if args.check else None
    if expected is not None and (expected.get("seed") != args.seed or expected.get("format") != FORMAT_TAG):
        print(
            f"{args.check}: digests are for seed {expected.get('seed')} / {expected.get('format')}",
            file=sys.stderr,
        )
        return 1
    result = write_weights(manifest, args.seed, args.out, expected)
    count = sum(len(v) for v in result["digests"].values())
    if args.digests:
        Path(args.digests).write_text(
            json.dumps({"seed": args.seed, "format": FORMAT_TAG, "files": result["digests"]}, indent=1) + "\n"
        )
    if result["mismatched"]:
        shown = ", ".join(result["mismatched"][:10])
        print(
            f"{len(result['mismatched'])} of {count} tensors differ from {args.check}: {shown}",
            file=sys.stderr,
        )
        return 1
    if expected is not None:
        print(f"all {count} tensors match {args.check}")
    if args.marker:
        checked = None
        if expected is not None:
            checked = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
        record = {
            "generator": GENERATOR,
            "format": FORMAT_TAG,
            "seed": args.seed,
            "tensors": count,
            "published_digests_sha256": checked,
            "mismatched": 0 if checked else None,
        }
        Path(args.marker).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
