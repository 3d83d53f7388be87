"""Silero VAD reimplementation (asr/vad.py's SileroVAD) vs the silero-vad wheel's own TorchScript model.

Needs the silero-vad wheel (weights + reference) and, for the real-audio checks, ../shared/fixtures.
"""
import importlib.util
import os
import pickle
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from conftest import FIXTURES
from asr.vad import (SILERO_JIT_FILE, SILERO_SAFETENSORS_FILE, SILERO_VAD_VERSION, VAD_WINDOW, SileroVAD,
                     segments_from_probs, silero_data_file, silero_wheel_version)

SR = 16000
MAX_ABS_ERR = 1e-4

if importlib.util.find_spec("silero_vad") is None:
    pytest.skip("silero-vad wheel not installed (`pip install silero-vad`)", allow_module_level=True)


def load_fixture_16k(name: str) -> np.ndarray:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {path} absent (needs the ../shared/fixtures folder)")
    return data.load_audio(path)


def white_noise(seconds: float, rms: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * rms).astype(np.float32)


def pink_noise(seconds: float, rms: float, seed: int) -> np.ndarray:
    # 1/f power: shape white noise's spectrum by 1/sqrt(f)
    n = int(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x * rms / x.std()).astype(np.float32)


@pytest.fixture(scope="module")
def vad():
    return SileroVAD.from_pretrained()


@pytest.fixture(scope="module", params=[SILERO_JIT_FILE, SILERO_SAFETENSORS_FILE])
def any_vad(request):
    return SileroVAD.from_pretrained(silero_data_file(request.param))


@pytest.fixture(scope="module")
def reference():
    with warnings.catch_warnings():  # torch.jit.load is deprecated in torch 2.13; fine for a test reference
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(silero_data_file(SILERO_JIT_FILE), map_location="cpu")


def reference_probs(jit, audio: np.ndarray) -> torch.Tensor:
    """silero's own stateful per-chunk API, zero-padding the last chunk as get_speech_timestamps does."""
    x = torch.from_numpy(audio)
    x = torch.nn.functional.pad(x, (0, (-len(x)) % VAD_WINDOW))
    jit.reset_states()
    with torch.no_grad():
        return torch.cat([jit(x[i:i + VAD_WINDOW], SR) for i in range(0, len(x), VAD_WINDOW)]).flatten()


@pytest.mark.parametrize("clip", ["jfk", "white_noise"])
def test_probs_match_silero_jit(vad, reference, clip):
    audio = load_fixture_16k("jfk.flac") if clip == "jfk" else white_noise(3.0, 0.1, seed=0)
    ours = vad.speech_probs(audio)
    ref = reference_probs(reference, audio)
    assert ours.shape == ref.shape == (int(np.ceil(len(audio) / VAD_WINDOW)),)
    err = (ours - ref).abs().max().item()
    print(f"{clip}: {len(ref)} windows, max abs err vs silero JIT {err:.2e}")
    assert err <= MAX_ABS_ERR


def test_batched_equals_per_clip(vad):
    a, b = white_noise(2.0, 0.05, seed=1), load_fixture_16k("jfk.flac")[:2 * SR]
    batched = vad.speech_probs(torch.from_numpy(np.stack([a, b])))
    assert batched.shape == (2, int(np.ceil(2 * SR / VAD_WINDOW)))
    assert (batched[0] - vad.speech_probs(a)).abs().max() <= 1e-5
    assert (batched[1] - vad.speech_probs(b)).abs().max() <= 1e-5


def test_state_is_carried_across_windows(vad):
    # the LSTM state matters: a window after speech scores differently from the same window after silence
    jfk = load_fixture_16k("jfk.flac")
    tail = jfk[SR:SR + 4 * VAD_WINDOW]
    after_speech = vad.speech_probs(np.concatenate([jfk[:SR], tail]))[-4:]
    after_silence = vad.speech_probs(np.concatenate([np.zeros(SR, np.float32), tail]))[-4:]
    assert (after_speech - after_silence).abs().max() > 1e-3


def test_finds_speech_in_jfk(any_vad):
    jfk = load_fixture_16k("jfk.flac")
    probs = any_vad.speech_probs(jfk)
    frac = (probs >= 0.5).float().mean().item()
    segs = any_vad.speech_segments(jfk)
    print(f"jfk: {frac:.3f} of windows >= 0.5, segments {segs}")
    assert any_vad.has_speech(jfk)
    assert 0.5 < frac < 0.9  # 11 s clip with pauses between phrases
    assert len(segs) >= 2 and all(0 <= s < e <= len(jfk) / SR for s, e in segs)


@pytest.mark.parametrize("clip", ["trumpet", "silence", "white_noise", "pink_noise"])
def test_no_speech(any_vad, clip):
    audio = {
        "trumpet": lambda: load_fixture_16k("trumpet.ogg"),
        "silence": lambda: np.zeros(5 * SR, np.float32),
        "white_noise": lambda: white_noise(5.0, 0.05, seed=2),   # -26 dBFS rms
        "pink_noise": lambda: pink_noise(5.0, 0.05, seed=3),
    }[clip]()
    probs = any_vad.speech_probs(audio)
    print(f"{clip}: max prob {probs.max().item():.4f}")
    assert not any_vad.has_speech(audio)
    assert any_vad.speech_segments(audio) == []


def test_segments_match_silero_postprocessing(vad, reference):
    """segments_from_probs == silero's get_speech_timestamps_from_probs (default max_speech = inf)."""
    n_threads = torch.get_num_threads()
    try:
        from silero_vad.utils_vad import get_speech_timestamps_from_probs  # its package import sets 1 thread
    finally:
        torch.set_num_threads(n_threads)
    cases = []
    jfk = load_fixture_16k("jfk.flac")
    cases.append((reference_probs(reference, jfk).tolist(), len(jfk)))
    rng = np.random.default_rng(4)
    for _ in range(30):  # random runs of low / in-between (hysteresis band) / high probabilities
        runs = [np.full(rng.integers(1, 12), rng.choice([0.1, 0.42, 0.8])) for _ in range(rng.integers(1, 25))]
        p = np.concatenate(runs)
        cases.append((p.tolist(), len(p) * VAD_WINDOW - int(rng.integers(0, VAD_WINDOW))))
    for probs, n in cases:
        for thr, min_speech, min_sil, pad in [(0.5, 250, 100, 30), (0.3, 100, 300, 200)]:
            want = get_speech_timestamps_from_probs(probs, sampling_rate=SR, threshold=thr,
                                                    min_speech_duration_ms=min_speech,
                                                    min_silence_duration_ms=min_sil, speech_pad_ms=pad,
                                                    audio_length_samples=n)
            got = segments_from_probs(probs, n, thr, min_speech, min_sil, pad)
            assert got == [(d["start"], d["end"]) for d in want]


def test_bad_inputs(vad, tmp_path):
    with pytest.raises(TypeError, match="float"):
        vad.speech_probs(np.zeros(1000, np.int16))
    with pytest.raises(ValueError, match="shape"):
        vad.speech_probs(np.zeros((1, 2, 1000), np.float32))
    with pytest.raises(ValueError, match="one mono clip"):
        vad.speech_segments(np.zeros((2, 1000), np.float32))
    assert vad.speech_probs(np.zeros(0, np.float32)).shape == (0,)
    assert not vad.has_speech(np.zeros(0, np.float32))

    from safetensors.torch import load_file, save_file
    tensors = load_file(silero_data_file(SILERO_SAFETENSORS_FILE))
    missing = {k: v for k, v in tensors.items() if k != "conv2.bias"}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(KeyError, match="conv2.bias"):
        SileroVAD.from_pretrained(str(tmp_path / "missing.safetensors"))
    bad = dict(tensors, **{"lstm_cell.weight_hh": torch.zeros(512, 64)})
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="lstm_cell.weight_hh"):
        SileroVAD.from_pretrained(str(tmp_path / "bad.safetensors"))
    with pytest.raises(FileNotFoundError, match="nope.jit"):
        SileroVAD.from_pretrained(str(tmp_path / "nope.jit"))


def test_jit_reader_rejects_foreign_pickles(tmp_path):
    # the TorchScript weight reader must not execute arbitrary globals from a crafted archive
    evil = tmp_path / "evil.jit"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("m/data.pkl", pickle.dumps(os.system))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        SileroVAD.from_pretrained(str(evil))
    not_zip = tmp_path / "plain.jit"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="plain.jit"):
        SileroVAD.from_pretrained(str(not_zip))


def test_weights_version_is_pinned_and_recorded(vad):
    """The weights come from one silero-vad release (they change between releases), pinned in
    requirements-models.txt and recorded as the VAD's source, which outputs carry."""
    root = Path(__file__).resolve().parents[1]
    assert f"silero-vad=={SILERO_VAD_VERSION}" in (root / "requirements-models.txt").read_text()
    assert silero_wheel_version() == SILERO_VAD_VERSION
    assert vad.source == f"silero-vad {SILERO_VAD_VERSION} {SILERO_JIT_FILE}"
    path = silero_data_file(SILERO_SAFETENSORS_FILE)
    assert SileroVAD.from_pretrained(path).source == path  # an explicit file is recorded as given
