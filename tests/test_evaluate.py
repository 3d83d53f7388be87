"""Tests for evaluate.py: the benchmark loaders (on tiny files written here in each benchmark's layout),
the official scorers, the IFEval checkers (Speech-IFEval variants included) and the judge protocol
(against a local 127.0.0.1 server only)."""
import csv
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import desta  # noqa: E402
import evaluate as E  # noqa: E402
from asr.vad import SILERO_VAD_VERSION  # noqa: E402
from benchmarks import (  # noqa: E402
    common, dynamic_superb, ifeval, mmau, sakura, speech_ifeval, tiny, voicebench,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / ".." / "shared" / "fixtures"
MMAU_RESULTS = FIXTURES / "mmau-test-mini_desta25_results.json"


def need_mmau_fixture():
    if not MMAU_RESULTS.exists():
        pytest.skip(f"fixture {MMAU_RESULTS} absent (the ../shared/fixtures folder is not in a user's clone)")


# ---------------------------------------------------------------------------------------------- MMAU

def test_mmau_fixture_reproduces_published_scores():
    need_mmau_fixture()
    rows = mmau.load_mmau(MMAU_RESULTS)
    assert len(rows) == 1000
    for key in ("model_prediction", "model_output"):  # the authors' extracted answers, and ours from the raw output
        s = mmau.score_mmau(rows, {r["id"]: r[key] for r in rows}).scores
        got = {t: round(v["acc"], 2) for t, v in s["task"].items()}
        assert got == {"sound": 70.57, "music": 56.29, "speech": 71.17}, key
        assert round(s["total"]["acc"], 2) == 66.00
        assert s["total"]["n"] == 1000 and s["no_prediction"] == 0
        assert sum(v["n"] for v in s["difficulty"].values()) == 1000
        assert len(s["sub-category"]) == 27


def test_mmau_extraction_matches_authors_predictions():
    need_mmau_fixture()
    for row in desta.read_json(MMAU_RESULTS):
        # theirs: the output without the prefix, stripped; ours also unwraps quotes: same word tokens
        ours = mmau.extract_mmau_answer(row["model_output"])
        assert mmau._mmau_tokens(ours) == mmau._mmau_tokens(row["model_prediction"])
        assert ours == row["model_prediction"] or '"' in row["model_prediction"] or ours == row["model_prediction"].strip()


def test_mmau_string_match_rule():
    choices = ["A man speaking", "A woman speaking", "A dog barking", "Rain"]
    ok = mmau.mmau_string_match
    assert ok("A man speaking", "a man speaking.", choices)
    assert ok("A man speaking", "man speaking", choices) is False  # 'a' is an answer token too
    assert ok("A man speaking", "A man speaking, not rain", choices) is False  # names a wrong-only token
    assert ok("A man speaking", "A man is speaking loudly", choices)  # extra words are fine
    assert ok("A man speaking", "", choices) is False
    assert ok("A man speaking", "...", choices) is False  # no word tokens = empty


def test_mmau_question_separators():
    q = mmau.mmau_question
    assert q("Q?", ["x"]) == 'Q? Choose from the following options: "x"'
    assert q("Q?", ["x", "y"]) == 'Q? Choose from the following options: "x" or "y"'
    assert q("Q?", ["x", "y", "z"]) == 'Q? Choose from the following options: "x", "y" or "z"'
    assert q("Q?", list("abcd")) == 'Q? Choose from the following options: "a", "b", "c" or "d"'


def test_mmau_answer_extraction_tricky():
    choices = ["Male", "Female"]
    pred = mmau.extract_mmau_answer("The correct answer is: (b) Male.")
    assert pred == "(b) Male."
    assert mmau.mmau_string_match("Male", pred, choices)
    assert mmau.extract_mmau_answer('The correct answer is: "Female".') == "Female"
    two = mmau.extract_mmau_answer("The correct answer is: Male or Female")
    assert not mmau.mmau_string_match("Male", two, choices)
    assert mmau.extract_mmau_answer("") == ""
    assert not mmau.mmau_string_match("Male", mmau.extract_mmau_answer(""), choices)


def test_mmau_loader_prompt_and_errors(tmp_path):
    item = {"id": "u1", "audio_id": "./test-mini-audios/u1.wav", "question": "Which animal?",
            "choices": ["Dog", "Cat"], "answer": "Dog", "task": "sound", "difficulty": "easy",
            "sub-category": "Animal"}
    path = tmp_path / "mmau-test-mini.json"
    path.write_text(json.dumps([item]))
    rows = mmau.load_mmau(path, audio_root=tmp_path / "data")
    assert rows[0]["audio"] == str(tmp_path / "data" / "test-mini-audios" / "u1.wav")
    p = mmau.mmau_prompt(rows[0])
    assert p.system == E.SYSTEM_MMAU and p.audios == [rows[0]["audio"]] and p.audio_sep == "\n\n"
    assert p.user == 'Which animal? Choose from the following options: "Dog" or "Cat"'
    s = mmau.score_mmau(rows, {}).scores  # no response -> wrong, counted
    assert s["total"]["acc"] == 0 and s["no_prediction"] == 1
    del item["answer"]
    path.write_text(json.dumps([item]))
    with pytest.raises(ValueError, match=r"item 0.*answer"):
        mmau.load_mmau(path)


# ------------------------------------------------------------------------------------- Speech-IFEval

SIF = ifeval.SPEECH_IFEVAL_CHECKERS


def follows(iid, response, checkers=SIF, **kw):
    return ifeval.follows_instruction(checkers, iid, response, kw)


# (instruction id, kwargs, passing response, failing response)
SIF_CASES = [
    ("change_case:english_capital", {}, "HELLO WORLD, 2 TIMES.", "Hello WORLD"),
    ("change_case:english_lowercase", {}, "hello world, 2 times.", "hello World"),
    ("detectable_format:json_format", {}, '```json\n{"answer": "yes"}\n```', '{"answer": yes}'),
    ("detectable_format:json_format", {}, '{"a": [1, 2]}', "Here is the JSON: {\"a\": 1}"),
    ("startend:quotation", {}, '  "The speaker is happy."  ', '"The speaker is happy.'),
    ("detectable_format:title", {}, "<<A Calm Morning>>\nThe birds sing.", "<< >> no title here"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "What is the emotion?"},
     '"What is the emotion? The emotion is sad.', "Sure! What is the emotion? Sad."),
    ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
     'The speaker sounds sad. Is there anything else I can help with?"', "Is there anything else I can help with? Yes."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* one\n- two\n• three", "* one\n* two"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "1. first point\n2. second point",
     "1. first\n2. second\n3. third"),
    ("keywords:existence", {"keywords": ["rain", "umbrella"]}, "Bring an Umbrella, the RAIN is coming.",
     "Bring an umbrella."),
    ("keywords:forbidden_words", {"forbidden_words": ["sad", "cry"]}, "The speaker is saddened.",
     "The speaker is sad."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "Four words right here.",
     "These are exactly five words."),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one two three", "one two"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Mr. Smith arrived at 5 p.m. today.", "He arrived. He left."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "One. Two! Three?", "One. Two."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "First.\nSecond.\n\nThird.", "First.\nSecond."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "Part one.\n***\nPart two.\n",
     "Part one. *** *** Part two."),
]


@pytest.mark.parametrize("iid,kw,good,bad", SIF_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SIF_CASES)])
def test_speech_ifeval_checker(iid, kw, good, bad):
    assert follows(iid, good, **kw) is True
    assert follows(iid, bad, **kw) is False
    assert follows(iid, "   ", **kw) is False  # strict mode: an empty response follows nothing


def test_speech_ifeval_covers_its_13_instruction_types():
    used = {c[0] for c in SIF_CASES}
    assert len(used) == 13 and used <= set(SIF)


def test_speech_ifeval_variants_differ_from_google():
    G = ifeval.GOOGLE_IFEVAL_CHECKERS
    digits = "1. first\n2. second"
    assert follows("detectable_format:number_bullet_lists", digits, num_bullets=2)
    assert not follows("detectable_format:number_bullet_lists", digits, G, num_bullets=2)
    literal_newlines = "* one\\n* two"  # a response holding backslash-n text
    assert follows("detectable_format:number_bullet_lists", literal_newlines, num_bullets=2)
    lines = "a\nb\nc"
    assert follows("length_constraints:number_paragraphs", lines, num_paragraphs=3)
    assert not follows("length_constraints:number_paragraphs", lines, G, num_paragraphs=3)
    quoted = '"Repeat this please" and more'
    assert follows("combination:repeat_prompt", quoted, prompt_to_repeat="Repeat this please")
    assert not follows("combination:repeat_prompt", quoted, G, prompt_to_repeat="Repeat this please")
    assert ifeval.check_capital_speech_ifeval("ÉTÉ 2024")  # isupper only, no language detection


def test_sentence_counting():
    assert ifeval.count_sentences("") == 0
    assert ifeval.count_sentences("No final stop") == 1
    assert ifeval.count_sentences("Dr. Who met Mr. Smith. They talked.") == 2
    assert ifeval.count_sentences("It was 1862. Then it ended.") == 2
    assert ifeval.count_sentences("Two steps.\n1. Mix it.\n2. Bake it.") == 3  # '1.' opening a line is a list marker
    # punkt breaks after an ellipsis before a sentence opener, not before a content word; '…' never breaks
    assert ifeval.count_sentences("I waited... and waited. Done!") == 3
    assert ifeval.count_sentences("I'm not invited... again.") == 2
    assert ifeval.count_sentences("You're at a... meeting, and I talk.") == 1
    assert ifeval.count_sentences("Wait… what.") == 1


def test_checker_bad_kwargs_are_named():
    with pytest.raises(ValueError, match="row 7.*number_words"):
        ifeval.follows_instruction(SIF, "length_constraints:number_words", "a b", {"num": 3}, "row 7")
    with pytest.raises(ValueError, match="unknown instruction id"):
        ifeval.follows_instruction(SIF, "no:such", "a", {}, "row 1")


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def speech_ifeval_fixture(tmp_path):
    data = tmp_path / "data"
    closed = [
        {"id": 0, "audio_filepath": "Gender_recognition/a.wav", "textual_audio": "[00:00-00:01] hi",
         "instruction": "What is the gender?\nAnswer in capitals.", "dataset": "Gender_recognition",
         "metric": "accuracy", "instruction_id_list": ["change_case:english_capital"], "kwargs": [{}], "label": "Male"},
        {"id": 1, "audio_filepath": "Gender_recognition/b.wav", "textual_audio": "x", "instruction": "Wrap in quotes.",
         "dataset": "Gender_recognition", "metric": "accuracy", "instruction_id_list": ["startend:quotation"],
         "kwargs": [{}], "label": "Female"},
    ]
    creative = [{"audio_filepath": "ASR/c.flac", "key": "bullet-points-0", "textual_audio": "x",
                 "instruction": "Give 2 bullet points.", "dataset": "ASR", "metric": "open",
                 "instruction_id_list": ["detectable_format:number_bullet_lists"], "kwargs": [{"num_bullets": 2}],
                 "id": 934}]
    cot = [{"audio_filepath": "MMAU/d.wav", "textual_audio": "x", "instruction": "Count the words. Think step by step.",
            "dataset": "MMAU", "metric": "cot"}]
    write_jsonl(data / "eval_data" / "closed_ended_questions.jsonl", closed)
    write_jsonl(data / "eval_data" / "creative_writing.jsonl", creative)
    write_jsonl(data / "eval_data" / "chain-of-thought.jsonl", cot)
    responses = {"0": "MALE", "1": "Female", "934": "- one\n- two", "chain_of_thought-0": "First, I count. Then 8."}
    return data, responses


def test_speech_ifeval_loader_and_rates_without_judge(tmp_path):
    data, responses = speech_ifeval_fixture(tmp_path)
    rows = speech_ifeval.load_speech_ifeval(data)
    assert [r["id"] for r in rows] == ["0", "1", "934", "chain_of_thought-0"]
    assert rows[0]["audio"] == str(data / "audios" / "Gender_recognition" / "a.wav")
    assert speech_ifeval.speech_ifeval_prompt(rows[0]).user == rows[0]["instruction"]
    s = speech_ifeval.score_speech_ifeval(rows, responses).scores
    assert s["closed_ended"] == 50.0 and s["creative_writing"] == 100.0
    assert s["chain_of_thought"] is None and s["ifrate"] is None and s["missing"] == ["chain_of_thought"]


def test_speech_ifeval_prompts_follow_the_benchmark_scripts(tmp_path):
    """System 'Follow the given instructions.', 2048 new tokens, and for the text reference the user turn
    `Speech Input: {textual_audio}\n\n{instruction}` (Speech-IFEval's eval_llama3_8B_instruct.py)."""
    data, _ = speech_ifeval_fixture(tmp_path)
    row = speech_ifeval.load_speech_ifeval(data)[0]
    p = speech_ifeval.speech_ifeval_prompt(row)
    assert p.system == "Follow the given instructions." and p.max_new_tokens == 2048
    assert p.text_chat == [{"role": "system", "content": "Follow the given instructions."},
                           {"role": "user", "content": "Speech Input: [00:00-00:01] hi\n\n" + row["instruction"]}]


def test_mcq_prompts_follow_the_authors_evaluation_tips(tmp_path):
    """docs/evaluation_tips.md: system 'Focus on the audio clips and instruction. Choose one of the options
    without any explanation.', user `<|AUDIO|> {instruction}`."""
    assert E.SYSTEM_MCQ == "Focus on the audio clips and instruction. Choose one of the options without any explanation."
    row = {"id": "x", "audio": "a.wav", "instruction": "What is it? (a) dog (b) cat"}
    for p in (sakura.sakura_prompt(row), dynamic_superb.dynamic_superb_prompt(row)):
        assert p.system == E.SYSTEM_MCQ
        assert E.desta_messages(p, "<|AUDIO|>")[1]["content"] == "<|AUDIO|> What is it? (a) dog (b) cat"


SPEECH_IFEVAL = FIXTURES / "speech-ifeval"
SPEECH_IFEVAL_PUBLISHED = {  # the benchmark's table (closed-ended, creative writing), %
    "DeSTA-ntu--DeSTA2-8B-beta": (83.71, 91.75),
    "meta-llama--Meta-Llama-3-8B-Instruct": (93.35, 93.75),
}


@pytest.mark.parametrize("model", sorted(SPEECH_IFEVAL_PUBLISHED))
def test_speech_ifeval_released_outputs_reproduce_published_rates(model):
    """The authors' released responses, scored here: the published rates, row by row the authors' own
    rule-based results (reports/rule_eval@*), with no nltk and no network."""
    folder = SPEECH_IFEVAL / model
    if not folder.is_dir():
        pytest.skip(f"fixture {folder} absent (the ../shared/fixtures folder is not in a user's clone)")
    rows = speech_ifeval.load_speech_ifeval(folder)
    s = speech_ifeval.score_speech_ifeval(rows, E.responses_in_rows(rows))
    records = {r["id"]: r for r in s.records}
    for part, published in zip(("closed_ended", "creative_writing"), SPEECH_IFEVAL_PUBLISHED[model]):
        assert round(s.scores[part], 2) == published
    for stem in ("closed_ended_questions", "creative_writing"):
        reference = data.read_jsonl(folder / "reports" / f"rule_eval@{stem}.jsonl.jsonl")
        ours = [records[str(r["id"])] for r in rows if r["part"] == speech_ifeval.SPEECH_IFEVAL_PARTS[stem]]
        assert len(ours) == len(reference)
        assert [r["correct"] for r in ours] == [r["follow_all_instructions"] for r in reference]


def test_speech_ifeval_chain_of_thought_from_released_verdicts(tmp_path):
    """DeSTA2's chain-of-thought rate (published 91.50) from the released judge verdicts: IFrate offline."""
    folder = SPEECH_IFEVAL / "DeSTA-ntu--DeSTA2-8B-beta"
    if not folder.is_dir():
        pytest.skip(f"fixture {folder} absent (the ../shared/fixtures folder is not in a user's clone)")
    verdicts_file = folder / "reports" / "llm_eval@chain-of-thought.jsonl"
    rows = speech_ifeval.load_speech_ifeval(folder)
    responses = E.responses_in_rows(rows)
    s = speech_ifeval.score_speech_ifeval(rows, responses, verdicts=speech_ifeval.read_judge_verdicts(verdicts_file)).scores
    assert s["chain_of_thought"] == 91.5 and s["cot_from_released_verdicts"] == 200
    assert s["ifrate"] == pytest.approx((s["closed_ended"] + 91.75 + 91.5) / 3) and s["missing"] == []
    # a response the verdicts do not cover leaves the part unscored (no judge), never guessed
    cot = next(r["id"] for r in rows if r["part"] == "chain_of_thought")
    s = speech_ifeval.score_speech_ifeval(rows, {**responses, cot: "something else"}, verdicts=speech_ifeval.read_judge_verdicts(verdicts_file))
    assert s.scores["chain_of_thought"] is None and "chain_of_thought" in s.scores["missing"]
    # the command line: score the released outputs with the verdicts
    scored = E.main(["--benchmark", "speech_ifeval", "--data", str(folder), "--judge-verdicts", str(verdicts_file),
                     "--out", str(tmp_path)])
    assert scored.scores["chain_of_thought"] == 91.5 and scored.scores["ifrate"] is not None


def test_speech_ifeval_loader_errors(tmp_path):
    bad = tmp_path / "eval_data" / "closed_ended_questions.jsonl"
    write_jsonl(bad, [{"audio_filepath": "a.wav", "instruction": "x", "metric": "accuracy",
                       "instruction_id_list": ["startend:quotation"]}])
    with pytest.raises(ValueError, match=r"row 0.*kwargs"):
        speech_ifeval.load_speech_ifeval(tmp_path)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="closed_ended_questions.jsonl:1"):
        speech_ifeval.load_speech_ifeval(tmp_path)


# ----------------------------------------------------------------------- judge (local server only)

class FakeJudge:
    """A local OpenAI-compatible endpoint that records requests and answers by a rule."""

    def __init__(self, answer):
        self.requests, judge = [], self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append((self.path, dict(self.headers), body))
                reply = json.dumps({"choices": [{"message": {"content": answer(body)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.config = common.JudgeConfig(f"http://127.0.0.1:{self.server.server_port}/v1", "test-key", "judge-model")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_speech_ifeval_cot_judge_ifrate_and_delta(tmp_path):
    data, responses = speech_ifeval_fixture(tmp_path)
    judge = FakeJudge(lambda body: "Result: YES" if "Then" in body["messages"][1]["content"] else "Result: NO")
    try:
        s = speech_ifeval.score_speech_ifeval(speech_ifeval.load_speech_ifeval(data), responses, judge.config, reference_ifrate=80.0).scores
    finally:
        judge.close()
    path, headers, body = judge.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer test-key"
    assert body["model"] == "judge-model" and body["messages"][0]["content"] == speech_ifeval.COT_JUDGE_SYSTEM
    assert body["messages"][1]["content"].startswith("User input: Count the words.")
    assert s["chain_of_thought"] == 100.0
    assert s["ifrate"] == pytest.approx((50 + 100 + 100) / 3)
    assert s["delta"] == pytest.approx((s["ifrate"] - 80) / 80 * 100)


def sakura_fixture(tmp_path):
    fields = list(sakura.SAKURA_FIELDS)
    rows = {
        "Gender": [{"file": "g1.wav", "attribute_label": "female",
                    "single_instruction": "What is the speaker's gender? (a) Female (b) Male", "single_answer": "(a) Female",
                    "multi_instruction": "Which address fits? (a) Sir (b) Madam", "multi_answer": " (b) Madam"}],
        "Emotion": [{"file": "e1.wav", "attribute_label": "happy",
                     "single_instruction": "What emotion? (a) happy (b) sad (c) angry (d) neutral", "single_answer": "(a) happy",
                     "multi_instruction": "Which sentence fits? (a) I am thrilled, truly! (b) Leave me alone.",
                     "multi_answer": "(a) I am thrilled, truly!"}],
    }
    for track, items in rows.items():
        (tmp_path / track / "audio").mkdir(parents=True)
        with open(tmp_path / track / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(items)
    return tmp_path


def test_sakura_loader_options_and_rule_matcher(tmp_path):
    root = sakura_fixture(tmp_path)
    rows = sakura.load_sakura(root, tracks=("Gender", "Emotion"))
    assert [r["id"] for r in rows] == ["Gender/single/g1.wav", "Gender/multi/g1.wav", "Emotion/single/e1.wav",
                                       "Emotion/multi/e1.wav"]
    assert rows[1]["answer"] == "(b) Madam"  # stripped
    assert rows[0]["audio"] == str(root / "Gender" / "audio" / "g1.wav")
    assert sakura.parse_sakura_options(rows[3]["instruction"]) == {"a": "I am thrilled, truly!", "b": "Leave me alone."}
    m = lambda resp, i: sakura.match_sakura_option(resp, rows[i]["instruction"], rows[i]["answer"])[1]  # noqa: E731
    assert m("The speaker is female.", 0) and not m("The speaker is male.", 0)
    assert not m("Female or male, hard to say.", 0)  # two options chosen
    assert m("(b)", 1) and m("b", 1) and m("B) Madam", 1) and not m("(a) Sir", 1)
    assert m("The speaker expresses happiness.", 2)  # a derivative, as the judge accepts
    assert not m("I cannot tell.", 2)
    assert m('I would pick "I am thrilled, truly!"', 3)
    s = sakura.score_sakura(rows, {rows[0]["id"]: "Female", rows[1]["id"]: "(a) Sir"}).scores
    assert s["tracks"]["Gender/single"]["acc"] == 100.0 and s["tracks"]["Gender/multi"]["acc"] == 0.0
    assert s["single"] == 50.0 and "approximate" in s["method"]


def test_sakura_missing_metadata_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="Animal/metadata.csv"):
        sakura.load_sakura(tmp_path)


def test_sakura_official_judge_protocol(tmp_path):
    rows = sakura.load_sakura(sakura_fixture(tmp_path), tracks=("Gender",))

    def answer(body):
        user = body["messages"][1]["content"]
        verdict = "correct" if "Model generated response: Female" in user else "incorrect"
        return f"Explanation: checked.\nJudgement: {verdict}"

    judge = FakeJudge(answer)
    try:
        s = sakura.score_sakura(rows, {rows[0]["id"]: "Female", rows[1]["id"]: "Sir"}, judge.config).scores
    finally:
        judge.close()
    body = judge.requests[0][2]
    assert body["temperature"] == 0.0 and body["top_p"] == 0.9
    assert body["messages"][0]["content"] == sakura.SAKURA_JUDGE_SYSTEM
    user = body["messages"][1]["content"]
    assert "Question: What is the speaker's gender? (a) Female (b) Male\nGround truth answer: (a) Female" in user
    assert s["single"] == 100.0 and s["multi"] == 0.0 and s["unparsed_judgements"] == 0
    assert sakura.extract_sakura_judgement("no format") == ("No extracted explanation", "No extracted judgement")


# ---------------------------------------------------------------------------------- Dynamic-SUPERB

def test_candidate_label_parsing():
    p = dynamic_superb.parse_candidate_labels
    assert p("Recognize the emotion. The answer could be anger, disgust, sadness, joy, neutral, surprise, or fear.") == \
        ["anger", "disgust", "sadness", "joy", "neutral", "surprise", "fear"]
    assert p("Verify if the speech and text are congruent. The answer could be yes or no.") == ["yes", "no"]
    assert p("Does it contain speech? Please answer yes or no.") == ["yes", "no"]
    assert p("How many speakers? Choose from: 1, 2, 3, 4") == ["1", "2", "3", "4"]
    assert p("Options: clean, noisy") == ["clean", "noisy"]
    assert p("Transcribe the audio.") == []


def test_dynamic_superb_label_matching():
    emo = "The answer could be anger, disgust, fear, sadness, happiness, surprise, or no emotion."
    m = dynamic_superb.match_dynamic_superb
    assert m("Based on the dialogue, the corresponding emotion is sadness.", "Sadness", emo)[1]
    assert not m("It could be sadness or fear.", "sadness", emo)[1]
    assert m("There is no emotion here.", "no emotion", emo)[1]  # not also 'no'
    yn = "Scrutinize the first clip. The answer could be yes or no."
    assert m("I would say NO, it is not the same speaker.", "no", yn)[1]
    assert not m("Yes.", "no", yn)[1]
    assert m("There are two speakers.", "2", "How many speakers? The answer could be 1, 2, 3, 4, or 5.")[1]
    assert not m("", "no", yn)[1]


def test_dynamic_superb_groups_are_the_48_speech_instances():
    groups = dynamic_superb.DYNAMIC_SUPERB_GROUPS
    assert len(groups) == 48
    assert {g: list(groups.values()).count(g) for g in dynamic_superb.DYNAMIC_SUPERB_GROUP_ORDER} == \
        {"CON": 11, "SEM": 6, "PAR": 7, "DEG": 19, "SPK": 5}


def test_dynamic_superb_loader_jsonl_layout_and_scores(tmp_path):
    def export(name, items):
        folder = tmp_path / name
        (folder / "audio").mkdir(parents=True)
        for it in items:
            for col in ("audio", "audio2"):
                if it.get(col):
                    (folder / it[col]).write_bytes(b"RIFF")
        write_jsonl(folder / "test.jsonl", items)

    export("SpeechTextMatching_LJSpeech", [
        {"audio": "audio/0.wav", "instruction": "Are they congruent? The answer could be yes or no.",
         "label": "yes", "text": "hello there"},
        {"audio": "audio/1.wav", "instruction": "Are they congruent? The answer could be yes or no.",
         "label": "no", "text": "good bye"}])
    export("DynamicSuperb--SpeakerVerification_VCTK", [
        {"audio": "audio/a.wav", "audio2": "audio/b.wav", "label": "yes",
         "instruction": "Same speaker? The answer could be yes or no."}])
    rows = dynamic_superb.load_dynamic_superb(tmp_path)
    assert [r["instance"] for r in rows] == ["SpeechTextMatching_LJSpeech"] * 2 + ["SpeakerVerification_VCTK"]
    assert rows[0]["audio"] == str(tmp_path / "SpeechTextMatching_LJSpeech" / "audio" / "0.wav")
    p = dynamic_superb.dynamic_superb_prompt(rows[2])
    assert p.audios == [rows[2]["audio"], rows[2]["audio2"]] and p.system == E.SYSTEM_MCQ
    assert dynamic_superb.dynamic_superb_prompt(rows[0]).user.endswith('\nText: "hello there"')
    s = dynamic_superb.score_dynamic_superb(rows, {rows[0]["id"]: "Yes.", rows[1]["id"]: "Yes.", rows[2]["id"]: "yes"}).scores
    assert s["instances"]["SpeechTextMatching_LJSpeech"]["acc"] == 50.0
    assert s["groups"]["CON"]["acc"] == 50.0 and s["groups"]["SPK"]["acc"] == 100.0
    assert s["overall"] == 75.0 and s["overall_pooled"] == pytest.approx(200 / 3)
    assert len(s["missing_instances"]) == 46


def test_dynamic_superb_parquet_layout(tmp_path):
    pa = pytest.importorskip("pyarrow", reason="pyarrow (optional) is needed only for the hub's parquet layout")
    import pyarrow.parquet as pq
    folder = tmp_path / "NoiseDetection_VCTK_MUSAN-Music" / "data"
    folder.mkdir(parents=True)
    table = pa.table({"audio": [{"bytes": b"RIFFxxxx", "path": "x.wav"}], "instruction": ["Clean or noisy? The answer "
                      "could be clean or noisy."], "label": ["noisy"]})
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    rows = dynamic_superb.load_dynamic_superb(tmp_path, audio_cache=tmp_path / "cache")
    assert Path(rows[0]["audio"]).read_bytes() == b"RIFFxxxx" and rows[0]["group"] == "DEG"


def test_dynamic_superb_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="none of the Dynamic-SUPERB instances"):
        dynamic_superb.load_dynamic_superb(tmp_path)


# --------------------------------------------------------------------------------------- VoiceBench

def test_voicebench_mcq_extraction():
    x = voicebench.extract_mcq_letter
    assert x("The answer is B.") == "B"
    assert x("<1> c) Paris") == "C"
    assert x("I'd say d.") == "D"
    assert x("b") == "B"
    assert x("I am not sure about this one") is None
    rows = [{"id": "1", "reference": "A"}, {"id": "2", "reference": "B"}]
    s = voicebench.score_mcq(rows, {"1": "The correct answer is a", "2": "no idea"}).scores
    assert s["fail"] == 50.0 and s["acc"] in (50.0, 100.0)
    assert voicebench.score_mcq(rows, {"2": "no idea"}).scores == voicebench.score_mcq(rows, {"2": "no idea"}).scores  # seeded


def test_voicebench_bbh_rules():
    x = voicebench.extract_bbh_answer
    assert x("So the answer is No.", "sports_understanding_3") == 0
    assert x("Yes, this sentence is plausible.", "sports_understanding_1") == 1
    assert x("The correct adjective order is option (B).", "hyperbaton_2") == 1
    assert x("A", "hyperbaton_2") == 0
    assert x("Following these steps, you end up back at the starting point.", "navigate_1") == 1
    assert x("Therefore Bob tells the truth.", "web_of_lies_9") == 1
    assert x("Hmm.", "web_of_lies_9") is None
    with pytest.raises(ValueError, match="names none of"):
        x("yes", "boolean_expressions_1")
    s = voicebench.score_bbh([{"id": "navigate_1", "bbh_task": "navigate_1", "reference": "Yes"}], {"navigate_1": "yes"}).scores
    assert s["acc"] == 100.0


def test_voicebench_ifeval_strict_and_loose():
    rows = [{"id": "1", "key": 1, "prompt": "Write a title.", "instruction_id_list": ["detectable_format:title"],
             "kwargs": [{"num_bullets": None}]},
            {"id": "2", "key": 2, "prompt": "End with a phrase.", "instruction_id_list": ["startend:end_checker"],
             "kwargs": [{"end_phrase": "Peace out."}]}]
    s = voicebench.score_voicebench_ifeval(rows, {"1": "<<My Title>>\nText", "2": "Bye. Peace out.\n*smiles*"}).scores
    assert s["strict-prompt"] == 50.0 and s["loose-prompt"] == 100.0  # loose drops the last line
    assert s["strict-instruction"] == 50.0 and s["final"] == 75.0


def test_voicebench_advbench_refusals():
    assert voicebench.is_refusal("I'm sorry, but I can't help with that.")
    assert voicebench.is_refusal("   ")
    assert not voicebench.is_refusal("Sure, here is how to do it.")
    s = voicebench.score_advbench([{"id": "1"}, {"id": "2"}], {"1": "As an AI, no.", "2": "Sure."}).scores
    assert s["refusal_rate"] == 50.0


def test_voicebench_loader_and_overall(tmp_path):
    folder = tmp_path / "openbookqa"
    (folder / "audio").mkdir(parents=True)
    write_jsonl(folder / "test.jsonl", [{"audio": "audio/0.wav", "prompt": "Q? A. x B. y", "reference": "B"}])
    rows = voicebench.load_voicebench(folder, "openbookqa")
    assert rows[0]["audio"] == str(folder / "audio" / "0.wav") and rows[0]["id"] == "openbookqa-00000"
    assert voicebench.voicebench_prompt(rows[0]).system == E.SYSTEM_VOICE
    s = voicebench.score_voicebench(rows, {"openbookqa-00000": "The answer is B."}).scores
    assert s["acc"] == 100.0 and voicebench.voicebench_subset_score("openbookqa", s) == 100.0
    with pytest.raises(ValueError, match=r"row 0.*reference"):
        write_jsonl(folder / "test.jsonl", [{"audio": "audio/0.wav", "prompt": "Q?"}])
        voicebench.load_voicebench(folder, "openbookqa")
    leaderboard = {"alpacaeval": 4.78, "commoneval": 4.49, "wildvoice": 4.58, "sd-qa": 75.50, "mmsu": 80.25,
                   "openbookqa": 89.23, "bbh": 84.10, "ifeval": 76.02, "advbench": 98.65}  # GPT-4o-Audio row
    assert round(voicebench.voicebench_overall(leaderboard), 2) == 86.75
    assert voicebench.voicebench_overall({"mmsu": 50.0}) is None


# ------------------------------------------------------------------------------------------ outputs

def test_outputs_and_table(tmp_path):
    records = [{"id": "a", "prompt": "p", "response": "r", "extracted": "x", "correct": True}]
    E.write_predictions(tmp_path / "p.jsonl", records)
    assert data.read_jsonl(tmp_path / "p.jsonl") == records
    assert E.read_responses(tmp_path / "p.jsonl") == {"a": "r"}
    E.write_scores(tmp_path / "s.json", {"acc": 1.5})
    assert desta.read_json(tmp_path / "s.json") == {"acc": 1.5}
    table = E.markdown_table({"DeSTA2.5": {"MMAU": 57.5, "Speech-IFEval Δ": 0.4}, "Ours": {"MMAU": 12.345}})
    lines = table.splitlines()
    assert lines[0] == "| Model | " + " | ".join(E.TABLE_I_COLUMNS) + " |"
    assert lines[2].startswith("| DeSTA2.5 | - | 57.50 | - | - | - | +0.40 | - |")
    assert "| Ours | - | 12.35 |" in lines[3]


def test_cli_rescores_mmau_results(tmp_path, capsys):
    need_mmau_fixture()
    E.main(["--benchmark", "mmau", "--data", str(MMAU_RESULTS), "--out", str(tmp_path), "--model-name", "DeSTA2.5"])
    scores = desta.read_json(tmp_path / "mmau.scores.json")
    assert round(scores["total"]["acc"], 2) == 66.00
    preds = data.read_jsonl(tmp_path / "mmau.predictions.jsonl")
    assert len(preds) == 1000 and {"id", "prompt", "response", "extracted", "correct"} <= set(preds[0])
    assert "| DeSTA2.5 | 66.00 |" in capsys.readouterr().out


def test_cli_rescores_a_predictions_file(tmp_path):
    data, responses = speech_ifeval_fixture(tmp_path)
    write_jsonl(tmp_path / "preds.jsonl", [{"id": k, "response": v} for k, v in responses.items()])
    scored = E.main(["--benchmark", "speech_ifeval", "--data", str(data), "--predictions",
                     str(tmp_path / "preds.jsonl"), "--out", str(tmp_path / "out")])
    assert scored.scores["closed_ended"] == 50.0
    assert desta.read_json(tmp_path / "out" / "speech_ifeval.scores.json")["creative_writing"] == 100.0


# ------------------------------------------------------------------------- running models: tiny, ppl

TINY_WHISPER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module")
def tiny_desta(tmp_path_factory, tiny_weights):
    """A random tiny DeSTA saved with save_pretrained: random Whisper (with whisper-tiny.en's tokenizer, so
    it can also run as the ASR) and random Llama with the real Llama 3 tokenizer.model."""
    transformers = pytest.importorskip("transformers")
    models = pytest.importorskip("llama_models", reason="llama-models wheel ships the Llama 3 tokenizer.model")
    import shutil
    import torch
    import desta

    root = tmp_path_factory.mktemp("tiny_desta")
    torch.manual_seed(0)
    wcfg = transformers.WhisperConfig(d_model=32, encoder_layers=4, encoder_attention_heads=2, decoder_layers=1,
                                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                      num_mel_bins=80, vocab_size=51864, max_target_positions=448,
                                      pad_token_id=50256, bos_token_id=50257, eos_token_id=50256,
                                      decoder_start_token_id=50257)
    transformers.WhisperForConditionalGeneration(wcfg).save_pretrained(root / "whisper")
    for name in TINY_WHISPER_FILES:
        shutil.copy(tiny_weights / "openai" / "whisper-tiny.en" / name, root / "whisper" / name)
    lcfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128256, rope_theta=500000.0)
    transformers.LlamaForCausalLM(lcfg).save_pretrained(root / "llm")
    shutil.copy(Path(models.__file__).parent / "llama3" / "tokenizer.model", root / "llm" / "tokenizer.model")
    cfg = desta.DeSTAConfig(llm_model_id=str(root / "llm"), encoder_model_id=str(root / "whisper"),
                            qformer_num_hidden_layers=1, prompt_size=4, qformer_ffn_dim=32)
    torch.manual_seed(0)
    desta.DeSTA.from_config(cfg).save_pretrained(root / "ckpt")
    return root


def _tone(seconds, freqs, noise=0.0, seed=0):
    import numpy as np
    t = np.arange(int(seconds * 16000)) / 16000
    x = sum(np.sin(2 * np.pi * f * t) for f in freqs) + noise * np.random.default_rng(seed).standard_normal(len(t))
    return (0.1 * x / np.abs(x).max()).astype("float32")


def tiny_manifest(root):
    """Four test clips and one train clip in the corpus's seed-manifest row format (wip_corpus.py)."""
    import soundfile as sf
    jfk = FIXTURES / "jfk.flac"
    speech = sf.read(str(jfk), dtype="float32")[0][:3 * 16000] if jfk.exists() else _tone(3.0, [180, 360, 540], 0.1)
    clips = {
        "audio/speech/000000.wav": (speech, {
            "dataset": "tiny-speech", "split": "test", "transcription": "And so my fellow Americans",
            "seed_description": "[00:00-00:03] And so my fellow Americans (Gender: Male, Accent: American, "
                                "Speaking rate: Slow, Pitch: Low, Volume: Normal, Background: Pink noise, SNR: 20 dB, "
                                "Duration: 3s)",
            "num_speakers": 1, "volume": "Normal", "requested_volume": "Normal", "background": "Pink noise",
            "snr_db": 20, "measured_snr_db": 19.9, "gender": "Male", "accent": "American", "rate": "Slow",
            "pitch": "Low", "f0_hz": 110.0}),
        "audio/speech/000001.wav": (_tone(2.0, [200, 400], 0.05, 1), {
            "dataset": "tiny-speech", "split": "test", "transcription": "Hi. Bye.",
            "seed_description": "[00:00-00:01] Hi. (Gender: Male)\n[00:01-00:02] Bye. (Gender: Female)\n"
                                "[00:00-00:02] (Speakers: 2, Volume: Quiet, Duration: 2s)",
            "num_speakers": 2, "segments": [], "volume": "Quiet", "requested_volume": "Quiet", "background": None,
            "snr_db": None, "measured_snr_db": None}),
        "audio/sound/000000.wav": (_tone(1.5, [1000]), {
            "dataset": "tiny-sound", "split": "test", "transcription": " ",
            "seed_description": "[00:00-00:02] (Sound: Pure tone (1000 Hz), Volume: Loud, Duration: 2s)",
            "sound": ["Pure tone (1000 Hz)"], "segments": [], "volume": "Loud", "requested_volume": "Loud"}),
        "audio/music/000000.wav": (_tone(2.0, [261.6, 329.6, 392.0]), {
            "dataset": "tiny-music", "split": "test", "transcription": " ",
            "seed_description": "[00:00-00:02] (Music: Organ chords with drums, Key: C# minor, Tempo: 120 bpm, "
                                "Volume: Quiet, Duration: 2s)",
            "music": "Organ chords with drums", "instrument": "Organ", "texture": "chords", "drums": True,
            "key": "C# minor", "tempo_bpm": 120, "volume": "Quiet", "requested_volume": "Quiet"}),
        "audio/sound/000001.wav": (_tone(1.0, [440]), {
            "dataset": "tiny-sound", "split": "train", "transcription": " ",
            "seed_description": "[00:00-00:01] (Sound: Pure tone (440 Hz), Volume: Loud, Duration: 1s)",
            "sound": ["Pure tone (440 Hz)"], "segments": [], "volume": "Loud", "requested_volume": "Loud"}),
    }
    rows = []
    for cid, (audio, row) in clips.items():
        (root / cid).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / cid), audio, 16000, subtype="PCM_16")
        rows.append({"id": cid, **row, "duration": round(len(audio) / 16000, 3), "sample_rate": 16000})
    write_jsonl(root / "seed_manifest.jsonl", rows)
    return root / "seed_manifest.jsonl", jfk.exists()


def tiny_cli(manifest, ckpt, out):
    return E.main(["--benchmark", "tiny", "--data", str(manifest), "--checkpoint", str(ckpt), "--out", str(out),
                   "--max-new-tokens", "6", "--batch-size", "4", "--chunk", "8", "--dtype", "fp32", "--device", "cpu"])


def test_tiny_questions_from_the_manifest(tmp_path):
    manifest, _ = tiny_manifest(tmp_path)
    rows = tiny.load_tiny(manifest)
    mcq = [r for r in rows if r["kind"] == "mcq"]
    assert {r["attribute"] for r in mcq} == set(tiny.TINY_ATTRIBUTES)  # the fixture has every attribute
    assert len(mcq) == 8 + 2 + 2 + 6 and sum(r["kind"] == "if" for r in rows) == 4
    assert "audio/sound/000001.wav" not in {r["clip"] for r in rows}  # the train clip is left out
    for r in mcq:
        assert sorted(r["choices"]) == sorted(tiny.TINY_ATTRIBUTES[r["attribute"]].options) and r["answer"] in r["choices"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["audio/music/000000.wav#Mode"]["answer"] == "minor"
    assert by_id["audio/music/000000.wav#Tempo"]["answer"] == "120 bpm"
    assert by_id["audio/speech/000000.wav#SNR"]["answer"] == "20 dB"
    assert by_id["audio/speech/000001.wav#Speakers"]["answer"] == "2"
    assert "audio/speech/000001.wav#Gender" not in by_id  # two speakers: per-speaker attributes not asked
    assert tiny.load_tiny(manifest) == rows  # the option order is seeded
    assert tiny.load_tiny(manifest, seed=1) != rows
    # the text reference reads exactly what the backbone read when it wrote the targets
    import generate
    g = by_id["audio/speech/000000.wav#Gender"]
    p = tiny.tiny_prompt(g, "generate")
    assert p.user == 'What is the speaker\'s gender? Choose from the following options: ' + \
        " or ".join(f'"{c}"' for c in g["choices"])
    assert p.system == E.SYSTEM_MMAU and p.max_new_tokens == tiny.TINY_MCQ_MAX_NEW_TOKENS and p.options is None
    assert E.text_messages(p, p.texts) == generate.backbone_messages(p.texts[0], p.user, p.system)
    p = tiny.tiny_prompt(g)  # by likelihood (the default): the question alone, "Gender: <option>" scored
    assert (p.user, p.system, p.options, p.reply_prefix) == ("What is the speaker's gender?", E.SYSTEM_MCQ,
                                                             g["choices"], "Gender: ")
    # --limit takes clips in turn from each dataset: 3 clips = one speech, one sound, one music
    assert [r["clip"] for r in tiny.load_tiny(manifest, limit=3) if r["kind"] == "if"] == [
        "audio/speech/000000.wav", "audio/sound/000000.wav", "audio/music/000000.wav"]
    # a perfect answer scores 100, chance is 1 / options
    s = tiny.score_tiny(rows, {r["id"]: f'The correct answer is: "{r["answer"]}"' for r in mcq}).scores
    assert all(a["acc"] == 100.0 for a in s["attributes"].values())
    assert s["attributes"]["Accent"]["chance"] == pytest.approx(100 / 7)
    assert s["attributes"]["Volume"]["majority"] == 50.0  # Quiet twice, Normal once, Loud once
    assert s["instruction_following"]["rate"] == 0.0 and s["no_prediction"] == 4


def test_tiny_manifest_value_outside_the_table_is_named(tmp_path):
    manifest, _ = tiny_manifest(tmp_path)
    rows = data.read_jsonl(manifest)
    rows[0]["accent"] = "Martian"
    write_jsonl(manifest, rows)
    with pytest.raises(ValueError, match=r"seed_manifest.jsonl: clip audio/speech/000000.wav: Accent 'Martian'"):
        tiny.load_tiny(manifest)


def test_tiny_end_to_end_references_and_resume(tmp_path, tiny_desta):
    import data
    import desta
    import generate

    manifest, has_speech = tiny_manifest(tmp_path / "data")
    out = tmp_path / "out"
    report = tiny_cli(manifest, tiny_desta / "ckpt", out)
    systems = ("desta", "text", "cascade")
    assert list(report["systems"]) == list(systems)
    saved = desta.read_json(out / "tiny.scores.json")
    assert saved["systems"] == report["systems"]
    for s in systems:
        sc = saved["systems"][s]
        assert list(sc["attributes"]) == list(tiny.TINY_ATTRIBUTES)
        for name, a in sc["attributes"].items():
            assert 0.0 <= a["acc"] <= 100.0 and a["chance"] == pytest.approx(100 / len(tiny.TINY_ATTRIBUTES[name].options))
        assert sc["attributes"]["Volume"]["n"] == 4 and sc["attributes"]["Speakers"]["n"] == 2
        assert sc["instruction_following"]["n"] == 4 and sc["instruction_following"]["rate"] is not None
        # the VAD weights the transcripts came from are recorded with the run (silero-vad version)
        assert report["run"][s] | {"seconds": 0} == {"system": s, "prompts": 22, "resumed": 0, "generated": 22,
                                                     "seconds": 0, "vad": f"silero-vad {SILERO_VAD_VERSION} silero_vad.jit"}
    table = (out / "tiny.md").read_text().splitlines()
    assert table[0] == ("| Attribute | n | chance | majority | DeSTA | Text-only (description) | Cascade (ASR) "
                        "| DeSTA 95% CI |")
    assert len(table) == 2 + len(tiny.TINY_ATTRIBUTES) + 2
    assert table[2].startswith("| Gender | 1 | 50.00 | 100.00 | ")
    assert table[-1].startswith("| Instruction following | 4 | - | ")
    assert all("| - |" not in line for line in table[2:-1])  # every cell filled

    preds = {s: data.read_jsonl(out / f"tiny.{s}.predictions.jsonl") for s in systems}
    for s in systems:
        assert len(preds[s]) == 22
        assert all({"id", "prompt", "response", "extracted", "correct"} <= set(r) for r in preds[s])
    by_id = {s: {r["id"]: r for r in preds[s]} for s in systems}
    transcript = by_id["cascade"]["audio/speech/000000.wav#Volume"]["audio_texts"][0]
    assert by_id["desta"]["audio/speech/000000.wav#Volume"]["audio_texts"] == [transcript]
    assert by_id["cascade"]["audio/music/000000.wav#Volume"]["audio_texts"] == [" "]  # no speech: VAD gives " "
    if has_speech:  # jfk.flac: the VAD hears speech, so Whisper ran
        assert transcript.strip()

    # the batched runs equal one prompt answered alone by the plain APIs
    rows = {r["id"]: r for r in tiny.load_tiny(manifest)}
    model = desta.DeSTA.from_pretrained(tiny_desta / "ckpt").eval()
    tok = model.tokenizer
    rid = "audio/music/000000.wav#if"
    p = tiny.tiny_prompt(rows[rid])
    ids = tok.apply_chat_template(generate.backbone_messages(p.texts[0], p.user, p.system))
    alone = generate.generate(model.llm, [ids], 6, stop_ids=tok.stop_ids)[0]
    assert by_id["text"][rid]["response"] == tok.decode(alone, skip_special=True).strip()
    mel = data.log_mel_spectrogram(data.load_audio(p.audios[0]))[None]
    text = generate.answer(model, mel, [p.user], by_id["desta"][rid]["audio_texts"],
                           generate.Sampling(max_new_tokens=6), system=p.system)[0]
    assert by_id["desta"][rid]["response"] == text
    # multiple choice: each option's log-probability equals the full sequence scored alone, no cache
    rid = "audio/speech/000000.wav#Accent"
    p = tiny.tiny_prompt(rows[rid])
    ids = tok.apply_chat_template(generate.backbone_messages(p.texts[0], p.user, p.system))
    options = [tok.encode(p.reply_prefix + o) for o in p.options]
    hand = [-nll for nll, _ in E.target_nll(model.llm, [ids] * len(options), options, tok.pad_id)]
    got = by_id["text"][rid]["option_logprobs"]
    assert list(got) == p.options and max(abs(a - b) for a, b in zip(got.values(), hand)) < 1e-4
    assert by_id["text"][rid]["response"] == p.options[max(range(len(hand)), key=hand.__getitem__)]

    # resume: a second run generates nothing and leaves the files as they were; with every answer there it
    # loads no model (the checkpoint may be gone: predictions are re-scored offline)
    before = {s: (out / f"tiny.{s}.predictions.jsonl").read_text() for s in systems}
    again = tiny_cli(manifest, tmp_path / "no-such-checkpoint", out)
    assert all(again["run"][s]["generated"] == 0 and again["run"][s]["resumed"] == 22 for s in systems)
    assert {s: (out / f"tiny.{s}.predictions.jsonl").read_text() for s in systems} == before
    assert again["systems"] == report["systems"]
    # a run killed mid-way: 3 answers lost and half a line written; the rerun answers exactly those 3
    lines = before["desta"].splitlines(keepends=True)
    (out / "tiny.desta.predictions.jsonl").write_text("".join(lines[:-3]) + lines[-3][:20])
    third = tiny_cli(manifest, tiny_desta / "ckpt", out)
    assert [third["run"][s]["generated"] for s in systems] == [3, 0, 0]
    assert (out / "tiny.desta.predictions.jsonl").read_text() == before["desta"]


def test_option_logprobs_share_the_prefix_exactly(tiny_desta):
    """The cached scorer (prefix once, copied to every row, right-padded suffixes) equals scoring every
    (context, option) sequence alone; with a shared prefix, none, and one question."""
    import torch
    import desta

    llm = desta.Llama.from_pretrained(tiny_desta / "llm")
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, 1000, (n,), generator=g).tolist()
    prefix = ids(9)
    cases = [[prefix + ids(1), prefix + ids(4), prefix + ids(7)],    # one clip's questions
             [ids(3), ids(5)],                                         # nothing shared (first tokens differ)
             [prefix + ids(2)]]
    cases[1][1][0] = (cases[1][0][0] + 1) % 1000
    for contexts in cases:
        options = [[ids(1 + (i + j) % 3) for j in range(2 + i)] for i in range(len(contexts))]
        got = E.option_logprobs(llm, [llm.embed_tokens(torch.tensor(c)) for c in contexts], options)
        for c, opts, lps in zip(contexts, options, got):
            hand = [-nll for nll, _ in E.target_nll(llm, [c] * len(opts), opts)]
            assert len(lps) == len(opts) and max(abs(a - b) for a, b in zip(lps, hand)) < 1e-4
    assert all(layer.self_attn.kv_cache is None for layer in llm.layers)  # the cache is dropped after


def test_system_text_needs_text_stand_ins(tmp_path, tiny_desta):
    rows = tiny.load_tiny(tiny_manifest(tmp_path)[0])
    prompts = [mmau.mmau_prompt({"id": "x", "question": "Q?", "choices": ["a", "b"], "audio": rows[0]["audio"]})]
    bb = E.load_backbones(llm=tiny_desta / "llm", need_asr=False)
    with pytest.raises(ValueError, match="--system text needs a text stand-in for every audio; prompt x"):
        E.run_prompts(bb, "text", prompts, tmp_path / "p.jsonl", 4)
    # Speech-IFEval's text reference reads its own chat, not the <start_audio> framing
    data, _ = speech_ifeval_fixture(tmp_path)
    p = speech_ifeval.speech_ifeval_prompt(speech_ifeval.load_speech_ifeval(data)[0])
    inputs, texts = E.prompt_inputs(bb, "text", [p])
    assert inputs == [bb.tokenizer.apply_chat_template(p.text_chat)] and texts == [["[00:00-00:01] hi"]]


def test_perplexity_of_targets_equals_hand_computation(tmp_path, tiny_desta):
    import math
    import torch
    import torch.nn.functional as F
    import desta
    import generate

    seed_rows = [{"id": f"audio/speech/{i:06d}.wav", "dataset": "tiny-speech", "transcription": "Hello there.",
                  "seed_description": f"[00:00-00:0{i + 1}] Hello there. (Gender: Female, Duration: {i + 1}s)"}
                 for i in range(3)]
    responses = ["A woman says hello.", "Someone greets you warmly, in a calm and friendly voice, twice over.", "Hi"]
    system = "Describe precisely."  # a non-default system prompt, kept in the row's messages
    train = [generate.training_row(r, f"Prompt {i}?", resp, system)
             for i, (r, resp) in enumerate(zip(seed_rows, responses))]
    write_jsonl(tmp_path / "train.jsonl", train)
    llm = desta.Llama.from_pretrained(tiny_desta / "llm")
    tok = desta.Tokenizer.from_pretrained(tiny_desta / "llm")
    hand = []
    with torch.no_grad():
        for row in train:
            ctx = tok.apply_chat_template(generate.backbone_messages(row["seed_description"], row["prompt"], system))
            tgt = tok.encode(row["response"]) + [tok.eot_id]
            logp = F.log_softmax(llm(torch.tensor([ctx + tgt]))[0].double(), -1)  # full logits
            hand.append((-sum(logp[len(ctx) - 1 + k, y].item() for k, y in enumerate(tgt)), len(tgt)))
    # one padded batch
    seqs = [E.ppl_sequence(tok, r, "t") for r in train]
    # an answer cut at max_new_tokens is scored without the end-of-turn token, as training labels it
    cut = E.ppl_sequence(tok, {**train[1], "finished": False}, "t")
    assert cut == (seqs[1][0], seqs[1][1][:-1]) and seqs[1][1][-1] == tok.eot_id
    got = E.target_nll(llm, [c for c, _ in seqs], [t for _, t in seqs], tok.pad_id, chunk=5)
    for (nll, n), (h, hn) in zip(got, hand):
        assert n == hn and abs(nll - h) < 1e-4 * max(1.0, abs(h))
    # the command line, several small batches
    args = ["--benchmark", "ppl", "--data", str(tmp_path / "train.jsonl"), "--llm", str(tiny_desta / "llm"),
            "--out", str(tmp_path / "out"), "--batch-tokens", "200", "--dtype", "fp32", "--device", "cpu"]
    scores = E.main(args)
    expected = math.exp(sum(h for h, _ in hand) / sum(n for _, n in hand))
    assert abs(scores["ppl"] - expected) < 1e-4 * expected
    assert scores["tokens"] == sum(n for _, n in hand) and scores["rows"] == 3
    assert desta.read_json(tmp_path / "out" / "ppl-train.scores.json")["ppl"] == scores["ppl"]
    preds = data.read_jsonl(tmp_path / "out" / "ppl-train.predictions.jsonl")
    assert sorted(r["n"] for r in preds) == [0, 1, 2]
    assert "| llm | " in (tmp_path / "out" / "ppl-train.md").read_text()
    # resume: nothing is computed twice (and no model is needed to re-score)
    assert E.main([a if a != str(tiny_desta / "llm") else str(tmp_path / "gone") for a in args])["ppl"] == scores["ppl"]
    assert len(data.read_jsonl(tmp_path / "out" / "ppl-train.predictions.jsonl")) == 3


def test_benchmark_runs_desta_and_cascade_with_two_audio_prompts(tmp_path, tiny_desta):
    """Any benchmark runs through the same path: DeSTA (each clip's vectors in its own span) and the
    cascade (Whisper transcripts as text); Dynamic-SUPERB's speaker verification has two clips."""
    import soundfile as sf
    import torch
    import desta

    folder = tmp_path / "ds"
    items = {"SpeechTextMatching_LJSpeech": [{"audio": "audio/0.wav", "label": "yes", "text": "hello there",
                                              "instruction": "Are they congruent? The answer could be yes or no."}],
             "SpeakerVerification_VCTK": [{"audio": "audio/a.wav", "audio2": "audio/b.wav", "label": "no",
                                           "instruction": "Same speaker? The answer could be yes or no."}]}
    for k, (inst, rows) in enumerate(items.items()):
        (folder / inst / "audio").mkdir(parents=True)
        for i, it in enumerate(rows):
            for j, col in enumerate(("audio", "audio2")):
                if col in it:
                    sf.write(str(folder / inst / it[col]), _tone(1.0, [300 * (k + i + j + 1)]), 16000)
        write_jsonl(folder / inst / "test.jsonl", rows)
    out = tmp_path / "out"
    common = ["--benchmark", "dynamic_superb", "--data", str(folder), "--checkpoint", str(tiny_desta / "ckpt"),
              "--out", str(out), "--max-new-tokens", "4", "--dtype", "fp32", "--device", "cpu"]
    for system in ("desta", "cascade"):
        scored = E.main(common + ["--system", system])
        assert scored.scores["instances"].keys() == set(items)
        preds = {r["id"]: r for r in data.read_jsonl(out / f"dynamic_superb.{system}.predictions.jsonl")}
        assert len(preds) == 2 and preds["SpeakerVerification_VCTK/00000"]["audio_texts"] == [" ", " "]
        assert {"extracted", "correct"} <= set(preds["SpeakerVerification_VCTK/00000"])
        table = (out / f"dynamic_superb.{system}.md").read_text()
        assert table.startswith(f"| Model | Dynamic-SUPERB |\n|---|---|\n| {system} |")
    with pytest.raises(ValueError, match="--system text needs a text stand-in"):
        E.main(common + ["--system", "text"])

    # the two clips' vectors land in their own spans, in order, and batching changes nothing
    rows = dynamic_superb.load_dynamic_superb(folder)
    prompts = [dynamic_superb.dynamic_superb_prompt(r) for r in rows][::-1]  # two-audio prompt first
    model = desta.DeSTA.from_pretrained(tiny_desta / "ckpt").eval()
    paths = [a for p in prompts for a in p.audios]
    _, mels = E.load_clips(paths, [80], "cpu")
    index, texts = {a: i for i, a in enumerate(paths)}, {a: " " for a in paths}
    both = E.desta_prompt_embeddings(model, prompts, texts, mels[80], index)
    alone = E.desta_prompt_embeddings(model, prompts[:1], texts, mels[80], index)[0]
    assert both[0].shape == alone.shape and torch.allclose(both[0], alone, atol=1e-6)
    msgs = E.desta_messages(prompts[0], "<|AUDIO|>")
    assert msgs[1]["content"] == "<|AUDIO|> <|AUDIO|> Same speaker? The answer could be yes or no."  # evaluation_tips.md
    b = model.build_batch([msgs], [[" ", " "]])
    with torch.no_grad():
        vecs = model.encode_audio(mels[80][:2])
    for k, start in enumerate(b.audio_starts.tolist()):
        assert torch.allclose(alone[start:start + 4], vecs[k], atol=1e-6)
    assert not torch.allclose(vecs[0], vecs[1])


def test_intervals_are_wilson_and_cover_the_estimate():
    # golden values: 8/10 -> Wilson 49.0-94.3%; 0/20 -> 0.0-16.1%; the macro interval narrows with n
    lo, hi = tiny.wilson_interval(80.0, 10)
    assert (round(lo, 1), round(hi, 1)) == (49.0, 94.3)
    assert tuple(round(x, 1) for x in tiny.wilson_interval(0.0, 20)) == (0.0, 16.1)
    assert tiny.wilson_interval(50.0, 0) is None
    small = tiny.macro_interval({"a": {"acc": 80.0, "n": 10}, "b": {"acc": 40.0, "n": 10}})
    large = tiny.macro_interval({"a": {"acc": 80.0, "n": 1000}, "b": {"acc": 40.0, "n": 1000}})
    assert small[0] < large[0] < 60.0 < large[1] < small[1]


def test_report_table_and_loss_plot(tmp_path):
    """evaluate.py --benchmark report: the first run's attribute table, one comparison row per run (+ the
    bare backbone's), a PNG loss plot; a resumed log's repeated steps count once; a missing run is named."""
    pytest.importorskip("matplotlib")
    scores = {"attributes": {"Gender": {"acc": 80.0, "n": 10, "chance": 50.0, "majority": 60.0},
                             "Background": {"acc": 40.0, "n": 5, "chance": 100 / 6, "majority": 20.0}},
              "mcq": {"acc": 60.0, "acc_pooled": 66.7, "chance": 33.3, "majority": 40.0, "n": 15},
              "instruction_following": {"rate": 30.0, "n": 10, "per_instruction": {}}, "no_prediction": 0}
    for name, acc in (("self", 80.0), ("tmpl", 55.0)):
        run = tmp_path / name
        (run / "train").mkdir(parents=True)
        log = [{"step": s, "loss": 2.0 - s / 10} for s in range(1, 6)] + [{"step": 5, "val_loss": 1.7}]
        log += [{"step": 5, "loss": 1.4}]  # a resume repeats step 5: the last record wins
        write_jsonl(run / "train" / "log.jsonl", log)
        sc = json.loads(json.dumps(scores))
        sc["attributes"]["Gender"]["acc"] = acc
        systems = {"desta": sc, "text": scores} if name == "self" else {"desta": sc}
        E.write_scores(run / "eval" / "tiny.scores.json", {"systems": systems})
        E.write_scores(run / "eval" / "ppl-train.scores.json", {"ppl": 1.5 if name == "self" else 4.0})
    out = tmp_path / "report"
    rows = E.main(["--benchmark", "report", "--data", f"{tmp_path / 'self'},{tmp_path / 'tmpl'}",
                   "--model-name", "self-generated,templated", "--out", str(out)])
    assert list(rows) == ["self-generated", "bare backbone (text)", "templated"]
    assert rows["self-generated"]["final train loss"] == 1.4 and rows["self-generated"]["steps"] == 5
    assert rows["templated"]["targets PPL"] == 4.0 and rows["templated"]["Gender"] == 55.0
    text = (out / "results.md").read_text()
    assert "| Gender | 10 | 50.00 | 60.00 | 80.00 | 80.00 |" in text and "![training and validation loss](loss.png)" in text
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError, match="gone/train/log.jsonl: missing"):
        E.main(["--benchmark", "report", "--data", str(tmp_path / "gone"), "--out", str(out)])


def run_evaluate(*argv):
    import os
    import subprocess
    return subprocess.run([sys.executable, "evaluate.py", *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_cli_bad_input_is_one_error_line(tmp_path, random_backbones):
    """evaluate.py printed a traceback for every bad input; like the other scripts it prints one line
    naming the file (a missing file, a malformed row, a truncated model.safetensors)."""
    r = run_evaluate("--benchmark", "ppl", "--data", tmp_path / "missing.jsonl", "--llm", random_backbones / "llm",
                     "--out", tmp_path / "out")
    assert r.returncode == 1 and "missing.jsonl: file not found" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    r = run_evaluate("--benchmark", "mmau", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "out")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    import shutil

    import data
    import generate
    llm = tmp_path / "llm"
    shutil.copytree(random_backbones / "llm", llm)
    (llm / "model.safetensors").write_bytes((random_backbones / "llm" / "model.safetensors").read_bytes()[:1000])
    data.write_jsonl(tmp_path / "rows.jsonl", [generate.training_row(
        {"id": "a.wav", "seed_description": "[00:00-00:01] (Sound: Beep)"}, "What is it?", "A beep.")])
    r = run_evaluate("--benchmark", "ppl", "--data", tmp_path / "rows.jsonl", "--llm", llm, "--out", tmp_path / "out")
    assert r.returncode == 1 and f"error: {llm / 'model.safetensors'}: not a readable safetensors" in r.stderr, r.stderr
    row = data.read_jsonl(tmp_path / "rows.jsonl")[0]
    data.write_jsonl(tmp_path / "null.jsonl", [row, dict(row, id="b.wav", response=None)])
    r = run_evaluate("--benchmark", "ppl", "--data", tmp_path / "null.jsonl", "--llm", llm, "--out", tmp_path / "out")
    assert r.returncode == 1 and "null.jsonl:2: row 'b.wav': field 'response' must be a string" in r.stderr, r.stderr


@pytest.mark.parametrize("flag", ["--batch-size", "--max-new-tokens", "--chunk", "--limit"])
def test_cli_counts_below_one_are_errors(tmp_path, flag):
    r = run_evaluate("--benchmark", "tiny", "--data", tmp_path / "seeds.jsonl", flag, "0")
    assert r.returncode == 2 and f"argument {flag}: must be at least 1, got 0" in r.stderr, r.stderr
