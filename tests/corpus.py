"""Synthesize a nasty test corpus (no binary fixtures): every builder writes through a callback
``write(relative_name, data)`` so the same corpus can land in a local folder or in S3, and returns
a spec of every item with its expected outcome, so tests can check each is accounted for once.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

Write = Callable[[str, bytes], None]
OK = "ok"


@dataclass
class CorpusItem:
    """One expected input item. ``expected`` is "ok" or the error reason; ``stage`` says where."""

    item_id: str
    expected: str = OK
    stage: str | None = None  # "read" | "decode" for errors
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None  # source frames per channel
    fmt: str = ""
    tolerance_s: float = 0.0  # duration tolerance (lossy codecs add priming/padding)
    metadata: dict = field(default_factory=dict)  # expected metadata subset

    @property
    def duration_s(self) -> float | None:
        if self.frames is None or not self.sample_rate:
            return None
        return self.frames / self.sample_rate


@dataclass
class CorpusSpec:
    items: list[CorpusItem] = field(default_factory=list)
    skipped_formats: dict[str, str] = field(default_factory=dict)  # format -> why
    ignored: list[str] = field(default_factory=list)  # written but not input items
    lost: list[str] = field(default_factory=list)  # items covered by a "#truncated" error row

    def by_id(self) -> dict[str, CorpusItem]:
        out = {it.item_id: it for it in self.items}
        assert len(out) == len(self.items), "duplicate item ids in corpus spec"
        return out


# --- signals --------------------------------------------------------------------------------


def speech_like(seconds: float, sr: int, *, seed: int = 0, f0: float = 140.0) -> np.ndarray:
    """Harmonic voiced buzz with syllable-rate envelope and a little noise, peak 0.5."""
    rng = np.random.default_rng(seed)
    n = max(1, int(round(seconds * sr)))
    t = np.arange(n) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12) if k * f0 < sr / 2.2)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, np.pi)) ** 2
    x = x * env + 0.02 * rng.standard_normal(n)
    return (0.5 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)


def multichannel(seconds: float, sr: int, channels: int, *, seed: int = 0) -> np.ndarray:
    """[frames, channels]; channel c is a tone at 200*(c+1) Hz so channel policies differ."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    cols = [0.3 * np.sin(2 * np.pi * 200.0 * (c + 1) * t) for c in range(channels)]
    cols[0] = speech_like(seconds, sr, seed=seed)[:n]
    return np.stack(cols, axis=1).astype(np.float32)


def encode_sf(x: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def encode_av(x: np.ndarray, sr: int, container: str, codec: str) -> bytes:
    """Encode mono float audio with PyAV (FFmpeg), e.g. ("mp4", "aac") for .m4a."""
    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format=container)
    stream = out.add_stream(codec, rate=sr)
    stream.layout = "mono"
    frame_size = stream.codec_context.frame_size or 1024
    pts = 0
    for i in range(0, len(x), frame_size):
        chunk = np.ascontiguousarray(x[i : i + frame_size], dtype=np.float32)[None, :]
        fmt = stream.codec_context.format.name
        if fmt == "fltp" or fmt == "flt":
            frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
        else:
            pcm = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = sr
        frame.pts = pts
        pts += chunk.shape[1]
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return buf.getvalue()


def wav_bytes(x: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    return encode_sf(x, sr, "WAV", subtype)


# --- audio-file corpus ----------------------------------------------------------------------


def build_corpus(write: Write, *, seed: int = 0, long_seconds: float = 180, prefix: str = "") -> CorpusSpec:
    """Loose audio files: every format / rate / channel layout / bit depth plus broken files.

    Item ids are the written paths relative to ``prefix`` (how the "files" kind names items).
    """
    spec = CorpusSpec()

    def put(name: str, data: bytes, **kw: object) -> None:
        write(f"{prefix}/{name}" if prefix else name, data)
        spec.items.append(CorpusItem(item_id=name, **kw))  # type: ignore[arg-type]

    def put_pcm(name: str, x: np.ndarray, sr: int, subtype: str, fmt: str = "WAV") -> None:
        channels = 1 if x.ndim == 1 else x.shape[1]
        put(
            name,
            encode_sf(x, sr, fmt, subtype),
            sample_rate=sr,
            channels=channels,
            frames=x.shape[0],
            fmt=f"{fmt.lower()}-{subtype.lower()}",
        )

    # Sample rates x bit depths, mono.
    put_pcm("rates/sr8000_pcm16.wav", speech_like(1.3, 8000, seed=seed + 1), 8000, "PCM_16")
    put_pcm("rates/sr22050_pcm24.wav", speech_like(1.1, 22050, seed=seed + 2), 22050, "PCM_24")
    put_pcm("rates/sr44100_float.wav", speech_like(0.9, 44100, seed=seed + 3), 44100, "FLOAT")
    put_pcm("rates/sr48000_pcm16.wav", speech_like(1.0, 48000, seed=seed + 4), 48000, "PCM_16")
    put_pcm("rates/sr96000_pcm24.wav", speech_like(0.6, 96000, seed=seed + 5), 96000, "PCM_24")
    put_pcm("rates/sr16000_pcm32.wav", speech_like(1.0, 16000, seed=seed + 6), 16000, "PCM_32")
    # Channels.
    put_pcm("channels/stereo_48k.wav", multichannel(1.0, 48000, 2, seed=seed), 48000, "PCM_16")
    put_pcm("channels/six_ch_44k.wav", multichannel(0.7, 44100, 6, seed=seed), 44100, "PCM_16")
    put_pcm("channels/stereo_44k.flac", multichannel(1.2, 44100, 2, seed=seed), 44100, "PCM_16", "FLAC")
    # Compressed formats.
    put_pcm("formats/mono_24bit.flac", speech_like(1.0, 16000, seed=seed + 7), 16000, "PCM_24", "FLAC")
    lossy = [
        ("formats/vorbis.ogg", "OGG", "VORBIS", 44100, 0.02),
        ("formats/opus_clip.opus", "OGG", "OPUS", 48000, 0.03),
        ("formats/LOUD_UPPER.MP3", "MP3", "MPEG_LAYER_III", 44100, 0.06),
    ]
    for name, fmt, subtype, sr, tol in lossy:
        x = speech_like(1.5, sr, seed=seed + 8)
        try:
            data = encode_sf(x, sr, fmt, subtype)
        except Exception as exc:  # noqa: BLE001 - local libsndfile may lack the encoder
            spec.skipped_formats[f"{fmt}/{subtype}"] = repr(exc)
            continue
        put(
            name,
            data,
            sample_rate=sr,
            channels=1,
            frames=len(x),
            fmt=subtype.lower(),
            tolerance_s=tol,
        )
    for name, container, codec, sr in [
        ("formats/aac_clip.m4a", "mp4", "aac", 44100),
        ("formats/opus_clip.webm", "webm", "libopus", 48000),
    ]:
        x = speech_like(1.5, sr, seed=seed + 9)
        try:
            data = encode_av(x, sr, container, codec)
        except Exception as exc:  # noqa: BLE001 - FFmpeg build may lack the encoder
            spec.skipped_formats[f"{container}/{codec}"] = repr(exc)
            continue
        put(name, data, sample_rate=sr, channels=1, frames=len(x), fmt=codec, tolerance_s=0.06)
    # Durations.
    put_pcm("durations/very_short_0.05s.wav", speech_like(0.05, 16000, seed=seed), 16000, "PCM_16")
    put_pcm("durations/exact_10.24s.wav", speech_like(10.24, 16000, seed=seed), 16000, "PCM_16")
    put_pcm("durations/long.wav", speech_like(long_seconds, 16000, seed=seed), 16000, "PCM_16")
    # Names with spaces and non-ASCII.
    put_pcm("names/héllo wörld.wav", speech_like(0.5, 16000, seed=seed + 10), 16000, "PCM_16")
    put_pcm("names/日本語 clip.wav", speech_like(0.5, 24000, seed=seed + 11), 24000, "PCM_16")
    put_pcm("names/deep/nested dir/a b.flac", speech_like(0.5, 16000, seed=12), 16000, "PCM_16", "FLAC")
    # Broken inputs: they read fine, decoding must fail with a stable reason.
    rng = np.random.default_rng(seed)
    put("broken/empty.wav", b"", expected="empty_audio", stage="decode")
    put("broken/random_bytes.wav", rng.bytes(4096), expected="undecodable", stage="decode")
    full = wav_bytes(speech_like(0.5, 16000, seed=seed), 16000)
    put("broken/truncated_header.wav", full[:22], expected="undecodable", stage="decode")
    put(
        "broken/text_named.flac",
        b"this is not audio\n" * 20,
        expected="undecodable",
        stage="decode",
    )
    bad = speech_like(0.5, 16000, seed=seed)
    bad[100] = np.nan
    bad[200] = np.inf
    put(
        "broken/nan_inf_float.wav",
        wav_bytes(bad, 16000, "FLOAT"),
        expected="non_finite",
        stage="decode",
    )
    zero_frames = wav_bytes(np.zeros(0, dtype=np.float32), 16000)
    put("broken/zero_frames.wav", zero_frames, expected="empty_audio", stage="decode")
    # Not input items: wrong extension.
    for name in ("notes.txt", "rates/readme.md"):
        write(f"{prefix}/{name}" if prefix else name, b"not an audio file\n")
        spec.ignored.append(name)
    return spec


# --- WebDataset shards ----------------------------------------------------------------------


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes, type_: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.mtime = 1_700_000_000
    if type_ == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
        tf.addfile(info)
        return
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def unsafe_item_id(shard: str, name: str) -> str:
    """Documented id of an unsafe-member error row: <shard>/#unsafe-<sha256[:8]>/<sanitized>."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{shard}/#unsafe-{digest}/{'/'.join(parts) or '_'}"


def build_tar_shards(write: Write, *, seed: int = 0, prefix: str = "") -> CorpusSpec:
    """Shards with .wav/.flac + .json + .txt keys, malicious names, duplicates, a truncated tar."""
    spec = CorpusSpec()

    def name(n: str) -> str:
        return f"{prefix}/{n}" if prefix else n

    def clip(i: int, sr: int = 16000) -> bytes:
        return wav_bytes(speech_like(0.4 + 0.1 * i, sr, seed=seed + i), sr)

    # shard-000000: normal keys, invalid JSON, json-only key, a non-adjacent duplicate key.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(3):
            key = f"sample{i:04d}"
            _tar_add(tf, f"{key}.wav", clip(i))
            _tar_add(tf, f"{key}.json", json.dumps({"speaker": i, "lang": "en"}).encode())
            _tar_add(tf, f"{key}.txt", f"transcript {i}".encode())
            spec.items.append(
                CorpusItem(
                    f"shard-000000/{key}",
                    metadata={"json": {"speaker": i, "lang": "en"}, "txt": f"transcript {i}"},
                )
            )
        _tar_add(tf, "flackey.flac", encode_sf(speech_like(0.3, 16000), 16000, "FLAC", "PCM_16"))
        _tar_add(tf, "flackey.json", b"{not json")
        spec.items.append(CorpusItem("shard-000000/flackey", metadata={"json_raw": "{not json"}))
        _tar_add(tf, "metaonly.json", b"{}")
        _tar_add(tf, "metaonly.txt", b"no audio here")
        spec.items.append(CorpusItem("shard-000000/metaonly", "no_audio_member", "read"))
        _tar_add(tf, "sample0001.wav", clip(9))
        spec.items.append(CorpusItem("shard-000000/sample0001#dup1", "duplicate_key", "read"))
        _tar_add(tf, "twice.wav", clip(1))
        _tar_add(tf, "twice.wav", clip(2))
        spec.items.append(CorpusItem("shard-000000/twice#dup1", "duplicate_key", "read"))
        _tar_add(tf, "cls/utt.b.wav", clip(3))
        _tar_add(tf, "cls/utt.b.cls", b"7")
        spec.items.append(CorpusItem("shard-000000/cls/utt", metadata={"b.cls": "7"}))
    write(name("shard-000000.tar"), buf.getvalue())

    # shard-000001: path traversal, absolute names, symlinks; one normal key in a sub folder.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for evil in (
            "../x.wav",
            "/abs.wav",
            "a/../../etc/passwd.wav",
            "../x.json",
            "ok/../../y.txt",
        ):
            _tar_add(tf, evil, clip(0))
            spec.items.append(CorpusItem(unsafe_item_id("shard-000001", evil), "unsafe_member_name", "read"))
        _tar_add(tf, "link.wav", b"", tarfile.SYMTYPE)
        spec.items.append(
            CorpusItem(unsafe_item_id("shard-000001", "link.wav"), "unsafe_member_name", "read")
        )
        _tar_add(tf, "spk1/utt1.wav", clip(4))
        _tar_add(tf, "spk1/utt1.txt", "héllo".encode())
        spec.items.append(CorpusItem("shard-000001/spk1/utt1", metadata={"txt": "héllo"}))
        _tar_add(tf, "./dotslash.wav", clip(5))
        spec.items.append(CorpusItem("shard-000001/dotslash"))
    write(name("shard-000001.tar"), buf.getvalue())

    # sub/shard-000002.tar.gz: gzip-compressed shard in a sub folder (ids keep the .tar.gz suffix).
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(2):
            _tar_add(tf, f"gz{i}.wav", clip(i))
            spec.items.append(CorpusItem(f"sub/shard-000002.tar.gz/gz{i}"))
    write(name("sub/shard-000002.tar.gz"), buf.getvalue())

    # shard-000003: truncated inside the audio data of the third key.
    buf = io.BytesIO()
    cut = 0
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(4):
            if i == 2:
                cut = tf.offset + 512 + 100  # header block + 100 bytes of data
            _tar_add(tf, f"t{i}.wav", clip(i))
            _tar_add(tf, f"t{i}.txt", b"x")
    data = buf.getvalue()[:cut]
    write(name("shard-000003.tar"), data)
    spec.items += [CorpusItem("shard-000003/t0"), CorpusItem("shard-000003/t1")]
    spec.items.append(CorpusItem("shard-000003/#truncated", "truncated_tar", "read"))
    spec.lost += ["shard-000003/t2", "shard-000003/t3"]

    # shard-000004: not a tar at all.
    write(name("shard-000004.tar"), b"garbage" * 100)
    spec.items.append(CorpusItem("shard-000004/#truncated", "truncated_tar", "read"))
    write(name("readme.txt"), b"not a shard")
    spec.ignored.append("readme.txt")
    return spec


# --- parquet --------------------------------------------------------------------------------


def build_parquet_files(write: Write, *, seed: int = 0, prefix: str = "") -> CorpusSpec:
    """HF-datasets-style parquet: audio struct {bytes, path} + other columns, bad rows included."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = CorpusSpec()

    def name(n: str) -> str:
        return f"{prefix}/{n}" if prefix else n

    audio_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = []
    for i in range(7):
        sr = (16000, 22050, 44100)[i % 3]
        x = speech_like(0.5, sr, seed=seed + i)
        audio: dict | None = {"bytes": wav_bytes(x, sr), "path": f"clip{i}.wav"}
        exp, stage = OK, None
        frames: int | None = len(x)
        if i == 4:
            audio = {"bytes": b"definitely not audio", "path": "bad.wav"}
            exp, stage, frames = "undecodable", "decode", None
        if i == 5:
            audio = None
            exp, stage, frames = "null_audio", "read", None
        if i == 6:
            audio = {"bytes": None, "path": "external.wav"}
            exp, stage, frames = "null_audio", "read", None
        score = float("nan") if i == 2 else i / 10
        rows.append(
            {
                "audio": audio,
                "text": f"utt {i}",
                "speaker": i % 2,
                "score": score,
                "blob": b"\x00\x01",
            }
        )
        meta = {"text": f"utt {i}", "speaker": i % 2}
        spec.items.append(
            CorpusItem(
                f"part-00000/{i}",
                exp,
                stage,
                sample_rate=sr,
                channels=1,
                frames=frames,
                fmt="parquet-wav",
                metadata=meta,
            )
        )
    table = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [
                ("audio", audio_type),
                ("text", pa.string()),
                ("speaker", pa.int64()),
                ("score", pa.float64()),
                ("blob", pa.binary()),
            ]
        ),
    )
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=3)
    write(name("part-00000.parquet"), buf.getvalue())

    # A second file with a unique `id` column and a differently named audio column.
    rows2 = []
    for uid in ("utt-a", "utt-b"):
        x = speech_like(0.3, 16000, seed=seed + len(rows2))
        rows2.append({"id": uid, "recording": {"bytes": wav_bytes(x, 16000), "path": None}})
        spec.items.append(
            CorpusItem(
                f"sub/part-00001/{uid}",
                sample_rate=16000,
                channels=1,
                frames=len(x),
                metadata={"id": uid},
            )
        )
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows2), buf)
    write(name("sub/part-00001.parquet"), buf.getvalue())
    return spec


# --- manifests ------------------------------------------------------------------------------


def build_manifest(write: Write, *, seed: int = 0, prefix: str = "") -> tuple[CorpusSpec, CorpusSpec]:
    """A JSONL manifest (with ids) and a CSV manifest (row ids) over the same audio folder.

    Returns (jsonl spec, csv spec); manifests live at <prefix>/manifest.jsonl and .csv.
    """

    def name(n: str) -> str:
        return f"{prefix}/{n}" if prefix else n

    clips = {"audio/a.wav": 16000, "audio/b.flac": 44100, "audio/c d.wav": 8000}
    frames = {}
    for rel, sr in clips.items():
        x = speech_like(0.4, sr, seed=seed + sr)
        fmt = "FLAC" if rel.endswith(".flac") else "WAV"
        write(name(rel), encode_sf(x, sr, fmt, "PCM_16"))
        frames[rel] = (len(x), sr)

    def ok_item(item_id: str, rel: str, meta: dict) -> CorpusItem:
        n, sr = frames[rel]
        return CorpusItem(item_id, sample_rate=sr, channels=1, frames=n, metadata=meta)

    jsonl = CorpusSpec()
    lines = [
        json.dumps({"id": "m1", "audio": "audio/a.wav", "text": "first"}),
        json.dumps({"id": "m2", "audio": "audio/b.flac", "speaker": 3}),
        json.dumps({"id": "m3", "audio": "audio/missing.wav"}),
        json.dumps({"id": "m4", "text": "no uri"}),
        "{this is not json",
        "",
        json.dumps({"id": "m5", "audio": "./audio/c d.wav", "lang": "日本語"}),
    ]
    jsonl.items += [
        ok_item("m1", "audio/a.wav", {"id": "m1", "text": "first"}),
        ok_item("m2", "audio/b.flac", {"speaker": 3}),
        CorpusItem("m3", "unreadable_object", "read"),
        CorpusItem("m4", "bad_manifest_row", "read"),
        CorpusItem("manifest/4", "bad_manifest_row", "read"),  # blank lines are not rows
        ok_item("m5", "audio/c d.wav", {"lang": "日本語"}),
    ]
    write(name("manifest.jsonl"), ("\n".join(lines) + "\n").encode())

    csv_spec = CorpusSpec()
    csv_text = (
        "audio_filepath,text\n"
        "audio/a.wav,hello\n"
        "audio/missing.flac,gone\n"
        ",empty uri\n"
        '"audio/c d.wav","with, comma"\n'
    )
    csv_spec.items += [
        ok_item("manifest/0", "audio/a.wav", {"text": "hello"}),
        CorpusItem("manifest/1", "unreadable_object", "read"),
        CorpusItem("manifest/2", "bad_manifest_row", "read"),
        ok_item("manifest/3", "audio/c d.wav", {"text": "with, comma"}),
    ]
    write(name("manifest.csv"), csv_text.encode())
    return jsonl, csv_spec
