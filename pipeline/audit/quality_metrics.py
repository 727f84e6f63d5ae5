"""Per-item audio quality metrics for the quality audit: (reference, estimate) pairs, 16 kHz mono.

Why this module exists: the audit decodes SemantiCodec tokens back to audio and compares them with
the source. The codec's output can be longer or shifted, and not every metric means something for
every kind of content (PESQ and STOI are speech measures), so every metric either returns a float
or a :class:`NotApplicable` carrying the reason — never a crash and never a made-up number.

Metrics (name in :data:`METRICS` -> what it is, which direction is better):

* ``si_sdr`` — scale-invariant SDR in dB (Le Roux et al., "SDR – half-baked or well done?",
  ICASSP 2019), zero-mean signals, capped at ``cap_db`` (identical signals would give +inf).
  Higher is better. Very phase-sensitive: a generative codec can score low here and still sound
  right, so read it next to the perceptual metrics.
* ``log_mel_distance`` — mean |log10 mel(ref) - log10 mel(est)| (see :data:`MEL_PARAMS`), the
  "mel distance" of audiotools/DAC evaluations. Lower is better, 0 for identical signals.
* ``mrstft_distance`` — multi-resolution STFT distance (Yamamoto et al., Parallel WaveGAN,
  ICASSP 2020): per resolution spectral convergence + mean |log mag difference|, averaged over
  the resolutions in :data:`MRSTFT_FFT_SIZES`. Lower is better, 0 for identical signals.
* ``loudness_diff_db`` — integrated loudness (ITU-R BS.1770-4: K-weighting, 400 ms blocks,
  -70 LUFS absolute and -10 LU relative gating) of the estimate minus that of the reference, in
  LU (= dB). Computed with ``pyloudnorm`` (it implements exactly that). 0 is best.
* ``pesq_wb`` — ITU-T P.862.2 wide-band PESQ MOS-LQO via the ``pesq`` package, 16 kHz; speech
  only. Range about 1.04–4.64, higher is better.
* ``stoi`` / ``estoi`` — (extended) short-time objective intelligibility via ``pystoi``
  (Taal et al. 2011; Jensen & Taal 2016); speech only. Higher is better.
* ``visqol`` — ViSQOL v3 MOS-LQO via ``visqol-python`` (a Python port of Google's C++ ViSQOL).
  Speech: speech mode at 16 kHz with the deep-lattice mapper (the C++ default). Music/sound: audio
  mode at 48 kHz after resampling both signals with soxr; our signals carry nothing above 8 kHz,
  so these scores compare runs of this pipeline with each other, not with published 48 kHz
  numbers. Range 1–5, higher is better.

The heavy packages are optional (``pip install semtok[audit]``) and imported lazily; when one is
missing its metric is :class:`NotApplicable` with an install hint.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

SAMPLE_RATE = 16_000
Domain = Literal["speech", "music", "sound"]
DOMAINS: tuple[str, ...] = ("speech", "music", "sound")

#: SI-SDR cap (dB). Float32 round-off already limits real pairs to roughly 140 dB; 100 dB is far
#: above any codec and keeps identical signals finite.
SI_SDR_CAP_DB = 100.0

#: Log-mel parameters: 1024-point Hann STFT (64 ms), hop 256 (16 ms), 80 HTK-scale triangular
#: filters over 0–8000 Hz applied to the magnitude spectrum, log10 with a 1e-5 floor.
MEL_PARAMS: dict[str, float] = {
    "n_fft": 1024,
    "hop": 256,
    "n_mels": 80,
    "fmin": 0.0,
    "fmax": 8000.0,
    "floor": 1e-5,
}

#: Multi-resolution STFT: FFT sizes (Hann window of the same length, hop = size // 4).
MRSTFT_FFT_SIZES: tuple[int, ...] = (512, 1024, 2048)

#: STOI works on 30-frame (384 ms at 10 kHz) segments of non-silent frames; fewer is no measure.
STOI_MIN_SECONDS = 0.5
#: PESQ needs at least 1/4 s (it raises BufferTooShortError below that); be a bit stricter.
PESQ_MIN_SECONDS = 0.5
#: BS.1770 gating blocks are 400 ms.
LOUDNESS_MIN_SECONDS = 0.4

_AUDIT_HINT = "install the audit extra: pip install 'semtok[audit]'"


@dataclass(frozen=True)
class NotApplicable:
    """A metric that has no meaning for this pair (or failed); ``reason`` says why."""

    reason: str

    def __str__(self) -> str:
        return f"n/a: {self.reason}"


Score = float | NotApplicable


class Aligned(NamedTuple):
    """Both signals trimmed to their common aligned span; ``lag`` > 0: estimate was late by lag."""

    reference: np.ndarray
    estimate: np.ndarray
    lag: int


# --- helpers ---------------------------------------------------------------------------------


def _as_mono_f64(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D mono, got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def _next_fast_len(n: int) -> int:
    """Smallest 5-smooth integer >= n: pocketfft is fast on those, and they waste less than 2^k."""
    best = 1 << max(0, int(n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


#: A reference whose peak is below one 16-bit LSB is digital silence: ratio/intelligibility
#: metrics have nothing to measure there (they would return 0, NaN or a placeholder).
SILENCE_PEAK = 2.0**-15


def _silent_reference(ref: np.ndarray, what: str) -> NotApplicable | None:
    if len(ref) == 0 or float(np.max(np.abs(ref))) < SILENCE_PEAK:
        return NotApplicable(f"reference is silent; {what} has nothing to measure")
    return None


def _too_short(x: np.ndarray, min_seconds: float, what: str) -> NotApplicable | None:
    if len(x) < min_seconds * SAMPLE_RATE:
        return NotApplicable(f"clip too short for {what}: {len(x) / SAMPLE_RATE:.3f} s < {min_seconds} s")
    return None


def _only_speech(domain: str, what: str) -> NotApplicable | None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if domain != "speech":
        return NotApplicable(f"{what} is a speech measure; domain is {domain}")
    return None


# --- alignment -------------------------------------------------------------------------------


def align(
    reference: np.ndarray, estimate: np.ndarray, max_lag_s: float = 0.1, sample_rate: int = SAMPLE_RATE
) -> Aligned:
    """Shift ``estimate`` onto ``reference`` by the cross-correlation peak within ±max_lag_s.

    Why: decoders add priming/padding, and every sample-wise metric (SI-SDR, STOI) collapses for a
    few ms of offset. The correlation is computed with one FFT (O(n log n)); both outputs are cut
    to the common length so all metrics see equal-length arrays.
    """
    ref = np.asarray(reference)
    est = np.asarray(estimate)
    if ref.ndim != 1 or est.ndim != 1:
        raise ValueError("align expects 1-D signals")
    max_lag = int(round(max_lag_s * sample_rate))
    lag = 0
    if max_lag > 0 and len(ref) and len(est):
        n = _next_fast_len(len(ref) + len(est) - 1)
        r64 = ref.astype(np.float64, copy=False)
        e64 = est.astype(np.float64, copy=False)
        # xcorr[k] = sum_t ref[t] * est[t + k]; negative k wraps to the end of the buffer.
        xcorr = np.fft.irfft(np.conj(np.fft.rfft(r64, n)) * np.fft.rfft(e64, n), n)
        pos = xcorr[: min(max_lag, len(est) - 1) + 1]
        neg_count = min(max_lag, len(ref) - 1)
        neg = xcorr[n - neg_count :] if neg_count > 0 else xcorr[:0]  # lags -neg_count .. -1
        lags = np.concatenate([np.arange(-neg_count, 0), np.arange(len(pos))])
        vals = np.concatenate([neg, pos])
        if np.any(vals != 0):
            lag = int(lags[int(np.argmax(vals))])
    if lag >= 0:
        est = est[lag:]
    else:
        ref = ref[-lag:]
    n_common = min(len(ref), len(est))
    return Aligned(ref[:n_common], est[:n_common], lag)


# --- signal-level metrics --------------------------------------------------------------------


def si_sdr(reference: np.ndarray, estimate: np.ndarray, cap_db: float = SI_SDR_CAP_DB) -> Score:
    """Scale-invariant SDR (dB) of equal-length signals, capped at ``cap_db``."""
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    if len(ref) != len(est):
        raise ValueError(f"si_sdr needs equal lengths (align first): {len(ref)} vs {len(est)}")
    silent = _silent_reference(ref, "SI-SDR")
    if silent:
        return silent
    ref = ref - ref.mean()
    est = est - est.mean()
    ref_energy = float(ref @ ref)
    if ref_energy <= 0.0:
        return NotApplicable("reference is constant")
    target = (float(est @ ref) / ref_energy) * ref
    noise = est - target
    t_energy, n_energy = float(target @ target), float(noise @ noise)
    if n_energy <= 0.0:
        return float(cap_db)
    if t_energy <= 0.0:
        return float(-cap_db)
    return float(np.clip(10.0 * math.log10(t_energy / n_energy), -cap_db, cap_db))


def _stft_mag(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| [frames, bins], centred frames (reflect padding, zeros when the clip is too short)."""
    pad = n_fft // 2
    mode: Literal["reflect", "constant"] = "reflect" if len(x) > pad else "constant"
    xp = np.pad(x, (pad, pad), mode=mode)
    if len(xp) < n_fft:
        xp = np.pad(xp, (0, n_fft - len(xp)))
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop]
    return np.abs(np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=-1))


_MEL_CACHE: dict[tuple, np.ndarray] = {}


def mel_filterbank(
    n_fft: int, n_mels: int, fmin: float, fmax: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """[n_mels, n_fft//2+1] triangular filters equally spaced on the HTK mel scale (peak 1)."""
    key = (n_fft, n_mels, fmin, fmax, sample_rate)
    if key not in _MEL_CACHE:

        def hz_to_mel(f: np.ndarray) -> np.ndarray:
            return 2595.0 * np.log10(1.0 + f / 700.0)

        def mel_to_hz(m: np.ndarray) -> np.ndarray:
            return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

        edges = mel_to_hz(np.linspace(hz_to_mel(np.array(fmin)), hz_to_mel(np.array(fmax)), n_mels + 2))
        freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
        lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        up = (freqs[None, :] - lo) / (mid - lo)
        down = (hi - freqs[None, :]) / (hi - mid)
        _MEL_CACHE[key] = np.maximum(0.0, np.minimum(up, down))
    return _MEL_CACHE[key]


def log_mel_distance(reference: np.ndarray, estimate: np.ndarray) -> Score:
    """Mean L1 distance of log10 mel magnitudes (parameters: :data:`MEL_PARAMS`)."""
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    if len(ref) == 0 or len(est) == 0:
        return NotApplicable("empty signal")
    p = MEL_PARAMS
    n_fft, hop = int(p["n_fft"]), int(p["hop"])
    fb = mel_filterbank(n_fft, int(p["n_mels"]), p["fmin"], p["fmax"])
    n = min(len(ref), len(est))
    mel_r = _stft_mag(ref[:n], n_fft, hop) @ fb.T
    mel_e = _stft_mag(est[:n], n_fft, hop) @ fb.T
    floor = p["floor"]
    return float(np.mean(np.abs(np.log10(np.maximum(mel_r, floor)) - np.log10(np.maximum(mel_e, floor)))))


def multi_resolution_stft_distance(
    reference: np.ndarray,
    estimate: np.ndarray,
    fft_sizes: Iterable[int] = MRSTFT_FFT_SIZES,
    eps: float = 1e-7,
) -> Score:
    """Mean over resolutions of spectral convergence + mean |ln|S_ref| - ln|S_est||| (0 = identical)."""
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    if len(ref) == 0 or len(est) == 0:
        return NotApplicable("empty signal")
    n = min(len(ref), len(est))
    terms = []
    for n_fft in fft_sizes:
        s_r = _stft_mag(ref[:n], n_fft, n_fft // 4)
        s_e = _stft_mag(est[:n], n_fft, n_fft // 4)
        sc = np.linalg.norm(s_r - s_e) / max(float(np.linalg.norm(s_r)), eps)
        log_mag = np.mean(np.abs(np.log(s_r + eps) - np.log(s_e + eps)))
        terms.append(sc + log_mag)
    return float(np.mean(terms))


# --- package-backed metrics ------------------------------------------------------------------


def loudness_difference_db(reference: np.ndarray, estimate: np.ndarray) -> Score:
    """BS.1770-4 integrated loudness of estimate minus reference (LU = dB), via pyloudnorm."""
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    short = _too_short(ref, LOUDNESS_MIN_SECONDS, "BS.1770 loudness") or _too_short(
        est, LOUDNESS_MIN_SECONDS, "BS.1770 loudness"
    )
    if short:
        return short
    try:
        import pyloudnorm
    except ImportError:
        return NotApplicable(f"pyloudnorm not installed; {_AUDIT_HINT}")
    meter = pyloudnorm.Meter(SAMPLE_RATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyloudnorm warns on clipping / all-gated input
        l_ref = meter.integrated_loudness(ref)
        l_est = meter.integrated_loudness(est)
    if not np.isfinite(l_ref):
        return NotApplicable("reference is silent (all blocks gated)")
    if not np.isfinite(l_est):
        return NotApplicable("estimate is silent (all blocks gated)")
    return float(l_est - l_ref)


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, domain: str = "speech") -> Score:
    """Wide-band PESQ (P.862.2) at 16 kHz; NotApplicable off speech or when PESQ finds no speech."""
    na = _only_speech(domain, "PESQ")
    if na:
        return na
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    short = (
        _too_short(ref, PESQ_MIN_SECONDS, "PESQ")
        or _too_short(est, PESQ_MIN_SECONDS, "PESQ")
        or _silent_reference(ref, "PESQ")
    )
    if short:
        return short
    try:
        import pesq as pesq_pkg
    except ImportError:
        return NotApplicable(f"pesq not installed; {_AUDIT_HINT}")
    try:
        return float(pesq_pkg.pesq(SAMPLE_RATE, ref, est, "wb"))
    except (pesq_pkg.NoUtterancesError, pesq_pkg.BufferTooShortError) as exc:
        return NotApplicable(f"PESQ: {type(exc).__name__}: {exc}")


def _stoi(reference: np.ndarray, estimate: np.ndarray, domain: str, extended: bool) -> Score:
    what = "ESTOI" if extended else "STOI"
    na = _only_speech(domain, what)
    if na:
        return na
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    if len(ref) != len(est):
        raise ValueError(f"{what} needs equal lengths (align first): {len(ref)} vs {len(est)}")
    short = _too_short(ref, STOI_MIN_SECONDS, what) or _silent_reference(ref, what)
    if short:
        return short
    try:
        from pystoi import stoi as pystoi_stoi
    except ImportError:
        return NotApplicable(f"pystoi not installed; {_AUDIT_HINT}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = pystoi_stoi(ref, est, SAMPLE_RATE, extended=extended)
    # pystoi returns a placeholder 1e-5 (with a RuntimeWarning) when too few frames remain after
    # dropping silence: that is "no measure", not "unintelligible".
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return NotApplicable(f"{what}: fewer than 30 non-silent frames")
    return float(value)


def stoi(reference: np.ndarray, estimate: np.ndarray, domain: str = "speech") -> Score:
    """Classic STOI (0..1) on equal-length 16 kHz speech."""
    return _stoi(reference, estimate, domain, extended=False)


def estoi(reference: np.ndarray, estimate: np.ndarray, domain: str = "speech") -> Score:
    """Extended STOI (Jensen & Taal 2016), robust to modulated noise; speech only."""
    return _stoi(reference, estimate, domain, extended=True)


_VISQOL_LOCK = threading.Lock()
_VISQOL_APIS: dict[str, Any] = {}
VISQOL_AUDIO_RATE = 48_000
VISQOL_MIN_SECONDS = 1.0


def _visqol_api(mode: str) -> Any:
    """One VisqolApi per mode per process: creation loads models and numba kernels (seconds)."""
    with _VISQOL_LOCK:
        api = _VISQOL_APIS.get(mode)
        if api is None:
            from visqol import VisqolApi

            api = VisqolApi()
            if mode == "speech":
                api.create(mode="speech", use_lattice_model=True)
            else:
                api.create(mode="audio")
            _VISQOL_APIS[mode] = api
        return api


def visqol(reference: np.ndarray, estimate: np.ndarray, domain: str = "speech") -> Score:
    """ViSQOL v3 MOS-LQO: speech mode at 16 kHz for speech, audio mode at 48 kHz otherwise."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    ref = _as_mono_f64(reference, "reference")
    est = _as_mono_f64(estimate, "estimate")
    short = (
        _too_short(ref, VISQOL_MIN_SECONDS, "ViSQOL")
        or _too_short(est, VISQOL_MIN_SECONDS, "ViSQOL")
        or _silent_reference(ref, "ViSQOL")
    )
    if short:
        return short
    try:
        import visqol as _visqol_pkg  # noqa: F401
    except ImportError:
        return NotApplicable(f"visqol-python not installed; {_AUDIT_HINT}")
    mode = "speech" if domain == "speech" else "audio"
    rate = SAMPLE_RATE
    if mode == "audio":
        import soxr

        ref = soxr.resample(ref, SAMPLE_RATE, VISQOL_AUDIO_RATE, quality="VHQ")
        est = soxr.resample(est, SAMPLE_RATE, VISQOL_AUDIO_RATE, quality="VHQ")
        rate = VISQOL_AUDIO_RATE
    api = _visqol_api(mode)
    with _VISQOL_LOCK:  # one shared instance per process; its thread safety is not documented
        result = api.measure_from_arrays(ref, est, sample_rate=rate)
    return float(result.moslqo)


# --- running them all ------------------------------------------------------------------------

MetricFn = Callable[[np.ndarray, np.ndarray, str], Score]

#: name -> fn(reference, estimate, domain); all take aligned, equal-length arrays.
METRICS: dict[str, MetricFn] = {
    "si_sdr": lambda r, e, d: si_sdr(r, e),
    "log_mel_distance": lambda r, e, d: log_mel_distance(r, e),
    "mrstft_distance": lambda r, e, d: multi_resolution_stft_distance(r, e),
    "loudness_diff_db": lambda r, e, d: loudness_difference_db(r, e),
    "pesq_wb": pesq_wb,
    "stoi": stoi,
    "estoi": estoi,
    "visqol": visqol,
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)
#: Direction of "better", for reports and monotonicity checks.
HIGHER_IS_BETTER: dict[str, bool] = {
    "si_sdr": True,
    "log_mel_distance": False,
    "mrstft_distance": False,
    "loudness_diff_db": False,
    "pesq_wb": True,
    "stoi": True,
    "estoi": True,
    "visqol": True,
}
#: Signed metrics whose best value is 0: "better" compares their magnitude (|x| lower is better).
ZERO_IS_BEST: frozenset[str] = frozenset({"loudness_diff_db"})


def goodness(metric: str, value: float) -> float:
    """`value` on a scale where larger is always better (for ranking and comparing)."""
    if metric in ZERO_IS_BEST:
        return -abs(value)
    return value if HIGHER_IS_BETTER[metric] else -value


def score_pair(
    reference: np.ndarray,
    estimate: np.ndarray,
    *,
    domain: str,
    metrics: Iterable[str] = DEFAULT_METRICS,
    max_lag_s: float = 0.1,
) -> dict[str, Score]:
    """Align, then run each metric in isolation: one failure becomes NotApplicable, others go on.

    A pair that cannot be scored at all (not mono, empty, NaN/inf samples) gives NotApplicable
    for every metric rather than an exception, so one bad item never stops an audit batch.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    names = list(metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(METRICS)}")
    ref, est = np.asarray(reference), np.asarray(estimate)
    problem = None
    for label, x in (("reference", ref), ("estimate", est)):
        if x.ndim != 1:
            problem = f"{label} is not 1-D mono (shape {x.shape})"
        elif x.size == 0:
            problem = f"{label} is empty"
        elif not np.all(np.isfinite(x)):
            problem = f"{label} has non-finite samples"
        if problem:
            return {n: NotApplicable(problem) for n in names}
    try:
        aligned = align(ref, est, max_lag_s=max_lag_s)
    except Exception as exc:  # isolation is the point
        return {n: NotApplicable(f"alignment failed: {type(exc).__name__}: {exc}") for n in names}
    out: dict[str, Score] = {}
    for name in names:
        try:
            value = METRICS[name](aligned.reference, aligned.estimate, domain)
            if not isinstance(value, NotApplicable) and not math.isfinite(value):
                value = NotApplicable(f"non-finite result {value}")
        except Exception as exc:  # a metric's bug must not lose the others
            value = NotApplicable(f"error: {type(exc).__name__}: {exc}")
        out[name] = value
    return out


def scores_to_json(scores: Mapping[str, Score]) -> dict[str, Any]:
    """JSON-able form: ``{"scores": {name: float | None}, "not_applicable": {name: reason}}``."""
    return {
        "scores": {k: (None if isinstance(v, NotApplicable) else float(v)) for k, v in scores.items()},
        "not_applicable": {k: v.reason for k, v in scores.items() if isinstance(v, NotApplicable)},
    }


def scores_from_json(data: Mapping[str, Any]) -> dict[str, Score]:
    """Inverse of :func:`scores_to_json`."""
    reasons = data.get("not_applicable", {})
    return {
        k: (NotApplicable(reasons.get(k, "not applicable")) if v is None else float(v))
        for k, v in data["scores"].items()
    }
