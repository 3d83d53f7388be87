"""Recipes for real corpora: each parser on a tiny fixture in that corpus's exact layout and metadata
format (real wav/flac files written here), the downloader against a local HTTP server, safe archive
unpacking, and the DeSTA-AQA5M row loader."""
import dataclasses
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

import corpus.recipes as R
import data
from tools import hub


# ---- fixtures: audio and corpora in their real layouts ----

def tone(seconds, sr, freq=440.0):
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_audio(path, seconds, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sr), sr, subtype="PCM_16")  # wav or flac from the extension
    return path


def make_esc50(corpus):
    base = corpus / "ESC-50-master"
    write_audio(base / "audio" / "1-100032-A-0.wav", 5.0, 44100)
    write_audio(base / "audio" / "5-200000-A-30.wav", 2.6, 44100)
    (base / "meta").mkdir(parents=True)
    (base / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "5-200000-A-30.wav,5,30,door_wood_knock,False,200000,A\n")


ESC50_ROWS = [
    {"id": "esc50/ESC-50-master/audio/1-100032-A-0.wav", "dataset": "ESC-50",
     "seed_description": "[00:00-00:05] (Audio category: dog, Duration: 5.0)", "transcription": " ",
     "split": "train", "duration": 5.0, "sample_rate": 44100,
     "fold": 1, "target": 0, "category": "dog", "esc10": True, "src_file": "100032", "take": "A"},
    {"id": "esc50/ESC-50-master/audio/5-200000-A-30.wav", "dataset": "ESC-50",
     "seed_description": "[00:00-00:03] (Audio category: door_wood_knock, Duration: 2.6)", "transcription": " ",
     "split": "test", "duration": 2.6, "sample_rate": 44100,
     "fold": 5, "target": 30, "category": "door_wood_knock", "esc10": False, "src_file": "200000", "take": "A"},
]


def make_librispeech(corpus):
    base = corpus / "LibriSpeech"
    base.mkdir(parents=True)
    (base / "SPEAKERS.TXT").write_text(
        "; Some pipe(|) separated metadata about all LibriVox readers, whose work was used\n"
        "; in the corpus.\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
        "60   | M | train-clean-100  | 20.18 | |CBW|Simon\n"
        "84   | F | dev-clean        |  8.02 | Christie Nowak\n"
        "174  | M | dev-clean        |  8.04 | Peter Eastman\n")
    chap = base / "dev-clean" / "84" / "121123"
    write_audio(chap / "84-121123-0000.flac", 1.6)
    write_audio(chap / "84-121123-0001.flac", 4.4)
    (chap / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n"
        "84-121123-0001 BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED\n")
    chap = base / "dev-clean" / "174" / "50561"
    write_audio(chap / "174-50561-0000.flac", 2.5)
    (chap / "174-50561.trans.txt").write_text("174-50561-0000 I WONDER IF I'M RIGHT\n")


LIBRISPEECH_ROWS = [
    {"id": "librispeech/LibriSpeech/dev-clean/174/50561/174-50561-0000.flac", "dataset": "LibriSpeech",
     "seed_description": "[00:00-00:03] I wonder if I'm right (Gender: Male, Duration: 3s)",
     "transcription": "I wonder if I'm right", "split": "validation", "duration": 2.5, "sample_rate": 16000,
     "speaker_id": "174", "chapter_id": "50561", "gender": "M", "subset": "dev-clean",
     "text": "I WONDER IF I'M RIGHT"},
    {"id": "librispeech/LibriSpeech/dev-clean/84/121123/84-121123-0000.flac", "dataset": "LibriSpeech",
     "seed_description": "[00:00-00:02] Go do you hear (Gender: Female, Duration: 2s)",
     "transcription": "Go do you hear", "split": "validation", "duration": 1.6, "sample_rate": 16000,
     "speaker_id": "84", "chapter_id": "121123", "gender": "F", "subset": "dev-clean", "text": "GO DO YOU HEAR"},
    {"id": "librispeech/LibriSpeech/dev-clean/84/121123/84-121123-0001.flac", "dataset": "LibriSpeech",
     "seed_description": "[00:00-00:04] But in less than five minutes the staircase groaned (Gender: Female, "
                         "Duration: 4s)",
     "transcription": "But in less than five minutes the staircase groaned", "split": "validation",
     "duration": 4.4, "sample_rate": 16000, "speaker_id": "84", "chapter_id": "121123", "gender": "F",
     "subset": "dev-clean", "text": "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED"},
]

NOISE_S = 10.5  # -> ten 1-s silence clips; the last half second is dropped


def make_speech_commands(corpus):
    write_audio(corpus / "yes" / "0a7c2a8d_nohash_0.wav", 1.0)
    write_audio(corpus / "yes" / "0a7c2a8d_nohash_1.wav", 1.0)
    write_audio(corpus / "no" / "1b4c9b89_nohash_0.wav", 0.8)
    noise = (np.random.default_rng(0).standard_normal(int(NOISE_S * 16000)) * 3000).astype(np.int16)
    (corpus / "_background_noise_").mkdir()
    sf.write(str(corpus / "_background_noise_" / "white_noise.wav"), noise, 16000, subtype="PCM_16")
    (corpus / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_1.wav\n")
    (corpus / "testing_list.txt").write_text("no/1b4c9b89_nohash_0.wav\n")
    (corpus / "README.md").write_text("Speech Commands\n")
    return noise


def speech_commands_rows():
    words = [
        {"id": "speech_commands/no/1b4c9b89_nohash_0.wav", "dataset": "Speech Commands",
         "seed_description": "[00:00-00:01] no (Command: no, Duration: 1s)", "transcription": "no",
         "split": "test", "duration": 0.8, "sample_rate": 16000, "label": "no", "speaker_id": "1b4c9b89",
         "take": "0"},
        {"id": "speech_commands/yes/0a7c2a8d_nohash_0.wav", "dataset": "Speech Commands",
         "seed_description": "[00:00-00:01] yes (Command: yes, Duration: 1s)", "transcription": "yes",
         "split": "train", "duration": 1.0, "sample_rate": 16000, "label": "yes", "speaker_id": "0a7c2a8d",
         "take": "0"},
        {"id": "speech_commands/yes/0a7c2a8d_nohash_1.wav", "dataset": "Speech Commands",
         "seed_description": "[00:00-00:01] yes (Command: yes, Duration: 1s)", "transcription": "yes",
         "split": "validation", "duration": 1.0, "sample_rate": 16000, "label": "yes",
         "speaker_id": "0a7c2a8d", "take": "1"},
    ]
    silence = [
        {"id": f"speech_commands/_silence_/white_noise_{k:03d}.wav", "dataset": "Speech Commands",
         "seed_description": "[00:00-00:01] (Command: silence, Duration: 1s)", "transcription": " ",
         "split": {8: "validation", 9: "test"}.get(k, "train"), "duration": 1.0, "sample_rate": 16000,
         "label": "silence", "noise_file": "white_noise.wav", "offset_s": k}
        for k in range(10)]
    return words + silence


def make_crema_d(corpus):
    (corpus / "AudioWAV").mkdir(parents=True)
    (corpus / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n'
        '1001,51,"Male","Caucasian","Not Hispanic"\n'
        '1002,21,"Female","Caucasian","Not Hispanic"\n'
        '1076,25,"Female","Caucasian","Not Hispanic"\n')
    write_audio(corpus / "AudioWAV" / "1001_IEO_ANG_HI.wav", 2.3)
    write_audio(corpus / "AudioWAV" / "1002_DFA_NEU_XX.wav", 1.5)
    sf.write(str(corpus / "AudioWAV" / "1076_MTI_SAD_XX.wav"), np.zeros(0, np.int16), 16000)  # header only


CREMA_D_ROWS = [
    {"id": "crema_d/AudioWAV/1001_IEO_ANG_HI.wav", "dataset": "CREMA-D",
     "seed_description": "[00:00-00:02] It's eleven o'clock (Emotion: Anger, Gender: Male, Age: 51, "
                         "Race: Caucasian, Ethnicity: Not Hispanic)",
     "transcription": "It's eleven o'clock", "split": "train", "duration": 2.3, "sample_rate": 16000,
     "actor_id": "1001", "sentence_code": "IEO", "emotion_code": "ANG", "emotion_level": "HI", "age": "51",
     "sex": "Male", "race": "Caucasian", "ethnicity": "Not Hispanic"},
    {"id": "crema_d/AudioWAV/1002_DFA_NEU_XX.wav", "dataset": "CREMA-D",
     "seed_description": "[00:00-00:02] Don't forget a jacket (Emotion: Neutral, Gender: Female, Age: 21, "
                         "Race: Caucasian, Ethnicity: Not Hispanic)",
     "transcription": "Don't forget a jacket", "split": "train", "duration": 1.5, "sample_rate": 16000,
     "actor_id": "1002", "sentence_code": "DFA", "emotion_code": "NEU", "emotion_level": "XX", "age": "21",
     "sex": "Female", "race": "Caucasian", "ethnicity": "Not Hispanic"},
]


def make_vctk(corpus):
    corpus.mkdir(parents=True, exist_ok=True)
    (corpus / "speaker-info.txt").write_text(
        "ID  AGE  GENDER  ACCENTS  REGION COMMENTS \n"
        "p225  23  F    English    Southern  England\n"
        "p280  25  F    Unknown    France (mic2 files unavailable)\n"
        "p315  18  M    American    New  England (Text unavailable)\n"
        "p362  29  F    American\n")
    wav = corpus / "wav48_silence_trimmed"
    write_audio(wav / "p225" / "p225_001_mic1.flac", 2.2, 48000)
    write_audio(wav / "p225" / "p225_001_mic2.flac", 2.2, 48000)
    write_audio(wav / "p225" / "p225_002_mic1.flac", 3.6, 48000)
    write_audio(wav / "p280" / "p280_001_mic1.flac", 1.2, 48000)
    write_audio(wav / "p315" / "p315_001_mic1.flac", 1.0, 48000)  # its text was lost
    for spk, utt, text in (("p225", "p225_001", "Please call Stella.\n"),
                           ("p225", "p225_002", "Ask her to bring these things with her from the store.\n"),
                           ("p280", "p280_001", "Please call Stella.\n")):
        (corpus / "txt" / spk).mkdir(parents=True, exist_ok=True)
        (corpus / "txt" / spk / f"{utt}.txt").write_text(text)


P225 = {"speaker_id": "p225", "age": "23", "gender": "F", "accent": "English", "region": "Southern England",
        "comments": None}
VCTK_ROWS = [
    {"id": "vctk/wav48_silence_trimmed/p225/p225_001_mic1.flac", "dataset": "VCTK",
     "seed_description": "[00:00-00:02] Please call Stella. (Gender: Female, Accent: English, "
                         "Region: Southern England, Age: 23)",
     "transcription": "Please call Stella.", "split": "train", "duration": 2.2, "sample_rate": 48000,
     **P225, "mic": "mic1"},
    {"id": "vctk/wav48_silence_trimmed/p225/p225_002_mic1.flac", "dataset": "VCTK",
     "seed_description": "[00:00-00:04] Ask her to bring these things with her from the store. (Gender: Female, "
                         "Accent: English, Region: Southern England, Age: 23)",
     "transcription": "Ask her to bring these things with her from the store.", "split": "train",
     "duration": 3.6, "sample_rate": 48000, **P225, "mic": "mic1"},
    {"id": "vctk/wav48_silence_trimmed/p280/p280_001_mic1.flac", "dataset": "VCTK",
     "seed_description": "[00:00-00:01] Please call Stella. (Gender: Female, Accent: Unknown, Region: France, "
                         "Age: 25)",
     "transcription": "Please call Stella.", "split": "train", "duration": 1.2, "sample_rate": 48000,
     "speaker_id": "p280", "age": "25", "gender": "F", "accent": "Unknown", "region": "France",
     "comments": "mic2 files unavailable", "mic": "mic1"},
]

NSYNTH_EXAMPLES = {
    "bass_synthetic_033-022-050": {
        "note": 201034, "sample_rate": 16000, "pitch": 22, "instrument_source": 2, "instrument_family_str": "bass",
        "instrument_str": "bass_synthetic_033", "note_str": "bass_synthetic_033-022-050", "instrument_family": 0,
        "velocity": 50, "instrument": 417, "qualities": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "qualities_str": ["dark"],
        "instrument_source_str": "synthetic"},
    "keyboard_electronic_001-021-127": {
        "note": 65, "sample_rate": 16000, "pitch": 21, "instrument_source": 1,
        "instrument_family_str": "keyboard", "instrument_str": "keyboard_electronic_001",
        "note_str": "keyboard_electronic_001-021-127", "instrument_family": 4, "velocity": 127, "instrument": 1,
        "qualities": [1, 0, 0, 1, 0, 0, 0, 0, 0, 0], "qualities_str": ["bright", "fast_decay"],
        "instrument_source_str": "electronic"},
    "vocal_acoustic_000-060-075": {
        "note": 3, "sample_rate": 16000, "pitch": 60, "instrument_source": 0, "instrument_family_str": "vocal",
        "instrument_str": "vocal_acoustic_000", "note_str": "vocal_acoustic_000-060-075", "instrument_family": 10,
        "velocity": 75, "instrument": 9, "qualities": [0] * 10, "qualities_str": [],
        "instrument_source_str": "acoustic"},
}


def make_nsynth(corpus):
    base = corpus / "nsynth-test"
    for key in NSYNTH_EXAMPLES:
        write_audio(base / "audio" / f"{key}.wav", 4.0)
    (base / "examples.json").write_text(json.dumps(NSYNTH_EXAMPLES))


def nsynth_rows():
    described = {
        "bass_synthetic_033-022-050": "(Family: bass, Source: synthetic, MIDI Note: 022, Velocity: 50, "
                                      "Qualities: dark, Duration: 4s)",
        "keyboard_electronic_001-021-127": "(Family: keyboard, Source: electronic, MIDI Note: 021, Velocity: 127, "
                                           "Qualities: bright and fast decay, Duration: 4s)",
        "vocal_acoustic_000-060-075": "(Family: vocal, Source: acoustic, MIDI Note: 060, Velocity: 75, "
                                      "Duration: 4s)",
    }
    return [{"id": f"nsynth/nsynth-test/audio/{k}.wav", "dataset": "NSynth",
             "seed_description": f"[00:00-00:04] {described[k]}", "transcription": " ", "split": "test",
             "duration": 4.0, "sample_rate": 16000, **{f: v for f, v in NSYNTH_EXAMPLES[k].items()
                                                       if f != "sample_rate"}}
            for k in sorted(NSYNTH_EXAMPLES)]


CLOTHO_DEV_CAPTIONS = ["A radio dispatcher and an officer are communicating over the radio.",
                       "Static, then a man speaking over a radio.", "Someone talks on a police radio.",
                       "A person is talking over a radio with static.", "Radio chatter with lots of static."]
CLOTHO_VAL_CAPTIONS = ["Water laps against the hull of a boat.", "Boats knock together in a harbour.",
                       "Ropes creak as boats move.", "Waves splash on boats.", "A quiet marina at night."]


def make_clotho(corpus):
    corpus.mkdir(parents=True, exist_ok=True)
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    quote = lambda caps: ",".join(f'"{c}"' for c in caps)  # noqa: E731  (the real files quote every field)
    (corpus / "clotho_captions_development.csv").write_text(
        header + f'"Distorted AM Radio noise.wav",{quote(CLOTHO_DEV_CAPTIONS)}\n')
    (corpus / "clotho_captions_validation.csv").write_text(header + f'"Yacht Club.wav",{quote(CLOTHO_VAL_CAPTIONS)}\n')
    write_audio(corpus / "development" / "Distorted AM Radio noise.wav", 3.5, 44100)
    write_audio(corpus / "validation" / "Yacht Club.wav", 2.0, 44100)


def clotho_rows(n):
    return [
        {"id": "clotho/development/Distorted AM Radio noise.wav", "dataset": "Clotho",
         "seed_description": f"[00:00-00:04] ({'; '.join(CLOTHO_DEV_CAPTIONS[:n])})", "transcription": " ",
         "split": "train", "duration": 3.5, "sample_rate": 44100, "captions": CLOTHO_DEV_CAPTIONS},
        {"id": "clotho/validation/Yacht Club.wav", "dataset": "Clotho",
         "seed_description": f"[00:00-00:02] ({'; '.join(CLOTHO_VAL_CAPTIONS[:n])})", "transcription": " ",
         "split": "validation", "duration": 2.0, "sample_rate": 44100, "captions": CLOTHO_VAL_CAPTIONS},
    ]


# ---- parsers: exact rows ----

def test_describe_schema():
    assert data.describe(2.3, "It's eleven o'clock", [("Emotion", "Anger"), ("Gender", "Male"), ("Age", None)]) \
        == "[00:00-00:02] It's eleven o'clock (Emotion: Anger, Gender: Male)"
    assert data.describe(0.3, "", [("Command", "silence"), ("Duration", data.seconds(0.3))]) \
        == "[00:00-00:01] (Command: silence, Duration: 1s)"     # a sub-second clip still spans a second
    assert data.describe(26.5, "", [(None, "Someone opening a door")]) == "[00:00-00:27] (Someone opening a door)"
    assert data.describe(125.0, "hi") == "[00:00-02:05] hi"          # no attributes: no parentheses
    assert [data.format_timestamp(s) for s in (0.49, 0.5, 59.5, 61.2)] == ["00:00", "00:01", "01:00", "01:01"]


def test_esc50_rows(tmp_path):
    make_esc50(tmp_path / "esc50")
    assert R.parse_esc50(tmp_path / "esc50", tmp_path) == ESC50_ROWS


def test_librispeech_rows(tmp_path):
    make_librispeech(tmp_path / "librispeech")
    rows = R.parse_librispeech(tmp_path / "librispeech", tmp_path, subset="dev-clean")
    assert rows == LIBRISPEECH_ROWS


def test_librispeech_unknown_speaker_is_reported(tmp_path):
    make_librispeech(tmp_path / "librispeech")
    chap = tmp_path / "librispeech" / "LibriSpeech" / "dev-clean" / "1919" / "142785"
    write_audio(chap / "1919-142785-0000.flac", 1.0)
    (chap / "1919-142785.trans.txt").write_text("1919-142785-0000 ILLUSTRATION\n")
    with pytest.warns(UserWarning, match=r"\['1919'\] are not in .*SPEAKERS.TXT"):
        rows = R.parse_librispeech(tmp_path / "librispeech", tmp_path, subset="dev-clean")
    new = [r for r in rows if r["speaker_id"] == "1919"]
    assert new[0]["seed_description"] == "[00:00-00:01] Illustration (Duration: 1s)" and new[0]["gender"] is None


def test_speech_commands_rows_and_silence_clips(tmp_path):
    corpus = tmp_path / "speech_commands"
    noise = make_speech_commands(corpus)
    rows = R.parse_speech_commands(corpus, tmp_path)
    assert rows == speech_commands_rows()
    # the silence clips are the noise recording cut at whole seconds, sample for sample
    for k in (0, 7, 9):
        clip, sr = sf.read(str(corpus / "_silence_" / f"white_noise_{k:03d}.wav"), dtype="int16")
        assert sr == 16000 and np.array_equal(clip, noise[k * 16000:(k + 1) * 16000])
    mtime = (corpus / "_silence_" / "white_noise_000.wav").stat().st_mtime_ns
    assert R.parse_speech_commands(corpus, tmp_path) == rows                     # idempotent
    assert (corpus / "_silence_" / "white_noise_000.wav").stat().st_mtime_ns == mtime  # not rewritten


def test_crema_d_rows_and_empty_clip_is_skipped_with_a_warning(tmp_path):
    make_crema_d(tmp_path / "crema_d")
    with pytest.warns(UserWarning, match=r"CREMA-D: skipped 1 file\(s\): .*1076_MTI_SAD_XX.wav: empty"):
        rows = R.parse_crema_d(tmp_path / "crema_d", tmp_path)
    assert rows == CREMA_D_ROWS


def test_crema_d_unknown_code_is_an_error(tmp_path):
    make_crema_d(tmp_path / "crema_d")
    write_audio(tmp_path / "crema_d" / "AudioWAV" / "1001_XYZ_ANG_HI.wav", 1.0)
    with pytest.raises(R.RecipeError, match=r"1001_XYZ_ANG_HI.wav: unknown sentence code 'XYZ'"):
        R.parse_crema_d(tmp_path / "crema_d", tmp_path)


def test_vctk_rows_mics_and_lost_text(tmp_path):
    make_vctk(tmp_path / "vctk")
    with pytest.warns(UserWarning, match=r"VCTK: skipped 1 file\(s\): .*p315_001_mic1.flac: no transcript"):
        rows = R.parse_vctk(tmp_path / "vctk", tmp_path)
    assert rows == VCTK_ROWS
    mic2 = R.parse_vctk(tmp_path / "vctk", tmp_path, mic="mic2")
    assert [r["id"] for r in mic2] == ["vctk/wav48_silence_trimmed/p225/p225_001_mic2.flac"]
    assert mic2[0]["mic"] == "mic2" and mic2[0]["seed_description"] == VCTK_ROWS[0]["seed_description"]
    with pytest.raises(ValueError, match="mic"):
        R.parse_vctk(tmp_path / "vctk", tmp_path, mic="mic3")


def test_nsynth_rows(tmp_path):
    make_nsynth(tmp_path / "nsynth")
    assert R.parse_nsynth(tmp_path / "nsynth", tmp_path) == nsynth_rows()


def test_clotho_rows_with_one_and_two_captions(tmp_path):
    make_clotho(tmp_path / "clotho")
    with pytest.warns(UserWarning, match=r"Clotho: no .*clotho_captions_evaluation.csv"):
        assert R.parse_clotho(tmp_path / "clotho", tmp_path) == clotho_rows(1)
    with pytest.warns(UserWarning):
        assert R.parse_clotho(tmp_path / "clotho", tmp_path, n_captions=2) == clotho_rows(2)


MAKERS = {"esc50": (make_esc50, "esc50", "ESC-50-master/meta/esc50.csv"),
          "librispeech-dev-clean": (make_librispeech, "librispeech", "LibriSpeech/SPEAKERS.TXT"),
          "speech-commands": (make_speech_commands, "speech_commands", "validation_list.txt"),
          "crema-d": (make_crema_d, "crema_d", "VideoDemographics.csv"),
          "vctk": (make_vctk, "vctk", "speaker-info.txt"),
          "nsynth-test": (make_nsynth, "nsynth", "nsynth-test/examples.json"),
          "clotho": (make_clotho, "clotho", "clotho_captions_development.csv")}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_metadata_is_a_clear_error_naming_it(tmp_path, name):
    make, folder, meta = MAKERS[name]
    make(tmp_path / folder)
    (tmp_path / folder / meta).unlink()
    if name == "clotho":
        (tmp_path / folder / "clotho_captions_validation.csv").unlink()
    with pytest.raises(R.RecipeError, match="missing") as e:
        R.prepare(name, tmp_path, download=False)
    assert str(tmp_path / folder / meta) in str(e.value)


def test_missing_listed_audio_is_an_error_naming_it(tmp_path):
    make_esc50(tmp_path / "esc50")
    (tmp_path / "esc50" / "ESC-50-master" / "audio" / "1-100032-A-0.wav").unlink()
    with pytest.raises(R.RecipeError, match=r"missing audio file .*1-100032-A-0.wav \(listed in .*esc50.csv\)"):
        R.parse_esc50(tmp_path / "esc50", tmp_path)


def test_prepare_offline_writes_the_manifest(tmp_path):
    make_speech_commands(tmp_path / "speech_commands")
    path = R.prepare("speech-commands", tmp_path, download=False)
    assert path == tmp_path / "seed_manifest.speech-commands.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == sorted(speech_commands_rows(), key=lambda r: r["id"])
    for r in rows:  # every id resolves under the data root
        assert (tmp_path / r["id"]).is_file()
    with pytest.raises(ValueError, match="unknown recipe 'nope'"):
        R.prepare("nope", tmp_path, download=False)


# ---- a local HTTP server for the downloader ----

class FileServer:
    """Serves `files` on 127.0.0.1 with Range support. `drop[path]`: byte counts after which successive
    responses are cut off mid-body; `fail[path]`: statuses answered first. Every request is logged."""

    def __init__(self):
        self.files, self.drop, self.fail, self.log = {}, {}, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                if server.fail.get(self.path):
                    self.send_error(server.fail[self.path].pop(0))
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.drop.get(self.path):
                    self.wfile.write(part[:server.drop[self.path].pop(0)])  # then hang up (HTTP/1.0)
                    self.wfile.flush()
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def requests(self, path):
        return [rng for p, rng in self.log if p == path]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    s = FileServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def blob(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_download_verifies_checksums(server, tmp_path):
    body = blob(300_000)
    server.files["/a.bin"] = body
    md5, sha = hashlib.md5(body).hexdigest(), hashlib.sha256(body).hexdigest()
    out = hub.download_file(server.url("/a.bin"), tmp_path / "a.bin", sha256=sha, md5=md5, size=len(body), backoff=0)
    assert out.read_bytes() == body and not (tmp_path / "a.bin.incomplete").exists()
    hub.download_file(server.url("/a.bin"), tmp_path / "a.bin", md5=md5, size=len(body), backoff=0)
    assert len(server.requests("/a.bin")) == 1  # a final file is verified: not fetched again


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_download_wrong_checksum_is_an_error_naming_the_file(server, tmp_path, kind):
    server.files["/corpus.tar.gz"] = blob(5000)
    with pytest.raises(hub.DownloadError, match=rf"corpus.tar.gz: {kind} mismatch .* expected {'0' * 8}"):
        hub.download_file(server.url("/corpus.tar.gz"), tmp_path / "corpus.tar.gz", **{kind: "0" * 64}, backoff=0)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor the corrupt partial is left


def test_download_resumes_after_a_dropped_connection(server, tmp_path):
    body = blob(3_000_000, seed=1)
    server.files["/big.bin"] = body
    server.drop["/big.bin"] = [1_500_000]
    out = hub.download_file(server.url("/big.bin"), tmp_path / "big.bin", md5=hashlib.md5(body).hexdigest(),
                          backoff=0)
    assert out.read_bytes() == body
    first, second = server.requests("/big.bin")
    # the second request continues from what was saved (whole read chunks before the drop), not from 0
    assert first is None and second.startswith("bytes=")
    assert 0 < int(second[6:-1]) <= 1_500_000


def test_download_resumes_a_partial_file_from_an_earlier_run(server, tmp_path):
    body = blob(50_000, seed=2)
    server.files["/x.bin"] = body
    (tmp_path / "x.bin.incomplete").write_bytes(body[:12_345])
    hub.download_file(server.url("/x.bin"), tmp_path / "x.bin", size=len(body), backoff=0)
    assert (tmp_path / "x.bin").read_bytes() == body and server.requests("/x.bin") == ["bytes=12345-"]


def test_download_retries_server_errors_but_not_404(server, tmp_path):
    server.files["/flaky.bin"] = b"ok" * 100
    server.fail["/flaky.bin"] = [503, 503]
    hub.download_file(server.url("/flaky.bin"), tmp_path / "flaky.bin", backoff=0)
    assert len(server.requests("/flaky.bin")) == 3
    with pytest.raises(hub.DownloadError, match=r"HTTP 404 .*/missing.bin") as e:
        hub.download_file(server.url("/missing.bin"), tmp_path / "missing.bin", backoff=0)
    assert e.value.status == 404 and len(server.requests("/missing.bin")) == 1
    server.files["/dead.bin"] = b"z" * 1000
    server.drop["/dead.bin"] = [0, 0, 0]  # hangs up before any byte, every time
    with pytest.raises(hub.DownloadError, match="giving up on dead.bin"):
        hub.download_file(server.url("/dead.bin"), tmp_path / "dead.bin", retries=2, backoff=0)


def test_download_size_mismatch_is_an_error(server, tmp_path):
    server.files["/s.bin"] = b"x" * 100
    with pytest.raises(hub.DownloadError, match=r"s.bin: server has 100 bytes, expected 101"):
        hub.download_file(server.url("/s.bin"), tmp_path / "s.bin", size=101, backoff=0)


# ---- prepare end to end: archive served locally -> unpack -> parse -> manifest ----

def tar_gz_of(folder, arc_root=""):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in sorted(folder.rglob("*")):
            tf.add(p, arcname=f"{arc_root}{p.relative_to(folder).as_posix()}", recursive=False)
    return buf.getvalue()


def zip_of(folder):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


def test_prepare_downloads_unpacks_tar_gz_and_describes(server, tmp_path):
    make_esc50(tmp_path / "stage")                     # stage/ESC-50-master/...
    body = tar_gz_of(tmp_path / "stage")
    server.files["/esc50.tar.gz"] = body
    recipe = dataclasses.replace(R.RECIPES["esc50"], sources=(
        R.Source(server.url("/esc50.tar.gz"), "ESC-50-master.tar.gz", md5=hashlib.md5(body).hexdigest()),))
    root = tmp_path / "data"
    path = R.prepare(recipe, root, backoff=0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == ESC50_ROWS
    assert (root / "downloads" / "ESC-50-master.tar.gz").is_file()
    assert (root / "esc50" / ".unpacked.ESC-50-master.tar.gz").is_file()
    R.prepare(recipe, root, backoff=0)                 # second run: nothing is fetched or unpacked again
    assert len(server.requests("/esc50.tar.gz")) == 1


def test_prepare_unpacks_zip_and_can_drop_archives(server, tmp_path):
    make_vctk(tmp_path / "stage")                      # the VCTK zip has no top folder
    body = zip_of(tmp_path / "stage")
    server.files["/vctk.zip"] = body
    recipe = dataclasses.replace(R.RECIPES["vctk"], sources=(
        R.Source(server.url("/vctk.zip"), "VCTK-Corpus-0.92.zip", sha256=hashlib.sha256(body).hexdigest(),
                 size=len(body)),))
    root = tmp_path / "data"
    with pytest.warns(UserWarning, match="p315"):
        path = R.prepare(recipe, root, keep_archives=False, backoff=0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == VCTK_ROWS
    assert not (root / "downloads" / "VCTK-Corpus-0.92.zip").exists()


def test_prepare_with_a_corrupt_archive_names_it(server, tmp_path):
    server.files["/esc50.tar.gz"] = b"not really an archive"
    recipe = dataclasses.replace(R.RECIPES["esc50"], sources=(
        R.Source(server.url("/esc50.tar.gz"), "ESC-50-master.tar.gz", md5="f" * 32),))
    with pytest.raises(hub.DownloadError, match="ESC-50-master.tar.gz: md5 mismatch"):
        R.prepare(recipe, tmp_path, backoff=0)


def lfs_pointer(body):
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(body).hexdigest()}\n"
            f"size {len(body)}\n").encode()


def test_crema_d_fetch_checks_each_clip_against_its_lfs_pointer(server, tmp_path):
    make_crema_d(tmp_path / "stage")
    stage = tmp_path / "stage"
    server.files["/raw/VideoDemographics.csv"] = (stage / "VideoDemographics.csv").read_bytes()
    server.files["/raw/SentenceFilenames.csv"] = (
        b'"Stimulus_Number","Filename"\n1,"1001_IEO_ANG_HI"\n2,"1002_DFA_NEU_XX"\n3,"1040_ITH_SAD_XX"\n')
    clip1 = (stage / "AudioWAV" / "1001_IEO_ANG_HI.wav").read_bytes()
    clip2 = (stage / "AudioWAV" / "1002_DFA_NEU_XX.wav").read_bytes()
    server.files["/raw/AudioWAV/1001_IEO_ANG_HI.wav"] = lfs_pointer(clip1)   # LFS: pointer, then media
    server.files["/media/AudioWAV/1001_IEO_ANG_HI.wav"] = clip1
    server.files["/raw/AudioWAV/1002_DFA_NEU_XX.wav"] = clip2                # not in LFS: raw is the file
    recipe = dataclasses.replace(R.RECIPES["crema-d"], fetch=partial(
        R.fetch_crema_d, raw_base=server.url("/raw/"), media_base=server.url("/media/"), workers=2))
    root = tmp_path / "data"
    with pytest.warns(UserWarning, match=r"1 clip\(s\) listed in SentenceFilenames.csv .*1040_ITH_SAD_XX"):
        path = R.prepare(recipe, root, backoff=0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == CREMA_D_ROWS
    assert (root / "crema_d" / "AudioWAV" / "1001_IEO_ANG_HI.wav").read_bytes() == clip1

    # a clip whose bytes do not match its pointer's sha256 is refused and not kept
    (root / "crema_d" / "AudioWAV" / "1001_IEO_ANG_HI.wav").unlink()
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    server.files["/raw/AudioWAV/1001_IEO_ANG_HI.wav"] = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{wrong}\nsize {len(clip1)}\n".encode())
    with pytest.raises(hub.DownloadError, match=f"1001_IEO_ANG_HI.wav: sha256 mismatch .*expected {wrong}"):
        R.fetch_crema_d(root / "crema_d", raw_base=server.url("/raw/"), media_base=server.url("/media/"),
                        workers=1, backoff=0)
    assert not (root / "crema_d" / "AudioWAV" / "1001_IEO_ANG_HI.wav").exists()


# ---- archives: path traversal is refused ----

def tar_with(tmp_path, *members):
    path = tmp_path / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            else:
                info.size = len(b"data")
                tf.addfile(info, io.BytesIO(b"data"))
    return path


@pytest.mark.parametrize("member", [("../evil.txt", "file", None), ("a/../../evil.txt", "file", None),
                                    ("/abs/evil.txt", "file", None), ("link", "sym", "../../evil")])
def test_tar_path_traversal_is_rejected(tmp_path, member):
    archive = tar_with(tmp_path, member)
    dest = tmp_path / "out" / "corpus"
    with pytest.raises(R.RecipeError, match=rf"bad.tar.gz: refusing .*{member[0]!r}"):
        R.extract_archive(archive, dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_zip_path_traversal_is_rejected_before_anything_is_written(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr(zipfile.ZipInfo("../evil.txt"), "bad")
    dest = tmp_path / "out"
    with pytest.raises(R.RecipeError, match=r"bad.zip: refusing member '../evil.txt'"):
        R.extract_archive(archive, dest)
    assert not (dest / "ok.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_7z_unpacks_and_rejects_traversal(tmp_path, monkeypatch):
    py7zr = pytest.importorskip("py7zr", reason="py7zr (optional, for Clotho's .7z archives) is not installed")
    archive = tmp_path / "clotho_audio_validation.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.writestr(b"RIFF....", "validation/Yacht Club.wav")
    R.extract_archive(archive, tmp_path / "clotho")
    assert (tmp_path / "clotho" / "validation" / "Yacht Club.wav").read_bytes() == b"RIFF...."
    # py7zr refuses to *write* a '..' name, so hand the reader one to check the guard runs before extraction
    monkeypatch.setattr(py7zr.SevenZipFile, "getnames", lambda self: ["../evil.wav"])
    with pytest.raises(R.RecipeError, match=r"refusing member '../evil.wav'"):
        R.extract_archive(archive, tmp_path / "again")
    assert not (tmp_path / "again" / "validation").exists()


# ---- DeSTA-AQA5M rows ----

def aqa5m_row(i, text="Excuse me?"):
    return {"id": f"IEMOCAP/Ses01F_impro01_F00{i}.wav", "dataset": "IEMOCAP",
            "seed_description": "[00:00-00:02] Excuse me? (Emotion: Neutral, Gender: Female, Duration: 2s)",
            "prompt": "What can you hear?", "response": "A woman says \"Excuse me?\" in a neutral tone.",
            "messages": [{"role": "system", "content": "Focus on the audio clips and instructions."},
                         {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\nWhat can you hear?",
                          "audios": [{"audio": f"IEMOCAP/Ses01F_impro01_F00{i}.wav", "text": text}]}],
            "extra_field": i}


def write_aqa5m(path):
    bad_markers = aqa5m_row(5)
    bad_markers["messages"][1]["content"] += " <|AUDIO|>"
    no_response = aqa5m_row(4)
    del no_response["response"]
    int_id = aqa5m_row(8)
    int_id["id"] = 8
    lines = [json.dumps(aqa5m_row(1)), "{not json", "", json.dumps(no_response), json.dumps(bad_markers),
             json.dumps(aqa5m_row(6, text=" ")), "[1, 2]", json.dumps(int_id)]
    path.write_text("\n".join(lines) + "\n")


def test_aqa5m_rows_load_unchanged_and_malformed_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "speech.0.jsonl"
    write_aqa5m(path)
    errors = []
    with pytest.warns(UserWarning, match=rf"skipped 5 malformed line\(s\): {path}:2: invalid JSON"):
        rows = R.load_aqa5m_rows(path, errors=errors)
    assert rows == [aqa5m_row(1), aqa5m_row(6, text=" ")]
    assert [e.split(": ", 1)[0] for e in errors] == [f"{path}:{n}" for n in (2, 4, 5, 7, 8)]
    assert "missing field 'response'" in errors[1]
    assert "2 <|AUDIO|> marker(s) in the messages but 1 audio(s)" in errors[2]
    assert "expected a JSON object, got list" in errors[3]
    assert "field 'id' must be a string" in errors[4]


def test_aqa5m_strict_raises_at_the_first_bad_line(tmp_path):
    path = tmp_path / "audio.0.jsonl"
    write_aqa5m(path)
    with pytest.raises(R.AQA5MError, match=rf"{path}:2: invalid JSON"):
        R.load_aqa5m_rows(path, strict=True)


def test_aqa5m_folder_of_files_and_missing_path(tmp_path):
    for n, i in ((1, 3), (0, 2)):
        (tmp_path / f"speech.{n}.jsonl").write_text(json.dumps(aqa5m_row(i)) + "\n")
    assert [r["extra_field"] for r in R.load_aqa5m_rows(tmp_path)] == [2, 3]  # files in name order
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        R.load_aqa5m_rows(tmp_path / "nope.jsonl")
