"""
MMAU test-mini (paper Table I): loader, the authors' prompt, the official token-set scorer.
"""

import re
from collections import defaultdict
from pathlib import Path

from desta import read_json
from evaluate import pct, Prompt, require, Scored, SYSTEM_MMAU

# -----------------------------------------------------------------------------------------------------
# 1. MMAU test-mini: JSON list of {id, audio_id, question, choices, answer, task, difficulty, sub-category}

MMAU_FIELDS = ("id", "audio_id", "question", "choices", "answer", "task", "difficulty")
MMAU_ANSWER_PREFIX = "The correct answer is: "


def load_mmau(path, audio_root=None):
    """MMAU json -> rows; `audio` = audio_root / audio_id (without its leading './'), as the authors'
    inference script joins them. audio_root defaults to the json file's folder."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of MMAU items")
    root = Path(audio_root) if audio_root else path.parent
    rows = []
    for n, item in enumerate(data):
        require(item, MMAU_FIELDS, f"{path} item {n}")
        if not isinstance(item["choices"], list) or not item["choices"]:
            raise ValueError(f"{path} item {n}: 'choices' must be a non-empty list")
        row = dict(item, id=str(item["id"]))
        row["audio"] = str(root / item["audio_id"].replace("./", "", 1))
        rows.append(row)
    return rows


def mmau_question(question, choices):
    """The authors' user text: '{question} Choose from the following options: "c1", "c2", "c3" or "c4"'
    (comma-separated, ' or ' before the last, no Oxford comma; one choice is just '"c1"')."""
    quoted = [f'"{c}"' for c in choices]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"{question} Choose from the following options: {listed}"


def mmau_prompt(row):
    return Prompt(row["id"], SYSTEM_MMAU, mmau_question(row["question"], row["choices"]), [row["audio"]])


def extract_mmau_answer(response):
    """The prediction the authors score: the response without "The correct answer is: ", stripped. We
    also unwrap a quoted answer ('"A woman".' -> 'A woman'); quotes and stops are not word tokens, so
    this does not change the score, only makes predictions readable."""
    pred = response.replace(MMAU_ANSWER_PREFIX, "").strip()
    m = re.fullmatch(r"[\"“]([^\"“”]*)[\"”]\s*[.!]?", pred)
    return m.group(1).strip() if m else pred.strip("\"'“”").strip()


def _mmau_tokens(text):
    return set(re.findall(r"\b\w+\b", text.lower()))


def mmau_string_match(answer, prediction, choices):
    """The official MMAU rule (Sakshi113/MMAU evaluation.py): correct iff every answer token is in the
    prediction and no token that only wrong choices have is; an empty prediction is wrong."""
    pred, gold = _mmau_tokens(prediction), _mmau_tokens(answer)
    if not pred:
        return False
    wrong_only = set()
    for choice in choices:
        tokens = _mmau_tokens(choice)
        if tokens != gold:
            wrong_only |= tokens - gold
    return gold <= pred and not (pred & wrong_only)


def score_mmau(rows, responses):
    """Accuracy per task, difficulty, sub-category and in total. A row with no response scores as an
    empty prediction (wrong) and is counted in 'no_prediction'."""
    records, tally = [], defaultdict(lambda: [0, 0])
    for row in rows:
        response = responses.get(row["id"])
        pred = extract_mmau_answer(response or "")
        ok = mmau_string_match(row["answer"], pred, row["choices"])
        groups = {"task": row["task"], "difficulty": row["difficulty"], "sub-category": row.get("sub-category")}
        for kind, name in [*groups.items(), ("total", "all")]:
            if name is not None:
                tally[kind, name][0] += ok
                tally[kind, name][1] += 1
        records.append({"id": row["id"], "prompt": mmau_question(row["question"], row["choices"]),
                        "response": response, "extracted": pred, "answer": row["answer"], "correct": ok,
                        **groups})
    scores = {kind: {} for kind in ("task", "difficulty", "sub-category")}
    for (kind, name), (hits, total) in sorted(tally.items()):
        if kind != "total":
            scores[kind][name] = {"acc": pct(hits, total), "n": total}
    hits, total = tally["total", "all"]
    scores["total"] = {"acc": pct(hits, total), "n": total}
    scores["no_prediction"] = sum(r["id"] not in responses for r in rows)
    return Scored(records, scores)


# ---- the registry's interface (evaluate.BENCHMARKS) ----

def load(path, subset=None):
    return load_mmau(path)


def prompts(rows):
    return [mmau_prompt(r) for r in rows]


def score(rows, responses, **_):
    return score_mmau(rows, responses)


def table_i_cells(scores):
    return {"MMAU": scores["total"]["acc"]}
