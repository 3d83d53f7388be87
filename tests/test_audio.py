"""Audio front end: loading, resampling, Whisper log-mel (SPEC 2).

Reference oracles: transformers' WhisperFeatureExtractor and mel_filter_bank (test-only), scipy's
resample_poly when scipy is installed. The log-mel comparison feeds both sides the SAME 16 kHz array, so
the resampler is tested on its own below.
"""

import functools
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
from tools import resample

FIXTURES = Path(__file__).parents[1] / "../shared/fixtures"
TOL = 1e-4  # max abs error allowed against the reference log-mel (values span about -1.5..+1.5)


def fixture(name):
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"fixture {name} not found in {FIXTURES.resolve()} (the ../shared folder is optional)")
    return path


def tone(f, sr, seconds=1.0, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)


def fit_tone(y, f, sr):
    # least-squares amplitude of a sinusoid at exactly f Hz over the interior (edges see zero padding),
    # and the rms of what is left: a wrong frequency or added distortion shows up in the residual
    n = len(y)
    t = np.arange(n) / sr
    s = slice(n // 8, n - n // 8)
    basis = np.stack([np.sin(2 * np.pi * f * t), np.cos(2 * np.pi * f * t)], 1)[s]
    coef, *_ = np.linalg.lstsq(basis, y[s].astype(np.float64), rcond=None)
    residual = y[s] - basis @ coef
    return float(np.hypot(*coef)), float(np.sqrt(np.mean(residual ** 2)))


@functools.lru_cache(maxsize=None)
def feature_extractor(n_mels):
    return pytest.importorskip("transformers").WhisperFeatureExtractor(feature_size=n_mels)


def reference_log_mel(audio, n_mels):
    return feature_extractor(n_mels)(audio, sampling_rate=16000, return_tensors="np").input_features[0]  # (n_mels, 3000)


# ---- mel filterbank and log-mel vs the reference ----

@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_reference(n_mels):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                                      max_frequency=8000.0, sampling_rate=16000, norm="slaney",
                                      mel_scale="slaney")  # (201, n_mels), float64
    got = data.mel_filters(n_mels)
    assert got.shape == (n_mels, 201) and got.dtype == torch.float32
    err = np.abs(got.numpy().T - ref).max()
    assert err < 1e-7 * ref.max() * 10, f"mel filterbank max abs error {err:.2e}"


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_reference_on_jfk(n_mels):
    audio = data.load_audio(fixture("jfk.flac"))
    got = data.log_mel_spectrogram(audio, n_mels)
    assert got.shape == (n_mels, data.N_FRAMES) and got.dtype == torch.float32
    ref = reference_log_mel(audio, n_mels)
    err = np.abs(got.numpy() - ref).max()
    print(f"jfk n_mels={n_mels}: max abs error vs WhisperFeatureExtractor {err:.2e}")
    assert err < TOL
    # the extractor's float64 numpy path (private API) differs from any float32 path by ~2e-5
    fe = feature_extractor(n_mels)
    if hasattr(fe, "_np_extract_fbank_features"):
        ref64 = fe._np_extract_fbank_features(data.pad_or_trim(audio.astype(np.float64))[None], "cpu")[0]
        err64 = np.abs(got.numpy() - ref64).max()
        print(f"jfk n_mels={n_mels}: max abs error vs float64 numpy path {err64:.2e}")
        assert err64 < TOL


@functools.lru_cache(maxsize=None)
def synthetic_signals():
    sr, rng = 16000, np.random.default_rng(0)
    t = np.arange(10 * sr) / sr
    chirp = 0.3 * np.sin(2 * np.pi * (50 * t + (7900 - 50) / (2 * 10) * t ** 2))  # 50 Hz -> 7.9 kHz
    return {
        "sines": (0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32),
        "noise": (0.05 * rng.standard_normal(7 * sr)).astype(np.float32),
        "chirp": chirp.astype(np.float32),
        "short": tone(1000, sr, seconds=0.3),  # mostly padding
        "silence": np.zeros(sr, dtype=np.float32),
    }


@pytest.mark.parametrize("name", list(synthetic_signals()))
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_reference_on_synthetic(name, n_mels):
    audio = synthetic_signals()[name]
    err = np.abs(data.log_mel_spectrogram(audio, n_mels).numpy() - reference_log_mel(audio, n_mels)).max()
    assert err < TOL, f"{name}: max abs error {err:.2e}"


def test_long_audio_is_cut_with_a_warning():
    audio = (0.1 * np.random.default_rng(1).standard_normal(31 * 16000 + 5)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"496005 samples \(31\.00 s\) cut to 480000"):
        got = data.log_mel_spectrogram(audio, 80)
    ref = reference_log_mel(audio, 80)  # the extractor truncates silently
    assert np.abs(got.numpy() - ref).max() < TOL
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly 30 s and shorter: no warning
        data.log_mel_spectrogram(audio[: data.N_SAMPLES], 80)


def test_batched_log_mel_is_per_example():
    loud = tone(440, 16000, 2.0, amp=0.9)
    quiet = np.zeros(2 * 16000, dtype=np.float32)
    quiet[:1600] = tone(3000, 16000, 0.1, amp=1e-4)  # peak far below the loud example's
    batch = np.stack([loud, quiet])                   # (2, 32000)
    for x in (batch, torch.from_numpy(batch)):
        got = data.log_mel_spectrogram(x, 80)
        assert got.shape == (2, 80, 3000)
        for i in range(2):
            single = data.log_mel_spectrogram(batch[i], 80)
            assert torch.allclose(got[i], single, atol=1e-5), "batched != single: max must be per example"
    # the test has teeth: with a batch-wide max the floor would be (loud peak - 8) = got[0].max() - 2 in
    # output units, above everything in the quiet example, which would come out constant
    assert got[1].max() < got[0].max() - 2.0
    assert got[1].max() - got[1].min() > 0.5


def test_pad_or_trim():
    x = np.ones((2, 10), dtype=np.float32)
    assert data.pad_or_trim(x, 16).shape == (2, 16) and data.pad_or_trim(x, 16)[:, 10:].sum() == 0
    assert data.pad_or_trim(torch.ones(10), 16).shape == (16,)
    with pytest.warns(UserWarning):
        assert data.pad_or_trim(x, 4).shape == (2, 4)


# ---- resampler ----

@pytest.mark.parametrize("sr,freqs", [(44100, [440, 3000, 6000]), (22050, [440, 3000, 6000]),
                                      (8000, [440, 1000, 3000])])
def test_resample_keeps_passband_tones(sr, freqs):
    for f in freqs:
        x = tone(f, sr, 0.5)
        y = resample.resample(x, sr, 16000)
        assert y.dtype == np.float32 and len(y) == math.ceil(len(x) * 16000 / sr)
        amp, residual = fit_tone(y, f, 16000)
        assert abs(amp - 0.5) < 1e-4 * 0.5, f"{sr}->16000 {f} Hz: amplitude {amp}"
        assert residual < 1e-4 * 0.5, f"{sr}->16000 {f} Hz: residual {residual} (wrong frequency?)"


@pytest.mark.parametrize("sr,f", [(44100, 12000), (44100, 8300), (22050, 9000), (48000, 10000)])
def test_resample_rejects_tones_above_new_nyquist(sr, f):
    y = resample.resample(tone(f, sr, 0.5), sr, 16000)
    rms = np.sqrt(np.mean(y[len(y) // 8: -len(y) // 8] ** 2))
    attenuation_db = -20 * np.log10(rms / (0.5 / np.sqrt(2)) + 1e-30)
    assert attenuation_db > 90, f"{f} Hz at {sr} Hz only {attenuation_db:.1f} dB down"


def test_resample_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    x = (tone(440, 44100) + tone(2500, 44100, amp=0.2)).astype(np.float32)
    y = resample.resample(x, 44100, 16000)
    ref = signal.resample_poly(x.astype(np.float64), 160, 441)  # scipy's Kaiser design (beta 5)
    assert y.shape == ref.shape
    inner = slice(200, -200)  # both pad the edges with zeros; compare away from them
    err = np.abs(y[inner] - ref[inner]).max()
    assert err < 2e-3, f"max abs difference from scipy {err:.2e}"


def test_resample_direct_path_matches_polyphase_and_handles_odd_ratios():
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    poly = resample.resample(x, 44100, 16000)
    direct = resample._resample_direct(torch.from_numpy(x)[None], 44100, 16000, len(poly))[0].numpy()
    assert np.abs(poly - direct).max() < 1e-5
    # gcd(16001, 16000) = 1: a 16000-phase bank would be too big, so this takes the direct path
    y = resample.resample(tone(1000, 16001, 0.25), 16001, 16000)
    amp, residual = fit_tone(y, 1000, 16000)
    assert abs(amp - 0.5) < 1e-4 and residual < 1e-4


def test_resample_torch_and_batches():
    x = torch.from_numpy(np.stack([tone(440, 22050, 0.2), tone(880, 22050, 0.2)]))  # (2, 4410)
    y = resample.resample(x, 22050, 16000)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3200)
    assert np.allclose(y[1].numpy(), resample.resample(x[1].numpy(), 22050, 16000), atol=1e-6)


# ---- loading files ----

def test_load_jfk_stereo_flac():
    audio = data.load_audio(fixture("jfk.flac"))
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == 176000  # 11.000 s at 16 kHz
    assert 0.05 < np.abs(audio).max() <= 1.0


def test_load_trumpet_ogg_vorbis():
    path = fixture("trumpet.ogg")
    info = sf.info(str(path))
    audio = data.load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == math.ceil(info.frames * 16000 / info.samplerate)
    assert np.sqrt(np.mean(audio ** 2)) > 1e-3


def test_load_averages_channels(tmp_path):
    left, right = tone(440, 16000, 0.5, 0.6), tone(1000, 16000, 0.5, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert np.allclose(data.load_audio(path), (left + right) / 2, atol=1e-7)


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(data.AudioError, match="nowhere.wav"):
        data.load_audio(tmp_path / "nowhere.wav")


def test_corrupt_file_error_names_it(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(data.AudioError, match="garbage.wav"):
        data.load_audio(path)


def test_empty_file_error_names_it(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros((0, 1), dtype=np.float32), 16000)
    with pytest.raises(data.AudioError, match=r"empty\.wav.*empty"):
        data.load_audio(path)


def test_non_finite_samples_error_names_it(tmp_path):
    path = tmp_path / "nan.wav"
    x = tone(440, 16000, 0.1)
    x[100] = np.nan
    sf.write(str(path), x, 16000, subtype="FLOAT")
    with pytest.raises(data.AudioError, match="nan.wav"):
        data.load_audio(path)
