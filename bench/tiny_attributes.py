"""
The tiny benchmark's attribute questions alone, for DeSTA, by option likelihood: a few minutes instead of
the whole `evaluate.py --benchmark tiny` run, e.g. to see whether a recipe moves one attribute.

    python bench/tiny_attributes.py runs/cur/st5/ckpt-00000200 --attributes Gender

Same rows, prompts, transcripts and scoring as the benchmark (benchmarks/tiny.py); predictions are appended
to --out and a rerun resumes. Prints each attribute's accuracy with a 95% normal interval, n, and how often
each option was picked (a model at the label prior picks one option for every clip).
"""
import argparse
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evaluate  # noqa: E402
from benchmarks import tiny  # noqa: E402
from tools import cli  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("checkpoint")
    ap.add_argument("--attributes", default="Gender", help="comma-separated: " + ", ".join(tiny.TINY_ATTRIBUTES))
    ap.add_argument("--seeds", default="data_tiny/seed_manifest.jsonl")
    ap.add_argument("--split", default=tiny.TINY_SPLIT, choices=("validation", "test"),
                    help="clips asked (validation: a dev set for picking a checkpoint without the test clips)")
    ap.add_argument("--out", help="predictions file (default: CHECKPOINT/tiny_attributes[_SPLIT].jsonl)")
    a = ap.parse_args()
    names = a.attributes.split(",")
    unknown = [n for n in names if n not in tiny.TINY_ATTRIBUTES]
    if unknown:
        sys.exit(f"--attributes: unknown {unknown}; choose from {list(tiny.TINY_ATTRIBUTES)}")
    rows = [r for r in tiny.load_tiny(a.seeds, split=a.split) if r["kind"] == "mcq" and r["attribute"] in names]
    dtype, why = cli.pick_dtype("cpu")
    print(f"LLM dtype: {why}", file=sys.stderr)
    bb = evaluate.load_backbones(a.checkpoint, dtype=dtype)
    out = Path(a.out or Path(a.checkpoint) / ("tiny_attributes.jsonl" if a.split == tiny.TINY_SPLIT
                                                     else f"tiny_attributes_{a.split}.jsonl"))
    responses, _, _ = evaluate.run_prompts(bb, "desta", [tiny.tiny_prompt(r) for r in rows], out)
    for name in names:
        mine = [r for r in rows if r["attribute"] == name]
        n, p = len(mine), sum(responses[r["id"]] == r["answer"] for r in mine) / len(mine)
        picks = Counter(responses[r["id"]] for r in mine)
        print(f"{a.checkpoint} {a.split} {name}: {100 * p:.1f}% +- {196 * math.sqrt(p * (1 - p) / n):.1f} (n {n}); "
              f"picks {dict(picks.most_common())}")


if __name__ == "__main__":
    main()
