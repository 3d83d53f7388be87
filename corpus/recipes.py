"""
Recipes for real public corpora (the `desta25` preset), and the DeSTA-AQA5M row loader.

Each recipe knows where its corpus lives (official public URLs, with the checksums the source or a
well-known mirror of its metadata publishes), downloads it with `requests` (resumable, verified,
atomic), unpacks tar/zip/7z archives without letting a member escape the corpus folder, parses the
corpus's *own* metadata, and writes a seed manifest: one jsonl row per clip with

    id                audio path relative to the data root (the folder that holds the manifest)
    dataset           the corpus name as the paper writes it
    seed_description  the paper's schema (SPEC 1), e.g. "[00:00-00:02] It's eleven o'clock (Emotion:
                      Anger, Gender: Male, Age: 51, Race: Caucasian, Ethnicity: Not Hispanic)"; the
                      span comes from the real audio length (soundfile.info, no decoding)
    transcription     what is said, or " " when nothing is
    split             train / validation / test (the corpus's own split where it has one)
    duration, sample_rate, and the raw metadata fields the description was written from

The attribute names and order of each description follow the per-corpus examples in the official
repo's docs/dataset.md (kehanlu/DeSTA2.5-Audio), e.g. ESC-50 "(Audio category: dog, Duration: 5.0)",
NSynth "(Family: bass, Source: electronic, MIDI Note: 022, ...)", Clotho "(a caption)".

Layout under the data root:
    downloads/<archive>                       archives as fetched (kept unless keep_archives=False)
    <folder>/...                              each corpus unpacked in its own folder
    <folder>/.unpacked.<archive>              marks an archive as fully unpacked
    seed_manifest.<recipe>.jsonl              what `prepare` returns

Runtime: numpy, soundfile, requests, stdlib; py7zr only for Clotho's .7z archives (imported lazily).

    python data.py recipe NAME --root data;  python data.py seeds --root data
"""
import csv
import json
import os
import re
import sys
import tarfile
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

import requests
import soundfile as sf

from data import _aqa5m_problem, describe, read_jsonl, seconds, write_jsonl, write_wav_atomic
from tools.hub import HUB_BACKOFF_S, HUB_RETRIES, DownloadError, _http_get, download_file

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


class RecipeError(ValueError):
    """A corpus on disk or an archive that a recipe cannot use; the message names the file."""


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
                write_wav_atomic(p, audio[k * n:(k + 1) * n], sr, info.subtype)
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


# ---- DeSTA-AQA5M rows as released (SPEC 9) ----

class AQA5MError(ValueError):
    """A malformed DeSTA-AQA5M line (strict mode); the message says file:line and why."""


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


def join_seeds(root) -> None:
    """One seed manifest from the recipes' manifests under root."""
    parts = sorted(Path(root).glob(RECIPE_MANIFEST_NAME.format(name="*")))
    if not parts:
        sys.exit(f"no {RECIPE_MANIFEST_NAME.format(name='*')} under {root}: run `python data.py recipe NAME` first")
    rows = [row for p in parts for row in read_jsonl(p, required=("id", "seed_description"))]
    write_jsonl(Path(root) / "seed_manifest.jsonl", rows)
    print(f"{Path(root) / 'seed_manifest.jsonl'}: {len(rows)} clips from {len(parts)} corpora")


def add_commands(sub) -> None:
    """data.py's `recipe` and `seeds` subcommands."""
    r = sub.add_parser("recipe", help="download a public corpus and write its seed manifest (desta25 preset)")
    r.add_argument("name", choices=sorted(RECIPES))
    r.add_argument("--root", default="data", help="data root: corpora, downloads/ and seed manifests go here")
    r.add_argument("--no-download", action="store_true", help="parse a corpus already unpacked under --root")
    r.set_defaults(run=lambda a: print(prepare(a.name, a.root, download=not a.no_download)))
    j = sub.add_parser("seeds", help="join the recipes' seed manifests under ROOT into one seed manifest")
    j.add_argument("--root", default="data")
    j.set_defaults(run=lambda a: join_seeds(a.root))
