"""
Does a tiny-preset adapter hear the speaker's gender? The "Gender, 2-way" measure of bench/exp4_tiny.md:
for every single-speaker clip of the test split (with --split validation, of the dev split), the likelier of
two teacher-forced answers to the question the adapter was trained with, "The speaker is a man." vs "... a
woman." With --other each clip is given the next clip's audio instead: a model that uses the audio falls to
chance there. --question and --forms ask another wording (a wording the adapter was not trained with measures
transfer).

    python bench/gender_two_way.py runs/cur/st1/ckpt-00000250 [--other]
    python bench/gender_two_way.py CKPT --question "Name the speaker's gender." \
        --forms "The speaker's gender is male." "The speaker's gender is female."

It reads the encoder taps from the training feature cache (train.py's settings for the checkpoint's
preset). It asks one wording only: `evaluate.py --benchmark tiny` is the measure of what the model
answers to other questions.
"""
import argparse
import math
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import desta  # noqa: E402
import generate  # noqa: E402
import train  # noqa: E402
from benchmarks import tiny  # noqa: E402
from tools import cli  # noqa: E402

QUESTION = "Is the speaker a man or a woman?"
FORMS = {"Male": "The speaker is a man.", "Female": "The speaker is a woman."}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--seeds", default="data_tiny/seed_manifest.jsonl")
    ap.add_argument("--split", default=tiny.TINY_SPLIT, choices=("validation", "test"),
                    help="clips asked (validation: a dev set for picking a checkpoint without the test clips)")
    ap.add_argument("--other", action="store_true", help="give each clip the next clip's audio")
    ap.add_argument("--question", default=QUESTION)
    ap.add_argument("--forms", nargs=2, metavar=("MALE", "FEMALE"), default=list(FORMS.values()),
                    help="the two answers compared, male first")
    ap.add_argument("--system", default=desta.DEFAULT_SYSTEM,
                    help="system prompt (default: the training rows'; the tiny benchmark asks with "
                    "evaluate.SYSTEM_MCQ)")
    a = ap.parse_args()
    forms = dict(zip(FORMS, a.forms))
    cfg = train.parse_config([])
    dtype, why = cli.pick_dtype("cpu")
    model = desta.DeSTA.from_pretrained(a.checkpoint, dtype=dtype).eval()
    seeds = [r for r in data.read_jsonl(a.seeds) if r.get("split") == a.split and r.get("num_speakers") == 1]
    if not seeds:
        sys.exit(f"{a.seeds}: no single-speaker {a.split} clips")
    # (clip, form) pairs
    rows = [generate.training_row(s, a.question, forms[g], a.system) for s in seeds for g in forms]
    feats = train.feature_cache(cfg, model, rows, 0, 1, lambda *m: None)
    ds = data.AudioTextDataset(rows, cfg.data_root, model.whisper.cfg.n_mels, feats)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else nullcontext()
    right = says_female = 0
    with torch.no_grad(), amp:
        for i, s in enumerate(seeds):
            j = (i + 1) % len(seeds) if a.other else i
            audio = train.batch_audio(data.collate([ds[2 * j]]), "cpu")  # clip j's taps; both forms share them
            loss = {}
            for k, g in enumerate(forms):
                text = data.collate([ds[2 * i + k]])
                loss[g] = model(audio, train.model_inputs(model, text, cfg.val_max_seq_len, "cpu")).item()
            pick = min(loss, key=loss.get)
            right += pick == s["gender"]
            says_female += pick == "Female"
    n, p = len(seeds), right / len(seeds)
    truth = sum(s["gender"] == "Female" for s in seeds)
    print(f"{a.checkpoint} ({a.split}, {'next clip' if a.other else 'own'} audio, {why}): {a.question!r} "
          f"2-way {100 * p:.1f}% +- {196 * math.sqrt(p * (1 - p) / n):.1f} (n {n}); says {a.forms[1]!r} {says_female} times (truth {truth})")


if __name__ == "__main__":
    main()
