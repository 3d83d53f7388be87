"""
tiny: the synthetic corpus's test split as multiple-choice questions on its ground-truth attributes, plus
instruction-following prompts; the coverage of attributes in self-generated targets.
"""

import json
import math
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import data
import desta
from benchmarks.ifeval import follows_instruction, SPEECH_IFEVAL_CHECKERS
from benchmarks.mmau import extract_mmau_answer, mmau_question, mmau_string_match
from corpus import synthetic
from evaluate import (finalize_predictions, llm_dtype, load_backbones, markdown_table, pct, Prompt, run_prompts,
                      Scored, SYSTEM_MCQ, SYSTEM_MMAU, TINY_SYSTEMS, unanswered, write_scores,
                      write_table)
from tools import cli

# -----------------------------------------------------------------------------------------------------
# 7. tiny: the synthetic corpus's held-out test split as multiple-choice questions on its ground truth
#
# Every clip of the corpus was rendered from known settings (the seed manifest keeps them as raw fields),
# so each setting can be asked about with an exact answer. One question per (clip, attribute the clip
# has), all values of the attribute as options, in an order shuffled per question (seeded: a model that
# always picks the first option scores chance). Scored with the MMAU token-set rule. Plus one
# instruction-following prompt per clip (rotating over TINY_IF_PROMPTS), scored by the Speech-IFEval
# checkers. The same rows are answered by DeSTA and by two references that use the same code: the bare
# backbone given the seed description as text (an upper bound: the description *is* the ground truth),
# and the cascade (the backbone given Whisper's transcript).

@dataclass
class TinyAttribute:
    question: str
    value: object    # seed-manifest row -> the answer (one of `options`), or None: the clip lacks it
    options: tuple   # every value the corpus can write for this attribute


def _single(values):  # a list field with one entry -> that entry; several (e.g. two sounds) -> not asked
    return values[0] if isinstance(values, list) and len(values) == 1 else None


def _fmt(template):  # a number field -> its option text; absent -> None
    return lambda v: None if v is None else template.format(v)


# The one table to edit when the corpus changes: description attribute -> question, manifest field, options.
# Options are the corpus's own value tables (corpus/synthetic.py), so a new value there is a new option here. Questions
# name the attribute as the description does, and by likelihood the reply is scored as "{name}: {option}",
# the description's own wording. SmolLM2-135M given the description as text (60 test clips, 216 questions,
# macro over attributes): options listed in the question and replied bare 33.4% (it copies from the list);
# listed + "{name}: " 56.5%; question alone + "{name}: " 84.1% (used); by generation in MMAU's format 26.2%.
# Left out on purpose: per-speaker attributes of two-speaker clips (the top-level fields exist only for
# one speaker), the exact key ("C major" and "C# major" are the same MMAU tokens: only the mode is asked),
# and Duration (a number, not a class).
TINY_ATTRIBUTES = {
    "Gender": TinyAttribute("What is the speaker's gender?", lambda r: r.get("gender"), tuple(synthetic.VOICE_VARIANTS)),
    "Accent": TinyAttribute("What is the speaker's accent?", lambda r: r.get("accent"), tuple(synthetic.ACCENTS)),
    "Speaking rate": TinyAttribute("What is the speaker's speaking rate?", lambda r: r.get("rate"),
                                   tuple(synthetic.SPEAKING_RATES)),
    "Pitch": TinyAttribute("What is the speaker's pitch?", lambda r: r.get("pitch"), tuple(synthetic.PITCH_LEVELS)),
    "Speakers": TinyAttribute("How many speakers are there?", lambda r: _fmt("{}")(r.get("num_speakers")),
                              ("1", "2")),
    "Background": TinyAttribute("What is the background?", lambda r: r.get("background"),
                                tuple(synthetic.BACKGROUNDS)),
    "SNR": TinyAttribute("What is the SNR?",
                         lambda r: _fmt("{:g} dB")(r.get("snr_db")), tuple(f"{v:g} dB" for v in synthetic.SNR_LEVELS_DB)),
    "Sound": TinyAttribute("What is the sound?", lambda r: _single(r.get("sound")), tuple(synthetic.SOUNDS)),
    "Instrument": TinyAttribute("Which instrument plays the music?", lambda r: r.get("instrument"),
                                tuple(synthetic.INSTRUMENTS)),
    "Texture": TinyAttribute("What does the music play?", lambda r: r.get("texture"), tuple(synthetic.TEXTURES)),
    "Drums": TinyAttribute("Are there drums in the music?",
                           lambda r: {True: "Yes", False: "No"}.get(r.get("drums")), ("Yes", "No")),
    "Mode": TinyAttribute("Is the key major or minor?",
                          lambda r: r["key"].split()[-1] if r.get("key") else None, tuple(synthetic.SCALES)),
    "Tempo": TinyAttribute("What is the tempo?", lambda r: _fmt("{:g} bpm")(r.get("tempo_bpm")),
                           tuple(f"{b:g} bpm" for b in synthetic.TEMPOS_BPM)),
    "Volume": TinyAttribute("What is the volume?", lambda r: r.get("volume"), tuple(synthetic.VOLUME_LEVELS)),
}
# (instruction, Speech-IFEval instruction id, checker kwargs): Speech-IFEval-style prompts about the clip
TINY_IF_PROMPTS = (
    ("Describe the audio in all lowercase letters. No capital letters are allowed.",
     "change_case:english_lowercase", {}),
    ("Describe the audio. Your entire response should be in English, and in all capital letters.",
     "change_case:english_capital", {}),
    ("Describe the audio in fewer than 30 words.", "length_constraints:number_words",
     {"num_words": 30, "relation": "less than"}),
    ("Describe the audio. Wrap your entire response with double quotation marks.", "startend:quotation", {}),
    ('Describe the audio. Finish your response with this exact phrase "Is there anything else?". '
     "No other words should follow this phrase.", "startend:end_checker", {"end_phrase": "Is there anything else?"}),
    ("List exactly 3 things you notice in the audio. Use the markdown bullet points such as:\n* This is a point.",
     "detectable_format:number_bullet_lists", {"num_bullets": 3}),
    ("Describe the audio without using any commas.", "punctuation:no_comma", {}),
    ("Give the audio a title wrapped in double angular brackets, such as <<my title>>, then describe it.",
     "detectable_format:title", {}),
)
TINY_SPLIT = "test"
TINY_SEED = 0
TINY_MCQ_MAX_NEW_TOKENS = 48   # an option is a few words; the cap keeps a rambling answer cheap
# How multiple choice is answered. A 135M backbone rarely names an option when asked to (SmolLM2 given the
# seed description as text scores below chance by generation), so the tiny benchmark compares the options'
# likelihoods, as small-model MCQ evaluation does; "generate" keeps MMAU's format and rule.
TINY_MCQ = "likelihood"


def load_tiny(path, split=TINY_SPLIT, audio_root=None, limit=None, seed=TINY_SEED):
    """A seed manifest -> question rows for its `split` clips. limit N: N clips taken in turn from each
    dataset (speech, sound, music), so a small run still asks about every kind; manifest order is kept.
    Audio paths are audio_root / id (default: the manifest's folder, where the corpus writes them)."""
    path = Path(path)
    manifest = data.read_jsonl(path, required=("id", "seed_description", "split"))
    clips = [r for r in manifest if r["split"] == split]
    if limit is not None:
        by_dataset = defaultdict(list)
        for n, r in enumerate(clips):
            by_dataset[r.get("dataset")].append(n)
        turns = sorted((k, n) for ns in by_dataset.values() for k, n in enumerate(ns))  # round k of each dataset
        clips = [clips[n] for n in sorted(n for _, n in turns[:limit])]
    if not clips:
        raise ValueError(f"{path}: no clips with split={split!r}")
    root = Path(audio_root) if audio_root else path.parent
    rows = []
    for i, clip in enumerate(clips):
        base = {"clip": clip["id"], "audio": str(root / clip["id"]), "seed_description": clip["seed_description"]}
        for name, attr in TINY_ATTRIBUTES.items():
            value = attr.value(clip)
            if value is None:
                continue
            if value not in attr.options:
                raise ValueError(f"{path}: clip {clip['id']}: {name} {value!r} is not one of {list(attr.options)} "
                                 "(update evaluate.TINY_ATTRIBUTES to the corpus)")
            choices = list(attr.options)
            random.Random(f"{seed}:{clip['id']}:{name}").shuffle(choices)
            rows.append({**base, "id": f"{clip['id']}#{name}", "kind": "mcq", "attribute": name,
                         "question": attr.question, "choices": choices, "answer": value})
        instruction, iid, kwargs = TINY_IF_PROMPTS[i % len(TINY_IF_PROMPTS)]
        rows.append({**base, "id": f"{clip['id']}#if", "kind": "if", "instruction": instruction,
                     "instruction_id_list": [iid], "kwargs": [kwargs]})
    return rows


def tiny_prompt(row, mcq=TINY_MCQ):
    # The training layout (generate.answer, generate.backbone_messages): audio, a newline, the prompt.
    # mcq "likelihood": the likeliest option is the answer (SYSTEM_MCQ asks for the bare option); "generate":
    # a greedy answer in MMAU's format, scored by MMAU's rule.
    if row["kind"] == "mcq":
        if mcq == "likelihood":  # the question alone: listing the options makes a 135M model copy from the list
            return Prompt(row["id"], SYSTEM_MCQ, row["question"], [row["audio"]], "\n", texts=[row["seed_description"]],
                          options=list(row["choices"]), reply_prefix=f"{row['attribute']}: ")
        return Prompt(row["id"], SYSTEM_MMAU, mmau_question(row["question"], row["choices"]), [row["audio"]], "\n",
                      texts=[row["seed_description"]], max_new_tokens=TINY_MCQ_MAX_NEW_TOKENS)
    return Prompt(row["id"], desta.DEFAULT_SYSTEM, row["instruction"], [row["audio"]], "\n", texts=[row["seed_description"]])


def score_tiny(rows, responses):
    """Per attribute: accuracy (MMAU rule) and chance (1 / options); their macro means over attributes;
    the instruction-following rate (strict, Speech-IFEval checkers) overall and per instruction."""
    records, per_attr, per_inst = [], defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
    for row in rows:
        response = responses.get(row["id"]) or ""
        if row["kind"] == "mcq":
            pred = extract_mmau_answer(response)
            ok = mmau_string_match(row["answer"], pred, row["choices"])
            per_attr[row["attribute"]][0] += ok
            per_attr[row["attribute"]][1] += 1
            records.append({"id": row["id"], "prompt": mmau_question(row["question"], row["choices"]),
                            "response": response, "extracted": pred, "answer": row["answer"], "correct": ok,
                            "attribute": row["attribute"], "clip": row["clip"]})
        else:
            iid, kw = row["instruction_id_list"][0], row["kwargs"][0]
            ok = follows_instruction(SPEECH_IFEVAL_CHECKERS, iid, response, kw, f"tiny row {row['id']}")
            per_inst[iid][0] += ok
            per_inst[iid][1] += 1
            records.append({"id": row["id"], "prompt": row["instruction"], "response": response, "extracted": [ok],
                            "correct": ok, "instruction_id_list": [iid], "clip": row["clip"]})
    # majority: always answering the attribute's most frequent test answer (the classes are not balanced:
    # most clips have one speaker), the bar a model that learnt only the label prior would reach
    answers = defaultdict(Counter)
    for row in rows:
        if row["kind"] == "mcq":
            answers[row["attribute"]][row["answer"]] += 1
    attributes = {name: {"acc": pct(*per_attr[name]), "n": per_attr[name][1],
                         "chance": 100.0 / len(TINY_ATTRIBUTES[name].options),
                         "majority": pct(answers[name].most_common(1)[0][1], per_attr[name][1])}
                  for name in TINY_ATTRIBUTES if name in per_attr}
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    hits, total = sum(v[0] for v in per_inst.values()), sum(v[1] for v in per_inst.values())
    scores = {
        "attributes": attributes,
        "mcq": {"acc": mean([a["acc"] for a in attributes.values()]),
                "acc_pooled": pct(sum(v[0] for v in per_attr.values()), sum(v[1] for v in per_attr.values())),
                "chance": mean([a["chance"] for a in attributes.values()]),
                "majority": mean([a["majority"] for a in attributes.values()]),
                "n": sum(a["n"] for a in attributes.values())},
        "instruction_following": {"rate": pct(hits, total), "n": total,
                                  "per_instruction": {k: pct(*v) for k, v in sorted(per_inst.items())}},
        "no_prediction": sum(r["id"] not in responses for r in rows),
    }
    return Scored(records, scores)


# Do the self-generated targets carry the audio? For each target whose clip has an attribute, whether the
# answer states a value of it (any option's words) and states the right one (the true option's words and no
# other option's). Word matching: a rough measure, meant to compare data designs, not to grade answers.
# Speakers, SNR and Drums are left out: their options ("1", "Yes") cannot be told apart from other words.
STATED_SYNONYMS = {("Gender", "Male"): ("man", "men", "he", "his", "him", "gentleman", "boy"),
                   ("Gender", "Female"): ("woman", "women", "she", "her", "lady", "girl"),
                   ("Speaking rate", "Slow"): ("slowly",), ("Speaking rate", "Fast"): ("quickly", "rapidly")}
COVERAGE_SKIP = ("Speakers", "SNR", "Drums")


def _option_pattern(name, option):
    words = [re.sub(r"\s*\(.*\)", "", option), *STATED_SYNONYMS.get((name, option), ())]
    return re.compile(r"\b(" + "|".join(re.escape(w).replace(r"\ ", r"\s*") for w in words) + r")\b", re.I)


def target_coverage(train_rows, seed_rows):
    """-> {attribute: {"n": targets whose clip has it, "stated": % stating a value, "correct": % stating the
    true value alone}} over training rows, joined to the seed manifest by clip id."""
    clips = {r["id"]: r for r in seed_rows}
    patterns = {name: {o: _option_pattern(name, o) for o in attr.options}
                for name, attr in TINY_ATTRIBUTES.items() if name not in COVERAGE_SKIP}
    counts = defaultdict(lambda: [0, 0, 0])
    for row in train_rows:
        clip = clips.get(row["id"])
        if clip is None:
            raise ValueError(f"training row {row['id']!r} has no clip in the seed manifest")
        for name, pats in patterns.items():
            value = TINY_ATTRIBUTES[name].value(clip)
            if value is None:
                continue
            said = {o for o, pat in pats.items() if pat.search(row["response"])}
            c = counts[name]
            c[0] += 1
            c[1] += bool(said)
            c[2] += said == {value}
    return {name: {"n": n, "stated": pct(st, n), "correct": pct(ok, n)} for name, (n, st, ok) in counts.items()}


def coverage_table(coverage) -> str:
    lines = ["| Attribute | targets with it | state a value (%) | state the true value (%) |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {v['stated']:.1f} | {v['correct']:.1f} |" for k, v in coverage.items()]
    return "\n".join(lines)


def wilson_interval(acc, n, z=1.96):
    """95% Wilson score interval (in %) of an accuracy `acc` (%) over n questions."""
    if not n or acc is None:
        return None
    p = acc / 100
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n))


def macro_interval(attributes, z=1.96):
    """95% normal interval (in %) of a macro mean of independent per-attribute accuracies."""
    accs = [(a["acc"] / 100, a["n"]) for a in attributes.values() if a["n"]]
    mean = sum(p for p, _ in accs) / len(accs)
    half = z * math.sqrt(sum(p * (1 - p) / n for p, n in accs)) / len(accs)
    return (100 * max(0.0, mean - half), 100 * min(1.0, mean + half))


def _interval(ci):
    return "-" if ci is None else f"{ci[0]:.1f}-{ci[1]:.1f}"


def tiny_table(scores_by_system):
    """{system: score_tiny scores} -> markdown: one row per attribute, n, chance and the majority class next
    to each system, and DeSTA's 95% interval (Wilson per attribute; normal over the macro mean)."""
    systems = [s for s in TINY_SYSTEMS if s in scores_by_system]
    ci = "DeSTA 95% CI" if "desta" in systems else None
    columns = ("n", "chance", "majority", *(TINY_SYSTEMS[s] for s in systems), *((ci,) if ci else ()))
    first = scores_by_system[systems[0]]
    rows = {}
    for name, a in first["attributes"].items():
        rows[name] = {"n": a["n"], "chance": a["chance"], "majority": a["majority"],
                      **{TINY_SYSTEMS[s]: scores_by_system[s]["attributes"][name]["acc"] for s in systems}}
        if ci:
            d = scores_by_system["desta"]["attributes"][name]
            rows[name][ci] = _interval(wilson_interval(d["acc"], d["n"]))
    rows["All attributes (macro)"] = {"n": first["mcq"]["n"], "chance": first["mcq"]["chance"],
                                      "majority": first["mcq"]["majority"],
                                      **{TINY_SYSTEMS[s]: scores_by_system[s]["mcq"]["acc"] for s in systems}}
    rows["Instruction following"] = {"n": first["instruction_following"]["n"],
                                     **{TINY_SYSTEMS[s]: scores_by_system[s]["instruction_following"]["rate"]
                                        for s in systems}}
    if ci:
        rows["All attributes (macro)"][ci] = _interval(macro_interval(scores_by_system["desta"]["attributes"]))
        d = scores_by_system["desta"]["instruction_following"]
        rows["Instruction following"][ci] = _interval(wilson_interval(d["rate"], d["n"]))
    return markdown_table(rows, columns, label="Attribute")


# ---- command line: python evaluate.py --benchmark tiny (evaluate.main dispatches here) ----

def main_tiny(args):
    """Every system on the tiny questions, one predictions file each; the report compares them."""
    systems = args.systems.split(",") if args.systems else (
        ["desta", "text", "cascade"] if args.checkpoint else ["text", "cascade"])
    unknown = [s for s in systems if s not in TINY_SYSTEMS]
    if unknown:
        raise ValueError(f"unknown system(s) {unknown}; one of {list(TINY_SYSTEMS)}")
    if "desta" in systems and not args.checkpoint:
        raise ValueError("the desta system needs --checkpoint")
    rows = load_tiny(args.data, args.split, args.audio_root, args.limit, args.seed)
    prompts = [tiny_prompt(r, args.mcq) for r in rows]
    out, name = Path(args.out), "tiny" if args.mcq == "likelihood" else "tiny-generate"
    pending = [s for s in systems if unanswered(out / f"{name}.{s}.predictions.jsonl", prompts)]
    bb = None  # nothing to answer (a finished run re-scored): no model is loaded
    if pending:
        bb = load_backbones(args.checkpoint, args.llm, args.asr, need_asr=pending != ["text"],
                            dtype=llm_dtype(args), device=args.device,
                            encoder_dtype=cli.DTYPES[args.encoder_dtype])
        bb.language = args.language
    scores, stats = {}, {}
    for system in systems:
        path = out / f"{name}.{system}.predictions.jsonl"
        responses, done, stats[system] = run_prompts(bb, system, prompts, path, args.max_new_tokens,
                                                     args.batch_size, args.chunk)
        scored = score_tiny(rows, responses)
        finalize_predictions(path, scored.records, done)
        scores[system] = scored.scores
    table = tiny_table(scores)
    report = {"systems": scores, "columns": {s: TINY_SYSTEMS[s] for s in systems}, "run": stats,
              "data": str(args.data), "split": args.split, "checkpoint": args.checkpoint, "mcq": args.mcq}
    write_scores(out / f"{name}.scores.json", report)
    write_table(out / f"{name}.md", table)
    print(table)
    print(f"wrote {out}/{name}.{{{','.join(systems)}}}.predictions.jsonl, {name}.scores.json, {name}.md",
          file=sys.stderr)
    return report


def main_coverage(args):
    """--benchmark coverage: how many self-generated targets (--data) state each attribute of their seed (--seeds)."""
    cov = target_coverage(data.read_jsonl(args.data, required=("id", "response")), data.read_jsonl(args.seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coverage.json").write_text(json.dumps(cov, indent=2))
    print(coverage_table(cov))
    return cov


# ---- the demo's results page: python evaluate.py --benchmark report ----

def read_train_log(path):
    """train.py's log.jsonl -> (train [(step, loss)], validation [(step, val_loss)]). A resumed run
    appends the steps it repeats; the last record of a step wins."""
    train, val = {}, {}
    for r in data.read_appended(path):
        if "loss" in r:
            train[r["step"]] = r["loss"]
        if "val_loss" in r:
            val[r["step"]] = r["val_loss"]
    return sorted(train.items()), sorted(val.items())


def plot_losses(runs, path, smooth=0.9):
    """Training loss (raw, and an exponential moving average) and validation loss per step, one colour per
    run -> a PNG. runs: {label: (train, val)} as read_train_log gives."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for (label, (train, val)), colour in zip(runs.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        if train:
            steps, losses = zip(*train)
            ema, avg = [], losses[0]
            for x in losses:
                avg = smooth * avg + (1 - smooth) * x
                ema.append(avg)
            ax.plot(steps, losses, color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps, ema, color=colour, label=f"{label}: train (EMA {smooth})")
        if val:
            ax.plot(*zip(*val), "o--", color=colour, label=f"{label}: validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per target token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


REPORT_ATTRIBUTES = ("Gender", "Background")  # what the features must carry (Whisper hears them plainly)


def main_report(args):
    """The demo's results page: per run folder (RUN/train = train.py's out_dir, RUN/eval = the tiny
    benchmark, RUN/eval/ppl-*.scores.json = target perplexity), the attribute table of the first run, the
    comparison of all runs, and the loss plot. --data RUN[,RUN...]; labels from --model-name A,B."""
    runs = [Path(r) for r in args.data.split(",")]
    labels = args.model_name.split(",") if args.model_name else [r.name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"--model-name gives {len(labels)} labels for {len(runs)} runs")
    out = Path(args.out)
    losses, rows, first_table = {}, {}, None
    for run, label in zip(runs, labels):
        log = run / "train" / "log.jsonl"
        scores_path = run / "eval" / "tiny.scores.json"
        for need in (log, scores_path):
            if not need.is_file():
                raise FileNotFoundError(f"{need}: missing (train and evaluate {run} first)")
        losses[label] = read_train_log(log)
        report = desta.read_json(scores_path)
        if first_table is None:
            first_table = tiny_table(report["systems"])
        desta_scores = report["systems"]["desta"]
        text_scores = report["systems"].get("text")
        ppl = [desta.read_json(p)["ppl"] for p in sorted((run / "eval").glob("ppl-*.scores.json"))]
        train, val = losses[label]
        row = {"targets PPL": ppl[0] if ppl else None, "steps": train[-1][0] if train else None,
               "final train loss": train[-1][1] if train else None, "val loss": val[-1][1] if val else None,
               "attributes (macro)": desta_scores["mcq"]["acc"]}
        for name in REPORT_ATTRIBUTES:
            row[name] = desta_scores["attributes"].get(name, {}).get("acc")
        row["instruction following"] = desta_scores["instruction_following"]["rate"]
        rows[label] = row
        if text_scores and "bare backbone (text)" not in rows:
            rows["bare backbone (text)"] = {"attributes (macro)": text_scores["mcq"]["acc"],
                                            **{n: text_scores["attributes"].get(n, {}).get("acc")
                                               for n in REPORT_ATTRIBUTES},
                                            "instruction following": text_scores["instruction_following"]["rate"]}
    columns = ("targets PPL", "steps", "final train loss", "val loss", "attributes (macro)", *REPORT_ATTRIBUTES,
               "instruction following")
    comparison = markdown_table(rows, columns, label="run")
    plot_losses(losses, out / "loss.png")
    text = (f"# DeSTA2.5-Audio, tiny preset: results\n\n"
            f"Held-out test clips of the synthetic corpus ({runs[0] / 'eval'}); multiple choice by option likelihood, "
            f"instruction following by Speech-IFEval's checkers on generated answers.\n\n"
            f"## {labels[0]}: every attribute\n\n{first_table}\n"
            f"## Runs\n\n{comparison}\n![training and validation loss](loss.png)\n")
    write_table(out / "results.md", text)
    print(text)
    print(f"wrote {out / 'results.md'} and {out / 'loss.png'}", file=sys.stderr)
    return rows
