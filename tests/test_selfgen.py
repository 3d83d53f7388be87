"""Self-generation: rows in the DeSTA-AQA5M layout, resumable after a kill (every (id, prompt) exactly
once, same text as an uninterrupted run), sharded over two torchrun ranks that merge cleanly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import data
import desta
import generate
from corpus import manifests
from conftest import ROOT


def seed_manifest(path, n=30):
    rows = []
    for i in range(n):
        speech = i % 3 != 0
        rows.append({"id": f"audio/{i:03d}.wav", "dataset": "unit", "split": "train",
                     "transcription": f"Sentence number {i}." if speech else " ",
                     "seed_description": (f"[00:00-00:02] Sentence number {i}. (Gender: Female)" if speech
                                          else f"[00:00-00:02] (Sound: Beep {i}, Duration: 2s)")})
    data.write_jsonl(path, rows)
    return rows


def selfgen_cmd(llm, seeds, out, *extra):
    return [sys.executable, "generate.py", "selfgen", "--seeds", str(seeds), "--llm", str(llm), "--out", str(out),
            "--k", "2", "--max-new-tokens", "12", "--batch-size", "4", *extra]


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), **kw)


def test_prompt_choice_and_row_layout():
    pools = {"speech": [f"speech prompt {i}" for i in range(50)], "sound": [f"sound prompt {i}" for i in range(50)]}
    speech = {"id": "a.wav", "transcription": "hello", "seed_description": "[00:00-00:01] hello", "dataset": "d"}
    sound = {"id": "b.wav", "transcription": " ", "seed_description": "[00:00-00:01] (Sound: Beep)", "dataset": "d"}
    p = generate.choose_prompts(speech, pools, 3, seed=1)
    assert p == generate.choose_prompts(speech, pools, 3, seed=1) and len(set(p)) == 3
    assert all(x.startswith("speech") for x in p)
    assert all(x.startswith("sound") for x in generate.choose_prompts(sound, pools, 3, seed=1))
    assert generate.choose_prompts(speech, pools, 3, seed=2) != p
    msgs = generate.backbone_messages(speech["seed_description"], "What is said?")
    assert msgs[0] == {"role": "system", "content": desta.DEFAULT_SYSTEM}
    assert msgs[1]["content"] == "<start_audio>[00:00-00:01] hello<end_audio>\nWhat is said?"
    row = generate.training_row(speech, "What is said?", "Hello.")
    assert list(row) == ["id", "dataset", "seed_description", "prompt", "response", "messages"]
    assert row["messages"][1] == {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\nWhat is said?",
                                  "audios": [{"audio": "a.wav", "text": "hello"}]}


def test_attribute_prompts_are_added_without_changing_the_general_choice():
    pools = {"speech": [f"speech prompt {i}" for i in range(50)], "sound": [f"sound prompt {i}" for i in range(50)],
             "speech_attributes": ["speech prompt 0", *[f"speech attribute {i}" for i in range(9)]],
             "sound_attributes": [f"sound attribute {i}" for i in range(10)]}
    speech = {"id": "a.wav", "transcription": "hello"}
    sound = {"id": "b.wav", "transcription": " "}
    for clip, kind in ((speech, "speech"), (sound, "sound")):
        general = generate.choose_prompts(clip, pools, 2, seed=1)
        both = generate.choose_prompts(clip, pools, 2, seed=1, k_attributes=3)
        assert both[:2] == general and len(set(both)) == 5      # distinct, even where the pools overlap
        assert all(p in pools[f"{kind}_attributes"] for p in both[2:])
        assert both == generate.choose_prompts(clip, pools, 2, seed=1, k_attributes=3)   # seeded: resumable
    assert len(generate.choose_prompts(speech, pools, 1, seed=1, k_attributes=100)) == 1 + 10 - (
        "speech prompt 0" in generate.choose_prompts(speech, pools, 1, seed=1))      # capped at the pool
    only = generate.choose_prompts(speech, pools, 0, seed=1, k_attributes=3)   # --k 0: the attribute pool alone
    assert len(set(only)) == 3 and all(p in pools["speech_attributes"] for p in only)


def test_no_prompts_at_all_is_refused(tmp_path):
    seed_manifest(tmp_path / "seeds.jsonl", n=2)
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", tmp_path / "o.jsonl", "--source", "template",
                        "--k", "0"))
    assert r.returncode != 0 and "--k plus --k-attributes must be at least 1" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", tmp_path / "o.jsonl", "--source", "template",
                        "--k", "0", "--k-attributes", "2"))
    assert r.returncode == 0, r.stderr
    assert len(data.read_jsonl(tmp_path / "o.jsonl")) == 4


def test_target_coverage_counts_stated_and_correct_attributes():
    from benchmarks import tiny
    seeds = [{"id": "m.wav", "gender": "Male", "accent": "American", "volume": "Loud"},
             {"id": "f.wav", "gender": "Female", "volume": "Quiet"}]
    rows = [{"id": "m.wav", "response": "The speaker is a man with an American accent."},
            {"id": "m.wav", "response": "It is loud. Is it male or female? Hard to say."},
            {"id": "f.wav", "response": "A female voice, quite quiet."},
            {"id": "f.wav", "response": "Nothing to say."}]
    cov = tiny.target_coverage(rows, seeds)
    assert cov["Gender"] == {"n": 4, "stated": 75.0, "correct": 50.0}     # both genders named: stated, not correct
    assert cov["Accent"] == {"n": 2, "stated": 50.0, "correct": 50.0}
    assert cov["Volume"] == {"n": 4, "stated": 50.0, "correct": 50.0}
    assert "Speakers" not in cov and "| Gender | 4 | 75.0 | 50.0 |" in tiny.coverage_table(cov)
    with pytest.raises(ValueError, match="no clip in the seed manifest"):
        tiny.target_coverage([{"id": "x.wav", "response": ""}], seeds)


def test_balanced_prompts_per_clip_upsample_small_corpora():
    rows = [{"id": f"s{i}", "dataset": "big", "transcription": "x"} for i in range(40)]
    rows += [{"id": f"t{i}", "dataset": "small", "transcription": " "} for i in range(10)]
    rows += [{"id": f"u{i}", "dataset": "tiny", "transcription": " "} for i in range(2)]
    ks = generate.balanced_k(rows, 2)
    assert ks == {"big": 2, "small": 8, "tiny": 8}  # 40x2 = 80 rows; 10x8 = 80; 2x8 capped at 4k
    pools = {"speech": [f"p{i}" for i in range(50)], "sound": [f"q{i}" for i in range(50)]}
    assert len(generate.choose_prompts(rows[45], pools, ks, 0)) == 8


def test_kill_and_resume_gives_the_uninterrupted_rows(random_backbones, tmp_path):
    rows = seed_manifest(tmp_path / "seeds.jsonl")
    llm = random_backbones / "llm"
    straight = tmp_path / "straight.jsonl"
    r = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", straight))
    assert r.returncode == 0, r.stderr
    resumed = tmp_path / "resumed.jsonl"
    p = subprocess.Popen(selfgen_cmd(llm, tmp_path / "seeds.jsonl", resumed), cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    part = tmp_path / "resumed.jsonl.part0"
    deadline = time.time() + 300
    while not (part.is_file() and len(part.read_bytes().splitlines()) >= 12):
        assert p.poll() is None and time.time() < deadline, "finished or stalled before it could be killed"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not resumed.exists()
    with open(part, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"id": "audio/000.wav", "prom')
    r = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", resumed))
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stderr
    a, b = data.read_jsonl(straight), data.read_jsonl(resumed)
    keys = [(x["id"], x["prompt"]) for x in b]
    assert len(keys) == len(set(keys)) == 2 * len(rows)
    assert a == b  # same rows, same text, same order
    assert not list(tmp_path.glob("resumed.jsonl.part*"))
    again = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", resumed))
    assert "nothing to do" in again.stderr


def test_two_ranks_write_disjoint_shards(random_backbones, tmp_path):
    seed_manifest(tmp_path / "seeds.jsonl", n=12)
    llm = random_backbones / "llm"
    single = tmp_path / "single.jsonl"
    assert run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", single)).returncode == 0
    two = tmp_path / "two.jsonl"
    cmd = selfgen_cmd(llm, tmp_path / "seeds.jsonl", two)
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *cmd[1:]])
    assert r.returncode == 0, r.stderr
    assert "rank 0/2" in r.stderr and "rank 1/2" in r.stderr
    assert data.read_jsonl(two) == data.read_jsonl(single)


@pytest.mark.parametrize("bad", ['{"id": "x"}\n', "not json\n"])
def test_bad_seed_rows_are_named(tmp_path, bad):
    (tmp_path / "seeds.jsonl").write_text(json.dumps({"id": "a", "seed_description": "d"}) + "\n" + bad)
    r = run([sys.executable, "generate.py", "selfgen", "--seeds", str(tmp_path / "seeds.jsonl"), "--llm", "x",
             "--out", str(tmp_path / "o.jsonl")])
    assert r.returncode != 0 and "seeds.jsonl:2" in r.stderr


def test_templated_targets_same_pairs_no_llm(tmp_path):
    """--source template (the comparison study): the (clip, prompt) pairs the backbone would get, each
    answered by the fixed template; no model is loaded (the --llm folder need not exist)."""
    rows = seed_manifest(tmp_path / "seeds.jsonl", n=6)
    out = tmp_path / "template.jsonl"
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", out, "--source", "template"))
    assert r.returncode == 0, r.stderr
    got = data.read_jsonl(out)
    pools = {"speech": data.load_prompts(generate.PROMPT_POOLS["speech"]),
             "sound": data.load_prompts(generate.PROMPT_POOLS["sound"])}
    assert [(g["id"], g["prompt"]) for g in got] == [(s["id"], p) for s in rows for p in generate.choose_prompts(s, pools, 2, 42)]
    answers = {g["id"]: g["response"] for g in got}  # the same answer for both prompts of a clip
    assert answers["audio/001.wav"] == 'From 00:00 to 00:02: someone says "Sentence number 1." The gender is Female.'
    assert answers["audio/000.wav"] == "From 00:00 to 00:02: The sound is Beep 0 and the duration is 2s."
    assert len({g["response"] for g in got if g["id"] == "audio/000.wav"}) == 1


def test_templated_answer_golden():
    two = ("[00:00-00:01] Hi. (Gender: Male)\n[00:01-00:02] Bye. (Gender: Female, Accent: Scottish)\n"
           "[00:00-00:02] (Speakers: 2, Background: Mains hum (50 Hz), SNR: 10 dB)")
    assert data.templated_answer(two) == (
        'From 00:00 to 00:01: someone says "Hi." The gender is Male. From 00:01 to 00:02: someone says "Bye." '
        "The gender is Female and the accent is Scottish. From 00:00 to 00:02: The speakers is 2, the background "
        "is Mains hum (50 Hz) and the snr is 10 dB.")
    assert data.templated_answer("[00:00-00:03] (A dog barks)") == "From 00:00 to 00:03: A dog barks."
    with pytest.raises(ValueError, match="not a seed-description line: 'no timestamp'"):
        data.templated_answer("no timestamp")


def test_limit_spreads_rows_evenly():
    """selfgen --limit and evaluate --benchmark ppl --limit keep every corpus's share of a manifest."""
    assert data.evenly_spread(list(range(10)), 3) == [0, 3, 6]
    assert data.evenly_spread(list(range(4)), None) == [0, 1, 2, 3] == data.evenly_spread(list(range(4)), 9)


def test_duplicate_clip_ids_are_refused(tmp_path):
    """Rows are keyed by (id, prompt): two clips with one id used to share (and swap) their rows."""
    rows = seed_manifest(tmp_path / "seeds.jsonl", n=6)
    rows[4]["id"] = rows[1]["id"]
    data.write_jsonl(tmp_path / "seeds.jsonl", rows + [dict(rows[2], seed_description="another")])
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", tmp_path / "o.jsonl"))
    assert r.returncode == 1 and not (tmp_path / "o.jsonl").exists()
    assert "seeds.jsonl:5: id 'audio/001.wav' is also on line 2; each row needs its own id" in r.stderr
    assert "Traceback" not in r.stderr


def test_rerun_with_other_settings_is_refused(random_backbones, tmp_path):
    """A rerun with another --max-new-tokens or --temperature used to add a second kind of row to the
    same file (or call a file written with other settings complete): refused, saying what differs."""
    seed_manifest(tmp_path / "seeds.jsonl", n=4)
    llm, out = random_backbones / "llm", tmp_path / "rows.jsonl"
    assert run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", out, "--limit", "2")).returncode == 0
    for extra, why in [(("--max-new-tokens", "20"), "max_new_tokens=12 (now 20)"),
                       (("--temperature", "0.7"), "temperature=0.05 (now 0.7)"),
                       (("--source", "template"), "source='backbone' (now 'template')"),
                       (("--stop", "x"), "stop=None (now 'x')")]:
        cmd = selfgen_cmd(llm, tmp_path / "seeds.jsonl", out)
        r = run(cmd[:cmd.index("--max-new-tokens")] + ["--batch-size", "4", "--max-new-tokens", "12", *extra])
        assert r.returncode == 1 and f"rows.jsonl was generated with other settings: {why}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert len(data.read_jsonl(out)) == 4  # untouched
    r = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", out))  # the same settings: resumes the other clips
    assert r.returncode == 0, r.stderr
    assert len(data.read_jsonl(out)) == 8


def test_stop_text_ends_each_answer_where_it_first_occurs(random_backbones, tmp_path):
    """--stop keeps each answer up to the first occurrence of the text, marked finished; the rest of the row
    is what the same run without a stop writes (the sampling noise is per row, so the tokens are the same)."""
    assert generate.cut_at_stop("\n\nA (Gender: Male)\n\nThe video is", "\n\n") == ("A (Gender: Male)", True)
    assert generate.cut_at_stop(" no paragraph ", "\n\n") == ("no paragraph", False)
    seed_manifest(tmp_path / "seeds.jsonl", n=6)
    llm = random_backbones / "llm"
    assert run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", tmp_path / "plain.jsonl")).returncode == 0
    plain = data.read_jsonl(tmp_path / "plain.jsonl")
    stop = plain[0]["response"][3:5]  # a piece of text the random backbone writes
    r = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", tmp_path / "cut.jsonl", "--stop", stop))
    assert r.returncode == 0, r.stderr
    cut = data.read_jsonl(tmp_path / "cut.jsonl")
    assert [(c["id"], c["prompt"]) for c in cut] == [(p["id"], p["prompt"]) for p in plain]
    n_cut = 0
    for p, c in zip(plain, cut):
        want, found = generate.cut_at_stop(p["response"], stop)
        assert c["response"] == want
        assert c.get("finished", True) == (found or p.get("finished", True))
        n_cut += found
    assert n_cut >= 1
    r = run(selfgen_cmd(llm, tmp_path / "seeds.jsonl", tmp_path / "e.jsonl", "--stop", ""))
    assert r.returncode == 2 and "argument --stop: must not be empty" in r.stderr, r.stderr


@pytest.mark.parametrize("flag", [("--batch-size", "0"), ("--max-new-tokens", "0"), ("--k", "-1"), ("--k-attributes", "-1"), ("--top-p", "1.5"),
                                  ("--temperature", "-1")])
def test_sizes_that_do_nothing_are_errors(tmp_path, flag):
    seed_manifest(tmp_path / "seeds.jsonl", n=2)
    cmd = selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", tmp_path / "o.jsonl")
    r = run([*cmd, *flag])
    assert r.returncode == 2 and f"argument {flag[0]}: must be" in r.stderr, r.stderr


def test_select_keeps_answers_of_the_form_on_one_voice_clips(tmp_path):
    one = "[00:00-00:02] Hello there. (Gender: Male)"
    two = "[00:00-00:01] Hi. (Gender: Male)\n[00:01-00:02] Bye. (Gender: Female)\n[00:00-00:02] (Speakers: 2)"
    sound = "[00:00-00:02] (Sound: Beep)"
    rows = [generate.training_row({"id": f"a{i}.wav", "seed_description": d, "transcription": "x"}, "Man or woman?", r)
            for i, (d, r) in enumerate([(one, "The speaker is a man."), (one, "The speaker is a man, I think."),
                                        (two, "The speaker is a woman."), (sound, "The speaker is a man.")])]
    kept, dropped = manifests.select_rows(rows, r"The speaker is a (man|woman)\.", one_voice=True)
    assert [r["id"] for r in kept] == ["a0.wav"] and dropped == {"answer": 1, "one_voice": 2}
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    data.write_jsonl(src, rows)
    r = run([sys.executable, "data.py", "select", str(src), "--out", str(out), "--answer", "The speaker is a (man|woman)\\."])
    assert r.returncode == 0, r.stderr
    assert [row["id"] for row in data.read_jsonl(out)] == ["a0.wav", "a2.wav", "a3.wav"]
    r = run([sys.executable, "data.py", "select", str(src), "--out", str(out), "--answer", "Nothing like this"])
    assert r.returncode != 0 and "no row passes" in r.stderr and str(src) in r.stderr
    assert len(data.read_jsonl(out)) == 3  # the earlier output is left as it was


def test_one_voice_takes_only_clips_with_one_spoken_segment(tmp_path):
    """selfgen --one-voice (the demo's questions about the speaker): sound clips and two-voice clips get no rows;
    a manifest with no such clip is an error naming the file, and nothing is written."""
    rows = seed_manifest(tmp_path / "seeds.jsonl", n=6)
    two = {"id": "audio/two.wav", "dataset": "unit", "split": "train", "transcription": "Hi. Bye.",
           "seed_description": "[00:00-00:01] Hi. (Gender: Male)\n[00:01-00:02] Bye. (Gender: Female)"}
    data.write_jsonl(tmp_path / "seeds.jsonl", rows + [two])
    assert [data.one_voice(r["seed_description"]) for r in rows + [two]] == [False, True, True, False, True, True, False]
    out = tmp_path / "t.jsonl"
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "seeds.jsonl", out, "--source", "template", "--one-voice"))
    assert r.returncode == 0, r.stderr
    assert sorted({g["id"] for g in data.read_jsonl(out)}) == ["audio/001.wav", "audio/002.wav", "audio/004.wav",
                                                               "audio/005.wav"]
    sounds = [r for r in rows if not r["transcription"].strip()]
    data.write_jsonl(tmp_path / "sounds.jsonl", sounds)
    r = run(selfgen_cmd(tmp_path / "no-llm", tmp_path / "sounds.jsonl", tmp_path / "none.jsonl", "--source", "template",
                        "--one-voice"))
    assert r.returncode != 0 and "sounds.jsonl: no seed rows with one voice" in r.stderr
    assert not (tmp_path / "none.jsonl").exists()
