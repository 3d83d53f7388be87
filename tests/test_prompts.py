"""Checks on the plain-text prompt pools in prompts/ (see prompts/README.md).

The pools feed self-generation: for each clip, prompts are sampled from one pool and the
backbone LLM answers them from the clip's seed description. A bad line (blank, duplicated,
carrying chat markup, asking a sound clip about its speaker) becomes bad training data, so
these tests read the files exactly as a loader would and check them line by line.
"""
import re
from pathlib import Path

import pytest

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"
POOLS = ("speech", "sound")
# prompts whose answers restate the clip's properties; speech_gender: make demo's second stage
ATTRIBUTE_POOLS = ("speech_attributes", "sound_attributes", "speech_gender")
MIN_POOL_SIZE = 300
MAX_CHARS = 300
FIXED_PROMPT = "What can you hear from the audio?"  # the paper's 1-P ablation
# Markup that would collide with the chat template / audio locator, or with str.format.
FORBIDDEN = ("<", ">", "{", "}", "\t")
ROLE_PLAY_OPENERS = ("Respond", "Reply", "Imagine", "Pretend", "As a", "As an")
# Sound clips carry no speech (their transcription is " "), so these words would ask for
# something the seed description cannot contain.
SPEECH_ONLY = re.compile(r"speaker|speech|spoken|transcri|utterance|accent", re.I)
# A sound-pool line about music must not assume that music is there ("What genre is it?").
MUSIC_WORD = re.compile(r"\b(music\w*|instrument\w*|genre|melody|tempo|musician|chord\w*)\b", re.I)
HEDGE = re.compile(r"\b(if|any|whether|is there|does this|is this audio|there is none|could|would|might)\b", re.I)


def normalise(line):
    """Key used for duplicate checks: case- and whitespace-insensitive."""
    return re.sub(r"\s+", " ", line).strip().casefold()


def read_raw(name):
    path = PROMPT_DIR / f"{name}.txt"
    assert path.is_file(), f"missing prompt pool {path}"
    data = path.read_bytes()
    text = data.decode("utf-8")  # strict: raises on invalid UTF-8
    assert not text.startswith("\ufeff"), f"{path} starts with a byte-order mark"
    assert "\r" not in text, f"{path} has CR line endings"
    assert text.endswith("\n") and not text.endswith("\n\n"), f"{path} must end with exactly one newline"
    return text


def read_lines(name):
    return read_raw(name)[:-1].split("\n")


def count(lines, pattern):
    rx = re.compile(pattern, re.I)
    return sum(1 for line in lines if rx.search(line))


@pytest.mark.parametrize("name", POOLS + ATTRIBUTE_POOLS + ("fixed",))
def test_lines_are_clean(name):
    lines = read_lines(name)
    for i, line in enumerate(lines, 1):
        where = f"{name}.txt line {i}: {line!r}"
        assert line.strip(), f"blank line at {where}"
        assert line == line.strip(), f"leading/trailing whitespace at {where}"
        assert len(line) < MAX_CHARS, f"too long ({len(line)} chars) at {where}"
        assert line.isprintable(), f"control character at {where}"
        assert not any(s in line for s in FORBIDDEN), f"forbidden markup at {where}"
        assert line[-1] in ".?!", f"no closing punctuation at {where}"


@pytest.mark.parametrize("name", POOLS + ATTRIBUTE_POOLS)
def test_pool_size_and_no_duplicates(name):
    lines = read_lines(name)
    # the attribute pools are small on purpose: each line was kept for the share of its answers that state
    # the clip's properties (prompts/README.md), and few prompts pass that bar with a 135M backbone
    least = MIN_POOL_SIZE if name in POOLS else 4
    assert len(lines) >= least, f"{name}.txt has {len(lines)} prompts, want >= {least}"
    seen = {}
    for i, line in enumerate(lines, 1):
        key = normalise(line)
        assert key not in seen, f"{name}.txt line {i} duplicates line {seen[key]}: {line!r}"
        seen[key] = i


def test_fixed_is_the_single_ablation_prompt():
    assert read_raw("fixed") == FIXED_PROMPT + "\n"


def test_pools_are_disjoint():
    keys = {name: {normalise(l) for l in read_lines(name)} for name in POOLS + ATTRIBUTE_POOLS + ("fixed",)}
    names = list(keys)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = keys[a] & keys[b]
            assert not shared, f"{a}.txt and {b}.txt share prompts: {sorted(shared)[:5]}"


def test_duplicate_check_catches_case_and_spacing():
    # the key the tests rely on must merge these, or the duplicate test proves nothing
    assert normalise("Describe  the SOUND.") == normalise("describe the sound.")
    assert normalise("Describe the sound.") != normalise("Describe the sounds.")


def test_speech_pool_covers_the_kinds():
    lines = read_lines("speech")
    role_play = sum(1 for l in lines if l.startswith(ROLE_PLAY_OPENERS))
    assert role_play >= 10, f"only {role_play} role-play prompts"
    minimums = {  # pattern -> at least this many lines
        r"emotion|feel|mood": 20,
        r"\b(describe|description|caption)\b": 30,
        r"\b(might|could|likely)\b": 20,  # open questions
        r"gender|male|female|\bman\b|woman": 5,
        r"accent|dialect|pronunciation": 5,
        r"\b(fast|slow|pace|speed|rate)\b": 5,
        r"pitch|intonation": 5,
        r"loud|volume|whisper|shout": 5,
        r"noise|recording quality|echo|reverberation": 5,
        r"speakers|voices|more than one person|monologue": 5,
        r"\bage\b|\bold\b|child|teenager|elderly": 5,
        r"language|translate": 5,
        r"transcri|verbatim|word for word": 5,
        r"summar|gist|tl;dr|headline": 5,
        r"one sentence|bullet|under \d+ words|json|exactly|table|markdown": 10,
    }
    for pattern, at_least in minimums.items():
        n = count(lines, pattern)
        assert n >= at_least, f"speech.txt: {n} lines match {pattern!r}, want >= {at_least}"


def test_sound_pool_covers_the_kinds():
    lines = read_lines("sound")
    role_play = sum(1 for l in lines if l.startswith(ROLE_PLAY_OPENERS))
    assert role_play >= 10, f"only {role_play} role-play prompts"
    minimums = {
        r"\b(describe|description|caption)\b": 30,
        r"source|making this sound|produce|animal|vehicle": 15,
        r"indoors|outdoors|environment|place|recorded": 15,
        r"music|instrument|genre|melody|tempo|beat": 30,
        r"\b(might|could|likely)\b": 20,
        r"danger|safe|emergency|alarm|warning|urgen": 5,
        r"poem|haiku|story|lyric|limerick|rhyme": 5,
        r"one sentence|bullet|under \d+ words|json|exactly|table|markdown": 10,
    }
    for pattern, at_least in minimums.items():
        n = count(lines, pattern)
        assert n >= at_least, f"sound.txt: {n} lines match {pattern!r}, want >= {at_least}"


@pytest.mark.parametrize("name", ("sound", "sound_attributes"))
def test_sound_pool_does_not_presuppose_speech_or_music(name):
    for i, line in enumerate(read_lines(name), 1):
        assert not SPEECH_ONLY.search(line), f"{name}.txt line {i} asks about speech: {line!r}"
        if MUSIC_WORD.search(line):
            assert HEDGE.search(line), f"{name}.txt line {i} assumes music is present: {line!r}"


def test_attribute_pools_do_not_repeat_the_benchmark_questions():
    # the tiny benchmark asks its own questions; training on the same wording would blur what it measures
    from benchmarks import tiny
    asked = {normalise(a.question) for a in tiny.TINY_ATTRIBUTES.values()}
    for name in ATTRIBUTE_POOLS:
        same = asked & {normalise(l) for l in read_lines(name)}
        assert not same, f"{name}.txt repeats benchmark questions: {sorted(same)}"


def test_gender_wordings_ask_without_listing_the_options():
    # SmolLM2-135M answers "male or female?" with the option it prefers, whatever the description says
    # (bench/exp4_tiny.md section 14): such a wording gives targets that do not depend on the clip
    for i, line in enumerate(read_lines("speech_gender"), 1):
        assert re.search(r"gender", line, re.I), f"speech_gender.txt line {i} does not ask the gender: {line!r}"
        assert not re.search(r"\bor\b|\b(male|female|man|woman)\b", line, re.I), \
            f"speech_gender.txt line {i} lists an option: {line!r}"


def test_readme_describes_the_pools():
    readme = PROMPT_DIR / "README.md"
    assert readme.is_file(), f"missing {readme}"
    text = readme.read_text(encoding="utf-8")
    for name in POOLS + ATTRIBUTE_POOLS + ("fixed",):
        n = len(read_lines(name))
        assert f"{name}.txt" in text, f"README does not mention {name}.txt"
        # the counts quoted in the README must track the files
        assert re.search(rf"`{name}\.txt`\s*\|\s*{n}\s*\|", text), f"README count for {name}.txt is not {n}"
