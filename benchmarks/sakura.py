"""
SAKURA (paper Table I): the official GPT-4o judge protocol, or an approximate rule-based option matcher.
"""

import csv
import re
from collections import defaultdict
from pathlib import Path

from benchmarks.common import judge_chat
from benchmarks.dynamic_superb import mentioned_labels, _norm_text
from evaluate import MCQ_AUDIO_SEP, pct, Prompt, require, Scored, SYSTEM_MCQ

# -----------------------------------------------------------------------------------------------------
# 3. SAKURA: <root>/<Track>/metadata.csv (+ audio/), Animal/Emotion/Gender/Language x single/multi-hop

SAKURA_TRACKS = ("Animal", "Emotion", "Gender", "Language")
SAKURA_HOPS = ("single", "multi")
SAKURA_FIELDS = ("file", "attribute_label", "single_instruction", "single_answer", "multi_instruction",
                 "multi_answer")

# The official judge (ckyang1124/SAKURA evaluation/llm_judge.py): gpt-4o-2024-11-20, temperature 0.0,
# top_p 0.9; the reply must end with "Explanation: ...\nJudgement: correct|incorrect". Prompts as
# published (there indented inside the source; dedented here).
SAKURA_JUDGE_PARAMS = {"temperature": 0.0, "top_p": 0.9}
SAKURA_JUDGE_SYSTEM = ("You are a good judge. You will be given a question with list of possible options, "
                       "a ground truth answer and a model generated response. \n"
                       "You have to determine whether the model generated answer is correct.")
SAKURA_JUDGE_TEMPLATE = (Path(__file__).parent / "tables" / "sakura_judge.txt").read_text(encoding="utf-8")


def load_sakura(root, tracks=SAKURA_TRACKS):
    """Each metadata.csv row gives two items, the single- and the multi-hop question on one clip.
    Answers are stripped (some carry a leading space)."""
    root, rows = Path(root), []
    for track in tracks:
        meta = root / track / "metadata.csv"
        if not meta.exists():
            raise FileNotFoundError(f"{meta}: missing (expected <root>/<Track>/metadata.csv)")
        with open(meta, encoding="utf-8", newline="") as f:
            for n, item in enumerate(csv.DictReader(f), 2):  # line 1 is the header
                require(item, SAKURA_FIELDS, f"{meta} line {n}")
                for hop in SAKURA_HOPS:
                    rows.append({"id": f"{track}/{hop}/{item['file']}", "track": track, "hop": hop,
                                 "audio": str(root / track / "audio" / item["file"]),
                                 "instruction": item[f"{hop}_instruction"].strip(),
                                 "answer": item[f"{hop}_answer"].strip(),
                                 "attribute_label": item["attribute_label"].strip()})
    return rows


def sakura_prompt(row):
    return Prompt(row["id"], SYSTEM_MCQ, row["instruction"], [row["audio"]], MCQ_AUDIO_SEP)


def parse_sakura_options(instruction):
    """'... (a) dog (b) crow (c) cow' -> {'a': 'dog', 'b': 'crow', 'c': 'cow'} (options inline)."""
    parts = re.split(r"\(([a-z])\)\s*", instruction)
    return {parts[i]: " ".join(parts[i + 1].split()) for i in range(1, len(parts) - 1, 2)}


def _answer_letter(answer, options):
    m = re.match(r"\s*\(([a-z])\)", answer)
    if m:
        return m.group(1)
    text = _norm_text(answer)
    return next((k for k, v in options.items() if _norm_text(v) == text), None)


def match_sakura_option(response, instruction, answer):
    """Approximate rule-based option matcher (the official judge is GPT-4o): collects the options the
    response chooses, by letter ('(b)', or a bare 'b' / 'b)' / 'b.' answer) or by naming the option
    text; failing that, by a derivative of a one-word option ('happiness' for 'happy'). Correct iff
    exactly one option is chosen and it is the gold one (the judge's criteria 1 and 2)."""
    options = parse_sakura_options(instruction)
    gold = _answer_letter(answer, options)
    low = response.lower()
    chosen = {m.group(1) for m in re.finditer(r"\(([a-z])\)", low) if m.group(1) in options}
    m = re.match(r"\s*(?:option\s+)?([a-z])(?:\s*$|[).:,]\s*)", low)
    if m and m.group(1) in options:
        chosen.add(m.group(1))
    by_text = {v: k for k, v in options.items()}
    chosen |= {by_text[v] for v in mentioned_labels(response, list(by_text))}
    if not chosen:
        words = _norm_text(response).split()
        for text, letter in by_text.items():
            t = _norm_text(text)
            if " " not in t and len(t) >= 4 and any(w.startswith(t[:max(4, len(t) - 2)]) for w in words):
                chosen.add(letter)
    return sorted(chosen), gold is not None and chosen == {gold}


def extract_sakura_judgement(text):
    """The official parse: 'Explanation: ...\\nJudgement: ...' -> (explanation, judgement)."""
    m = re.search(r"Explanation: (.*?)\nJudgement: (.*?)(?:\n\n|$)", text, re.DOTALL)
    if not m:
        return "No extracted explanation", "No extracted judgement"
    return m.group(1), m.group(2)


def sakura_judge(judge, row, response):
    user = (SAKURA_JUDGE_TEMPLATE.replace("[QUESTION]", row["instruction"])
            .replace("[MODEL_GENERATED_RESPONSE]", response).replace("[GROUND_TRUTH_ANSWER]", row["answer"]))
    reply = judge_chat(judge, [{"role": "system", "content": SAKURA_JUDGE_SYSTEM},
                               {"role": "user", "content": user}], **SAKURA_JUDGE_PARAMS)
    return extract_sakura_judgement(reply)


def score_sakura(rows, responses, judge=None):
    """Accuracy per track x hop and the single/multi averages over tracks. With `judge` it follows the
    official protocol (a judgement other than correct/incorrect is wrong and counted as 'unparsed');
    without it, the approximate rule-based matcher."""
    records, tally, unparsed = [], defaultdict(lambda: [0, 0]), 0
    for row in rows:
        response = responses.get(row["id"]) or ""
        if judge is not None:
            explanation, verdict = sakura_judge(judge, row, response)
            verdict = verdict.lower().strip()
            unparsed += verdict not in ("correct", "incorrect")
            ok, extracted = verdict == "correct", verdict
        else:
            chosen, ok = match_sakura_option(response, row["instruction"], row["answer"])
            extracted = "|".join(f"({c})" for c in chosen)
        tally[row["track"], row["hop"]][0] += ok
        tally[row["track"], row["hop"]][1] += 1
        records.append({"id": row["id"], "prompt": row["instruction"], "response": response,
                        "extracted": extracted, "answer": row["answer"], "correct": ok,
                        "track": row["track"], "hop": row["hop"]})
    tracks = {f"{t}/{h}": {"acc": pct(*tally[t, h]), "n": tally[t, h][1]} for (t, h) in sorted(tally)}
    averages = {}
    for hop in SAKURA_HOPS:
        accs = [pct(*tally[t, h]) for (t, h) in tally if h == hop]
        averages[hop] = sum(accs) / len(accs) if accs else None
    method = f"llm judge {judge.model}" if judge else "rule-based option matcher (approximate; official judge is GPT-4o)"
    return Scored(records, {"tracks": tracks, **averages, "method": method, "unparsed_judgements": unparsed,
                            "no_prediction": sum(r["id"] not in responses for r in rows)})


# ---- the registry's interface (evaluate.BENCHMARKS) ----

def load(path, subset=None):
    return load_sakura(path)


def prompts(rows):
    return [sakura_prompt(r) for r in rows]


def score(rows, responses, judge=None, **_):
    return score_sakura(rows, responses, judge)


def table_i_cells(scores):
    return {"SAKURA-Single": scores["single"], "SAKURA-Multi": scores["multi"]}
