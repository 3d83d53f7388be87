"""Cached encoder features (data.FeatureCache), the cropped encoder input of the tiny preset, and the
run-time precision choice: the cache gives exactly what the encoder gives, a stale or broken entry is
recomputed, a second build does nothing, and training from the cache equals training from audio."""
import os

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import desta
from tests.test_desta import conversation, make_model
from tools import cli

transformers = pytest.importorskip("transformers")


def write_clips(root, seconds=(1.0, 2.5, 4.2)):
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    ids = []
    for i, s in enumerate(seconds):
        x = 0.1 * rng.standard_normal(int(16000 * s)).astype(np.float32)
        sf.write(root / "audio" / f"{i}.wav", x, 16000)
        ids.append(f"audio/{i}.wav")
    return ids


def mels(root, ids):
    return torch.stack([data.log_mel_spectrogram(data.pad_or_trim(data.load_audio(root / i)), 80) for i in ids])


def test_cropped_encoder_is_per_clip_and_matches_a_hand_crop(random_backbones, tmp_path):
    model = make_model(random_backbones, crop_encoder_input=True, mask_audio_padding=True, target_layer_ids=[1, 3])
    ids = write_clips(tmp_path)
    mel = mels(tmp_path, ids)
    feats = model.encoder_features(mel)
    n = feats.frame_mask.sum(1).tolist()
    assert n == [51, 126, 211]                   # 20 ms encoder frames of each clip (centred STFT: one more)
    assert feats.taps[0].shape[1] == 250                       # the longest, rounded up to a whole second
    for j in range(3):  # alone == batched, and equal to the encoder run by hand on the cropped mel
        alone = model.encoder_features(mel[j:j + 1])
        crop = int(desta.encoder_crop_lengths(alone.frame_mask)[0])
        _, hand = model.whisper(mel[j:j + 1, :, :2 * crop], taps=[1, 3], cropped=True)
        for t_b, t_a, t_h in zip(feats.taps, alone.taps, hand):
            assert torch.equal(t_b[j, :n[j]], t_a[0, :n[j]])
            assert torch.equal(t_a[0, :n[j]], t_h[0, :n[j]])
    with pytest.raises(ValueError, match="pad or cut audio"):
        model.whisper(mel[:, :, :2000])                        # a short mel is only accepted when asked for


def test_feature_cache_round_trip_stale_corrupt_and_resume(random_backbones, tmp_path):
    model = make_model(random_backbones, crop_encoder_input=True, mask_audio_padding=True, target_layer_ids=[1, 3])
    ids = write_clips(tmp_path)
    cache = data.FeatureCache(tmp_path / "features", tmp_path, random_backbones / "whisper", [1, 3], True, True)
    logs = []
    stats = cache.build(model.whisper, ids + ids[:1], log=logs.append)   # duplicates computed once
    assert stats == {"clips": 3, "cached": 0, "computed": 3, "unreadable": 0}
    feats = model.encoder_features(mels(tmp_path, ids))
    for j, c in enumerate(ids):
        n = int(feats.frame_mask[j].sum())
        got = cache.get(c)
        assert [t.shape for t in got] == [(n, 32)] * 2
        assert all(torch.equal(g, t[j, :n]) for g, t in zip(got, feats.taps))   # bit-exact
    assert cache.build(model.whisper, ids, log=logs.append)["computed"] == 0    # a second run does nothing
    # a changed audio file is stale, a truncated entry is corrupt, a leftover .tmp is ignored
    sf.write(tmp_path / ids[0], np.zeros(8000, np.float32), 16000)
    cache.path(ids[1]).write_bytes(cache.path(ids[1]).read_bytes()[:100])
    assert cache.check(ids[0]).startswith("stale") and cache.check(ids[1]).startswith("corrupt")
    with pytest.raises(data.AudioError, match="cached features unreadable"):
        cache.get(ids[1])
    stats = cache.build(model.whisper, ids, log=logs.append)
    assert stats["computed"] == 2 and cache.check(ids[0]) is None and cache.check(ids[1]) is None
    summary = [line for line in logs if "to compute" in line][-1]
    assert "'stale': 1" in summary and "'corrupt': 1" in summary
    # another encoder or other taps: another folder, never a mixed cache
    other = data.FeatureCache(tmp_path / "features", tmp_path, random_backbones / "whisper", [0, 3], True, True)
    assert other.folder != cache.folder and other.check(ids[2]) == "missing"
    # taps Whisper computed in bf16 are another cache too, and an fp32 encoder cannot fill it
    bf16 = data.FeatureCache(tmp_path / "features", tmp_path, random_backbones / "whisper", [1, 3], True, True, torch.bfloat16)
    assert bf16.folder.name.endswith("-bfloat16") and bf16.check(ids[2]) == "missing"
    with pytest.raises(ValueError, match="bfloat16 taps cannot be built by a float32 encoder"):
        bf16.build(model.whisper, ids, log=logs.append)
    # unreadable audio is counted, not fatal, and an old entry of a clip now unreadable is dropped
    (tmp_path / "audio" / "bad.wav").write_bytes(b"not a wav")
    assert cache.build(model.whisper, ["audio/bad.wav"], log=logs.append)["unreadable"] == 1
    (tmp_path / ids[2]).write_bytes(b"not a wav either")
    assert cache.build(model.whisper, [ids[2]], log=logs.append)["unreadable"] == 1
    assert not cache.path(ids[2]).exists()


def test_training_loss_from_cache_equals_loss_from_audio(random_backbones, tmp_path):
    for crop in (False, True):
        model = make_model(random_backbones, crop_encoder_input=crop, mask_audio_padding=True, target_layer_ids=[1, 3])
        ids = write_clips(tmp_path)
        cache = data.FeatureCache(tmp_path / "features", tmp_path, random_backbones / "whisper", [1, 3], True, crop)
        cache.build(model.whisper, ids, log=lambda *a: None)
        rows = [{"id": c, "messages": [*conversation("Hi")[:1], dict(conversation("Hi")[1], audios=[{"audio": c, "text": " "}])],
                 "response": "A sound."} for c in ids]
        from_audio = data.collate([data.AudioTextDataset(rows, tmp_path, 80)[i] for i in range(3)])
        from_cache = data.collate([data.AudioTextDataset(rows, tmp_path, 80, cache)[i] for i in range(3)])
        assert from_audio["audio"] is None and from_cache["mel"] is None
        b = model.build_batch([r["messages"] for r in rows], [[" "]] * 3, [r["response"] for r in rows])
        with torch.no_grad():
            a, c = model(from_audio["mel"], b), model(from_cache["audio"], b)
        assert torch.allclose(a, c, atol=1e-6, rtol=0), (crop, a.item(), c.item())


def test_pick_dtype(monkeypatch):
    assert cli.pick_dtype("cpu", "bf16") == (torch.bfloat16, "requested")
    assert cli.pick_dtype("cuda:0")[0] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'half'"):
        cli.pick_dtype("cpu", "half")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert cli.pick_dtype("cpu") == (torch.float32, "CPU has AVX2, no bf16 matmul instructions")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    for speedup, want in ((6.0, torch.bfloat16), (0.7, torch.float32)):  # decided by the measurement
        monkeypatch.setattr(cli, "bf16_matmul_speedup", lambda: speedup)
        dtype, why = cli.pick_dtype("cpu")
        assert dtype == want and f"{speedup:.2f}x" in why
