"""Manifest tools beside the method: choose training rows by the form of their answer (the tiny recipe's
cleaning, `python data.py select`) and count clips, hours and rows per corpus (`python data.py summary`)."""

import re
import sys

from data import ManifestError, one_voice as has_one_voice, read_jsonl, training_row_problem, write_jsonl


def select_rows(rows: list[dict], answer: str | None = None, one_voice: bool = False) -> tuple[list[dict], dict]:
    """The training rows to keep, and how many each test dropped: answer = a regex the whole response must
    match (e.g. the plain forms of a short answer); one_voice = the seed description has one spoken
    segment (a "man or woman?" target is only well defined for one voice). The targets stay the backbone's
    own answers: this only chooses which of them to train on (the tiny recipe, README "Demo")."""
    pattern = re.compile(answer) if answer else None
    kept, dropped = [], {"answer": 0, "one_voice": 0}
    for row in rows:
        if one_voice and not has_one_voice(row.get("seed_description", "")):
            dropped["one_voice"] += 1
        elif pattern and not pattern.fullmatch(row["response"].strip()):
            dropped["answer"] += 1
        else:
            kept.append(row)
    return kept, dropped


def summary_table(seed_rows: list[dict], train_rows: list[dict] | None = None) -> str:
    """Markdown table: clips, hours and training rows per dataset and split."""
    rows_per = {}
    for r in train_rows or []:
        rows_per[r["id"]] = rows_per.get(r["id"], 0) + 1
    groups = {}
    for r in seed_rows:
        g = groups.setdefault((r.get("dataset", "?"), r.get("split", "?")), [0, 0.0, 0])
        g[0] += 1
        g[1] += float(r.get("duration") or 0) / 3600
        g[2] += rows_per.get(r["id"], 0)
    lines = ["| dataset | split | clips | hours | training rows |", "|---|---|---:|---:|---:|"]
    for (ds, split), (n, h, k) in sorted(groups.items()):
        lines.append(f"| {ds} | {split} | {n} | {h:.2f} | {k} |")
    tot = [sum(g[i] for g in groups.values()) for i in range(3)]
    lines.append(f"| **all** | | {tot[0]} | {tot[1]:.2f} | {tot[2]} |")
    return "\n".join(lines)


def main_select(args):
    try:
        rows = read_jsonl(args.manifest, check=training_row_problem)  # its errors name the file and line
        kept, dropped = select_rows(rows, args.answer, args.one_voice)
    except ManifestError as e:
        sys.exit(f"error: {e}")
    except re.error as e:
        sys.exit(f"error: --answer {args.answer!r} is not a valid regex ({e})")
    if not kept:
        sys.exit(f"error: {args.manifest}: no row passes (dropped {dropped}); {args.out} not written")
    write_jsonl(args.out, kept)
    print(f"{args.out}: kept {len(kept)} of {len(rows)} rows (dropped: {dropped})")


def add_commands(sub) -> None:
    """data.py's `select` and `summary` subcommands."""
    s = sub.add_parser("select", help="keep the training rows whose answer has a given form (tiny recipe)")
    s.add_argument("manifest", help="training manifest to read")
    s.add_argument("--out", required=True, help="training manifest to write (atomically)")
    s.add_argument("--answer", help="a regex the whole response must match")
    s.add_argument("--one-voice", action="store_true", help="only clips whose seed description has one spoken segment")
    s.set_defaults(run=main_select)
    m = sub.add_parser("summary", help="clips, hours and training rows per dataset and split")
    m.add_argument("seeds", help="seed manifest")
    m.add_argument("train", nargs="*", help="training manifest(s)")
    m.set_defaults(run=lambda a: print(summary_table(read_jsonl(a.seeds), [r for t in a.train for r in read_jsonl(t)])))
