"""The offline synthetic corpus: descriptions in the paper's schema, and audio that really has the
attributes its description claims (measured, not assumed)."""
import json

import numpy as np
import pytest
import soundfile as sf

import corpus.synthetic as C
import data

needs_espeak = pytest.mark.skipif(not C.espeak_available(),
                                  reason="eSpeak NG wheel `espeakng_loader` is not installed")


# ----------------------------------------------------------------------------- seed descriptions

def test_seed_description_speech_single_segment():
    seg = data.Segment(0.0, 3.2, "The train leaves at noon.",
                    {"Pitch": "High", "Gender": "Female", "Speaking rate": "Fast", "Accent": "British"})
    clip = {"Duration": 3.2, "SNR": 10, "Background": "White noise", "Volume": "Loud"}
    assert data.seed_description([seg], clip) == (
        "[00:00-00:03] The train leaves at noon. (Gender: Female, Accent: British, Speaking rate: Fast, "
        "Pitch: High, Volume: Loud, Background: White noise, SNR: 10 dB, Duration: 3s)")


def test_seed_description_sound_music_and_missing_values():
    assert data.seed_description([data.Segment(0, 5.0)], {"Sound": "Siren", "Duration": 5.0}) == \
        "[00:00-00:05] (Sound: Siren, Duration: 5s)"
    music = {"Duration": 7.6, "Tempo": 90, "Key": "A minor", "Music": "Plucked string arpeggio", "Volume": None}
    assert data.seed_description([{"start": 0, "end": 7.6}], music) == \
        "[00:00-00:08] (Music: Plucked string arpeggio, Key: A minor, Tempo: 90 bpm, Duration: 8s)"
    # nothing to say: no parentheses at all; empty values are left out
    assert data.seed_description([data.Segment(0, 2.0, "Hello there.")], {"Background": None, "SNR": ""}) == \
        "[00:00-00:02] Hello there."
    assert data.seed_description([data.Segment(61.4, 125.5)], {}) == "[01:01-02:06]"
    with pytest.raises(ValueError, match="Emotion"):
        data.seed_description([data.Segment(0, 1)], {"Emotion": "Happy"})
    with pytest.raises(ValueError):
        data.seed_description([data.Segment(3, 1)], {})


def test_seed_description_two_segments():
    segs = [data.Segment(0.3, 2.4, "Is this seat taken?", {"Gender": "Male", "Accent": "Scottish"}),
            data.Segment(2.9, 5.2, "No, I have not seen it.", {"Gender": "Female", "Accent": "American"})]
    clip = {"Speakers": 2, "Volume": "Quiet", "Duration": 5.6}
    assert data.seed_description(segs, clip) == (
        "[00:00-00:02] Is this seat taken? (Gender: Male, Accent: Scottish)\n"
        "[00:03-00:05] No, I have not seen it. (Gender: Female, Accent: American)\n"
        "[00:00-00:06] (Speakers: 2, Volume: Quiet, Duration: 6s)")


def test_sentences_and_splits():
    assert len(C.SENTENCES) >= 300 and len(set(C.SENTENCES)) == len(C.SENTENCES)
    assert all(3 <= len(s.split()) <= 12 for s in C.SENTENCES)
    assert not any(ch.isdigit() for s in C.SENTENCES for ch in s)   # transcription == what is spoken
    train, val, test = (set(C.split_sentences(k)) for k in ("train", "validation", "test"))
    assert train and val and test and not (train & test) and not (val & test) and not (train & val)
    assert set(C.split_voices("train")).isdisjoint(C.split_voices("test"))
    # every accent and every variant still occurs in training
    train_voices = C.split_voices("train")
    assert {a for a, _, _ in train_voices} == set(C.ACCENTS)
    assert {v for _, _, v in train_voices} == set(sum(C.VOICE_VARIANTS.values(), ()))


# ----------------------------------------------------------------------------- signal processing

def test_estimate_f0_on_known_signal():
    t = np.arange(16000) / 16000
    for f0 in (85.0, 130.0, 220.0, 310.0):
        x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
        assert abs(C.estimate_f0(x) / f0 - 1) < 0.01


def test_labelled_sound_frequencies():
    rng = np.random.default_rng(0)
    for label, expect in (("Pure tone (1000 Hz)", 1000.0), ("Electrical hum (60 Hz)", 60.0),
                          ("Electrical hum (50 Hz)", 50.0)):
        x = C.SOUNDS[label][1](rng, 2.0)
        spec = np.abs(np.fft.rfft(x))
        freqs = np.fft.rfftfreq(len(x), 1 / data.SAMPLE_RATE)
        assert abs(freqs[np.argmax(spec)] - expect) < 1.0, label
    # Karplus-Strong strings are tuned (fractional delay): within 10 cents
    for f in (110.0, 261.6, 440.0, 880.0):
        est = C.estimate_f0(C._karplus_strong(f, 0.5, rng)[:4000], fmax=1000)
        assert abs(1200 * np.log2(est / f)) < 10, f


def test_music_is_in_its_key_and_tempo():
    spec = {"instrument": "Sine wave", "texture": "arpeggio", "root": 9, "mode": "minor", "tempo": 120,
            "drums": False, "duration": 6.0, "seed": 1}
    x = C.render_music(spec)
    spec_mag = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / data.SAMPLE_RATE)
    keep = (freqs > 60) & (freqs < 2000)
    pc = np.round(12 * np.log2(freqs[keep] / 440.0)).astype(int) % 12 + 9   # pitch class, C = 0
    chroma = np.bincount(pc % 12, weights=spec_mag[keep], minlength=12)
    a_minor = {(9 + s) % 12 for s in C.SCALES["minor"]}
    assert chroma[list(a_minor)].sum() / chroma.sum() > 0.95
    assert np.argmax(chroma) == 9                                   # the tonic A is the strongest
    # tempo: eighth-note onsets every 0.25 s at 120 bpm
    hop = 160
    env = np.sqrt(np.convolve(x ** 2, np.ones(hop) / hop)[::hop])
    onset = np.maximum(np.diff(env), 0)
    ac = np.correlate(onset, onset, "full")[len(onset) - 1:]
    lag = 10 + np.argmax(ac[10:80])                                  # 0.1-0.8 s
    assert abs(lag * hop / data.SAMPLE_RATE - 0.25) < 0.011


# ----------------------------------------------------------------------------- eSpeak speech

@pytest.fixture(scope="module")
def tts():
    if not C.espeak_available():
        pytest.skip("eSpeak NG wheel `espeakng_loader` is not installed")
    return C.get_espeak()


@needs_espeak
def test_espeak_is_reproducible(tts):
    # the same call gives the same samples whatever was synthesized before it (the library alone
    # carries state across utterances: this failed before each utterance got its own fork)
    a_call = ("He drinks his tea without sugar.", "en-gb-scotland+f1", 220, 25)
    first = tts.synth(*a_call, seed=5)
    for other in (("The elevator is out of order today.", "en-us-nyc+m7", 120, 75),
                  ("Please close the window.", "en-us+f2", 165, 50)):
        tts.synth(*other, seed=9)
        assert np.array_equal(tts.synth(*a_call, seed=5), first)
    assert tts.sample_rate == 22050 and len(first) > 22050
    assert not np.array_equal(tts.synth(*a_call[:3], 75, seed=5)[:len(first)], first)


@needs_espeak
def test_pitch_gender_and_rate_are_real(tts):
    text = "Please close the window before you leave."
    f0 = {}
    for gender, variant in (("Male", "m3"), ("Female", "f3")):
        for pitch in C.PITCH_LEVELS:
            f0[gender, pitch] = C.estimate_f0(C.synthesize_speech(tts, text, "British", gender, variant, "Normal", pitch))
    for gender in ("Male", "Female"):
        assert f0[gender, "High"] > 1.1 * f0[gender, "Normal"] > 1.2 * f0[gender, "Low"]
    assert f0["Female", "Low"] > f0["Male", "High"]
    # every female variant is above every male variant at the same settings
    male = [C.estimate_f0(C.synthesize_speech(tts, text, "American", "Male", v)) for v in C.VOICE_VARIANTS["Male"]]
    female = [C.estimate_f0(C.synthesize_speech(tts, text, "American", "Female", v)) for v in C.VOICE_VARIANTS["Female"]]
    assert min(female) > 1.4 * max(male)
    lengths = [len(C.synthesize_speech(tts, text, "American", "Male", "m1", rate)) for rate in ("Slow", "Normal", "Fast")]
    assert lengths[0] > 1.15 * lengths[1] > 1.3 * lengths[2]


# ----------------------------------------------------------------------------- building the corpus

def _find_specs(seed, domain, want, limit=400):
    """Indices of the first specs that satisfy each predicate in `want` (so the tests cover them)."""
    found = []
    for pred in want:
        for i in range(limit):
            if i not in found and pred(C.SPEC_FNS[domain](seed, i)):
                found.append(i)
                break
        else:
            raise AssertionError("no spec found")
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not C.espeak_available():
        pytest.skip("eSpeak NG wheel `espeakng_loader` is not installed")
    root = tmp_path_factory.mktemp("corpus")
    manifest = C.build_corpus(root, n_speech=12, n_sound=5, n_music=4, seed=0, workers=2)
    rows = [json.loads(l) for l in manifest.read_text().splitlines()]
    return root, manifest, rows


@needs_espeak
def test_manifest_rows_and_audio(corpus):
    root, manifest, rows = corpus
    assert len(rows) == 21
    assert {r["dataset"] for r in rows} == {"tiny-speech", "tiny-sound", "tiny-music"}
    for r in rows:
        assert set(r) >= {"id", "dataset", "seed_description", "transcription", "split", "duration", "volume"}
        info = sf.info(str(root / r["id"]))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        assert r["duration"] >= 1.0
        x, _ = sf.read(str(root / r["id"]))
        assert abs(C.rms_dbfs(x) - C.VOLUME_LEVELS[r["volume"]]) < 1.0, r["id"]   # loudness label
        assert np.abs(x).max() <= C.PEAK_LIMIT + 1e-3                            # never clipped
        d = r["seed_description"]
        assert "()" not in d and "None" not in d and ": ," not in d
        assert f"Duration: {max(1, int(r['duration'] + 0.5))}s)" in d
        assert f"Volume: {r['volume']}" in d
        assert r["split"] in ("train", "validation", "test")
        if r["dataset"] == "tiny-speech":
            assert r["transcription"] == " ".join(s["text"] for s in r["segments"])
            for s in r["segments"]:
                assert s["text"] in d and f"Gender: {s['gender']}" in d and f"Accent: {s['accent']}" in d
        else:
            assert r["transcription"] == " "
    assert not list(root.rglob("*.tmp*"))


@needs_espeak
def test_snr_and_level_of_written_clips(tmp_path):
    # clips with each background type, then the noise part measured from the written file
    idx = _find_specs(0, "speech", [lambda s, b=b: s["background"] == b for b in C.BACKGROUNDS]
                      + [lambda s: len(s["speakers"]) == 2])
    tts = C.get_espeak()
    for i in idx:
        spec = C.speech_spec(0, i)
        audio, row = C.render_clip(spec, tts)
        data.write_wav_atomic(tmp_path / "x.wav", audio)
        x, sr = sf.read(str(tmp_path / "x.wav"))
        mix, clean, noise, info = C.render_speech(spec, tts)        # deterministic re-render
        assert sr == 16000 and np.abs(x - mix).max() <= 0.5 / 32768 + 1e-9
        if spec["background"]:
            assert abs(C.snr_db(clean, x - clean) - spec["snr_db"]) < 1.0, spec["background"]
            assert f"SNR: {spec['snr_db']} dB" in row["seed_description"]
        assert abs(C.rms_dbfs(x) - C.VOLUME_LEVELS[row["volume"]]) < 1.0
        if len(spec["speakers"]) == 2:
            a, b = row["segments"]
            assert a["end"] < b["start"] and row["seed_description"].count("\n") == 2
            # each segment's audio really is in its time span: silence in the gap
            gap = clean[int(a["end"] * 16000) + 10:int(b["start"] * 16000) - 10]
            assert np.abs(gap).max() == 0.0


@needs_espeak
def test_no_test_leakage(corpus):
    _, _, rows = corpus
    specs = [C.speech_spec(0, i) for i in range(300)]
    by_split = {k: [s for s in specs if s["split"] == k] for k in ("train", "validation", "test")}
    assert all(by_split.values())

    def sentences(ss):
        out = set()
        for s in ss:
            out |= {p["text"] for p in s["speakers"]} | {b["text"] for b in s["babble"] or []}
        return out

    def voices(ss):
        out = set()
        for s in ss:
            out |= {(p["accent"], p["gender"], p["variant"]) for p in s["speakers"]}
            out |= {tuple(b["voice"]) for b in s["babble"] or []}
        return out

    seen = by_split["train"] + by_split["validation"]
    assert not sentences(seen) & sentences(by_split["test"])
    assert not voices(seen) & voices(by_split["test"])
    # and in the built manifest
    train_text = {s["text"] for r in rows if r["split"] != "test" and r["dataset"] == "tiny-speech" for s in r["segments"]}
    test_text = {s["text"] for r in rows if r["split"] == "test" and r["dataset"] == "tiny-speech" for s in r["segments"]}
    assert not train_text & test_text


@needs_espeak
def test_rebuild_skips_existing_clips_and_is_deterministic(corpus, tmp_path, capsys):
    root, manifest, rows = corpus
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*.wav")}
    text = manifest.read_text()
    capsys.readouterr()
    C.build_corpus(root, n_speech=12, n_sound=5, n_music=4, seed=0, workers=2)
    assert "wrote 0 clip(s), skipped 21" in capsys.readouterr().out
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*.wav")} == before
    assert manifest.read_text() == text
    # a missing clip is rendered again, identically; the others stay untouched
    victim = root / rows[3]["id"]
    data = victim.read_bytes()
    victim.unlink()
    C.build_corpus(root, n_speech=12, n_sound=5, n_music=4, seed=0, workers=2)
    assert "wrote 1 clip(s), skipped 20" in capsys.readouterr().out
    assert victim.read_bytes() == data and manifest.read_text() == text
    # a different worker count and a fresh root give byte-identical clips and manifest
    other = C.build_corpus(tmp_path / "again", n_speech=12, n_sound=5, n_music=4, seed=0, workers=1)
    assert other.read_text() == text
    for r in rows:
        assert (tmp_path / "again" / r["id"]).read_bytes() == (root / r["id"]).read_bytes()


@needs_espeak
def test_resume_after_crash_from_partial_log(tmp_path, capsys):
    root = tmp_path / "c"
    manifest = C.build_corpus(root, n_speech=3, n_sound=2, n_music=2, seed=1, workers=1)
    text = manifest.read_text()
    lines = text.splitlines()
    # as if the build died before writing the manifest, in the middle of appending the last row
    manifest.unlink()
    (root / C.PARTIAL_NAME).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    capsys.readouterr()
    C.build_corpus(root, n_speech=3, n_sound=2, n_music=2, seed=1, workers=1)
    out = capsys.readouterr().out
    assert "skipped 1 malformed line" in out and "wrote 1 clip(s), skipped 6" in out
    assert manifest.read_text() == text and not (root / C.PARTIAL_NAME).exists()
    # another seed: different specs, so every clip is rendered again
    C.build_corpus(root, n_speech=3, n_sound=2, n_music=2, seed=2, workers=1)
    assert "wrote 7 clip(s), skipped 0" in capsys.readouterr().out
