"""
Speech-IFEval (paper Table I): IFrate and the forgetting rate against the text-only reference.
"""

import re
from collections import Counter, defaultdict
from pathlib import Path

from benchmarks.common import judge_chat
from benchmarks.ifeval import APPROXIMATE_WITHOUT_NLTK, follows_instruction, SPEECH_IFEVAL_CHECKERS
from data import read_jsonl
from evaluate import pct, Prompt, require, Scored

# -----------------------------------------------------------------------------------------------------
# 5. Speech-IFEval: jsonl rows {id, audio_filepath, textual_audio, instruction, dataset, metric,
#    instruction_id_list, kwargs, label}; parts closed-ended (933), creative writing (400) and
#    chain-of-thought (200, judged by an LLM).

SPEECH_IFEVAL_PARTS = {  # file stem -> part
    "closed_ended_questions": "closed_ended",
    "creative_writing": "creative_writing",
    "chain-of-thought": "chain_of_thought",
}
SPEECH_IFEVAL_REFERENCE_IFRATE = 93.52  # Llama 3.1 8B Instruct given `textual_audio` as text (SPEC 10)

# The official chain-of-thought judge (kehanlu/Speech-IFEval script/llm_evaluation.py): gpt-4o-2024-11-20
# with default sampling; the reply ends with "Result: YES|NO".
COT_JUDGE_SYSTEM = (Path(__file__).parent / "tables" / "speech_ifeval_cot_judge.txt").read_text(encoding="utf-8")


def load_speech_ifeval(path, audio_root=None):
    """`path` is the benchmark's data/ folder, its eval_data/ folder, or one part's jsonl. Rows get a
    string id (`id`, else `key`, else '<part>-<n>': the chain-of-thought rows have none) and `part`.
    Audio is <audio_root>/<audio_filepath>, audio_root defaulting to data/audios."""
    path = Path(path)
    if path.is_dir():
        folder = path / "eval_data" if (path / "eval_data").is_dir() else path
        files = [folder / f"{stem}.jsonl" for stem in SPEECH_IFEVAL_PARTS if (folder / f"{stem}.jsonl").exists()]
        if not files:
            raise FileNotFoundError(f"{folder}: none of {[s + '.jsonl' for s in SPEECH_IFEVAL_PARTS]}")
    else:
        folder, files = path.parent, [path]
    root = Path(audio_root) if audio_root else folder.parent / "audios"
    rows = []
    for f in files:
        part = SPEECH_IFEVAL_PARTS.get(f.stem)
        if part is None:
            raise ValueError(f"{f}: unknown Speech-IFEval part (expected one of {list(SPEECH_IFEVAL_PARTS)})")
        for n, row in enumerate(read_jsonl(f)):
            require(row, ["audio_filepath", "instruction", "metric"], f"{f} row {n}")
            if part != "chain_of_thought":
                require(row, ["instruction_id_list", "kwargs"], f"{f} row {n}")
                if len(row["instruction_id_list"]) != len(row["kwargs"]):
                    raise ValueError(f"{f} row {n}: instruction_id_list and kwargs differ in length")
            rid = row.get("id", row.get("key", f"{part}-{n}"))
            rows.append(dict(row, id=str(rid), part=part, audio=str(root / row["audio_filepath"])))
    return rows


# The benchmark's own scripts (kehanlu/Speech-IFEval examples/eval_desta2.py for a speech model,
# eval_llama3_8B_instruct.py for the text reference): system "Follow the given instructions.", greedy,
# 2048 new tokens; the text reference reads `Speech Input: {textual_audio}\n\n{instruction}`. The paper
# names only the default system prompt; we follow the code.
SPEECH_IFEVAL_SYSTEM = "Follow the given instructions."
SPEECH_IFEVAL_MAX_NEW_TOKENS = 2048


def speech_ifeval_prompt(row):
    # textual_audio is what the reference IFrate's text-only LLM reads in place of the audio
    texts = [row["textual_audio"]] if row.get("textual_audio") else None
    text_chat = None if texts is None else [
        {"role": "system", "content": SPEECH_IFEVAL_SYSTEM},
        {"role": "user", "content": f"Speech Input: {row['textual_audio']}\n\n{row['instruction']}"}]
    return Prompt(row["id"], SPEECH_IFEVAL_SYSTEM, row["instruction"], [row["audio"]], texts=texts,
                  max_new_tokens=SPEECH_IFEVAL_MAX_NEW_TOKENS, text_chat=text_chat)


def cot_judge(judge, row, response):
    """-> True/False, or None when the reply has no 'Result: yes|no'."""
    content = f"User input: {row['instruction']}\nModel's Response: {response}"
    reply = judge_chat(judge, [{"role": "system", "content": COT_JUDGE_SYSTEM},
                               {"role": "user", "content": content}])
    m = re.search(r"(?i)(?<=result:\s)(yes|no)", reply)
    return None if m is None else m.group(0).lower() == "yes"


def read_judge_verdicts(path):
    """Released LLM-judge verdicts (the benchmark's `reports/llm_eval@chain-of-thought.jsonl`: rows with
    instruction, response, eval_response) -> {(instruction, response): followed}. The verdict is read
    from eval_response as the authors' script does ('Result: YES|NO'); a row without one is an error."""
    verdicts = {}
    for n, row in enumerate(read_jsonl(path)):
        require(row, ["instruction", "response", "eval_response"], f"{path} row {n}")
        m = re.search(r"(?i)(?<=result:\s)(yes|no)", row["eval_response"])
        if m is None:
            raise ValueError(f"{path} row {n}: eval_response has no 'Result: YES|NO'")
        verdicts[(row["instruction"], row["response"])] = m.group(0).lower() == "yes"
    return verdicts


def score_speech_ifeval(rows, responses, judge=None, reference_ifrate=SPEECH_IFEVAL_REFERENCE_IFRATE,
                        verdicts=None):
    """Closed-ended and creative-writing rates = share of rows whose instructions are all followed
    (strict); chain-of-thought rate from `verdicts` (read_judge_verdicts: released judgements of these
    very responses, so the rate needs no live judge), else the judge, else missing. IFrate = mean of
    the three parts; delta (forgetting rate) = (IFrate - reference) / reference * 100."""
    records, parts, per_inst = [], defaultdict(list), defaultdict(lambda: [0, 0])
    approximate, unparsed, from_verdicts, unjudged = Counter(), 0, 0, 0
    nltk_missing = _nltk_missing()
    for row in rows:
        response = responses.get(row["id"]) or ""
        where = f"Speech-IFEval row {row['id']}"
        if row["part"] == "chain_of_thought":
            key = (row["instruction"], response)
            if verdicts is not None and key in verdicts:  # a released verdict of this exact response
                from_verdicts += 1
                followed = [verdicts[key]]
            elif judge is None:  # kept in the predictions, unscored: the part is reported missing
                records.append({"id": row["id"], "prompt": row["instruction"], "response": response,
                                "extracted": None, "correct": None, "part": row["part"]})
                unjudged += 1
                continue
            else:
                verdict = cot_judge(judge, row, response)
                unparsed += verdict is None  # the authors' script would stop here; we count it as not followed
                followed = [bool(verdict)]
        else:
            followed = []
            for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
                ok = follows_instruction(SPEECH_IFEVAL_CHECKERS, iid, response, kw or {}, where)
                followed.append(ok)
                per_inst[iid][0] += ok
                per_inst[iid][1] += 1
                approximate[iid] += nltk_missing and iid in APPROXIMATE_WITHOUT_NLTK
        parts[row["part"]].append(all(followed))
        records.append({"id": row["id"], "prompt": row["instruction"], "response": response,
                        "extracted": followed, "correct": all(followed), "part": row["part"],
                        "instruction_id_list": row.get("instruction_id_list")})
    rates = {p: pct(sum(v), len(v)) for p, v in parts.items()}
    if unjudged:  # a part judged only in part is no rate: report it missing
        rates.pop("chain_of_thought", None)
    for p in SPEECH_IFEVAL_PARTS.values():
        rates.setdefault(p, None)
    complete = all(rates[p] is not None for p in SPEECH_IFEVAL_PARTS.values())
    ifrate = sum(rates.values()) / 3 if complete else None
    delta = (ifrate - reference_ifrate) / reference_ifrate * 100 if ifrate is not None and reference_ifrate else None
    scores = {
        **rates, "ifrate": ifrate, "delta": delta, "reference_ifrate": reference_ifrate,
        "n": {p: len(v) for p, v in parts.items()},
        "per_instruction": {k: pct(*v) for k, v in sorted(per_inst.items())},
        "missing": [p for p in SPEECH_IFEVAL_PARTS.values() if rates[p] is None],
        "approximate_checks": {k: v for k, v in approximate.items() if v},
        "unparsed_judgements": unparsed,
        "cot_from_released_verdicts": from_verdicts,
        "no_prediction": sum(r["id"] not in responses for r in rows),
    }
    return Scored(records, scores)


def _nltk_missing():
    try:
        import nltk
        nltk.tokenize.sent_tokenize("A test. Another one.")
        return False
    except (ImportError, LookupError):
        return True


# ---- the registry's interface (evaluate.BENCHMARKS) ----

def load(path, subset=None):
    return load_speech_ifeval(path)


def prompts(rows):
    return [speech_ifeval_prompt(r) for r in rows]


def score(rows, responses, judge=None, reference_ifrate=SPEECH_IFEVAL_REFERENCE_IFRATE, verdicts=None):
    return score_speech_ifeval(rows, responses, judge, reference_ifrate, verdicts)


def table_i_cells(scores):
    return {"Speech-IFEval IFrate": scores["ifrate"], "Speech-IFEval Δ": scores["delta"]}
