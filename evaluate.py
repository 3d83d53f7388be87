"""
Benchmarks of DeSTA2.5-Audio (paper Table I/II/III, SPEC 10): loaders, prompts, the official scorers, the
model runs (DeSTA, the cascade baseline, a text-only reference) and the report tables. Predictions are
written with the raw responses, so a predictions file can always be re-scored offline.

    python evaluate.py --benchmark mmau --data mmau-test-mini.json --checkpoint DIR      (run + score)
    python evaluate.py --benchmark mmau --data ... --system cascade --llm DIR --asr DIR  (Whisper -> LLM)
    python evaluate.py --benchmark mmau --data results.json [--predictions FILE]         (score only)
    python evaluate.py --benchmark tiny --data data_tiny/seed_manifest.jsonl --checkpoint DIR
    python evaluate.py --benchmark ppl --data train.jsonl --llm DIR                      (Table III)

Reading order:
  0. Shared pieces: the Prompt a model is asked, what a scorer returns, small I/O helpers
  8. Perplexity of targets   (Table III: the backbone's PPL of a training manifest's responses)
  9. Running a model         (DeSTA, cascade = Whisper ASR -> LLM, text = LLM given a text stand-in;
                              batched, resumable)
 10. Outputs                 (predictions jsonl, scores json, a markdown table laid out like Table I, the
                              demo's report)
 11. Command line            (the registry BENCHMARKS, and `main`)

Sections 1-7 are the benchmarks, one module each in benchmarks/ (loader, prompts, official scorer, rule
tables), imported on demand:
  1. mmau.py            MMAU test-mini (official token-set scorer)
  2. dynamic_superb.py  Dynamic-SUPERB Phase-1 (48 speech instances, rule-based label matching)
  3. sakura.py          SAKURA (official GPT-4o judge protocol, or an approximate rule-based option matcher)
  4. ifeval.py          IFEval checkers (Google's instruction checkers and Speech-IFEval's variants)
  5. speech_ifeval.py   Speech-IFEval (IFrate, forgetting rate)
  6. voicebench.py      VoiceBench (the rule-based subsets: mmsu, openbookqa, bbh, ifeval, advbench)
  7. tiny.py            the synthetic corpus's test split as multiple-choice questions on its ground-truth
                        attributes, plus instruction-following prompts
  common.py             rows of a Hugging Face table export; an OpenAI-compatible judge client

Every benchmark is reached the same way through benchmark(name), its module: `.load(path, subset)` -> rows
(dicts; VoiceBench needs the subset name), `.prompts(rows)` -> [Prompt], `.score(rows, responses, ...)` ->
Scored(records, scores), where `responses` maps a row id to the model's raw text, `.table_i_cells(scores)`.
Where the official scorer is not rule-based (SAKURA, the chain-of-thought part of Speech-IFEval) the judge
runs only when configured (EVAL_JUDGE_* variables).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

import data
import desta
import generate

if TYPE_CHECKING:  # asr/ is tooling beside the scripts: imported lazily, where load_backbones needs it
    from asr.vad import SileroVAD
    from asr.whisper import Whisper

# -----------------------------------------------------------------------------------------------------
# 0. Shared pieces

# System prompts (paper; SPEC 10): desta.DEFAULT_SYSTEM, the one training uses, except where a benchmark has its
# own. MMAU uses the authors' released evaluation prompt.
# Multiple choice (Dynamic-SUPERB, SAKURA) as the authors' docs/evaluation_tips.md gives it: "instruction"
# (singular; the paper writes "instructions.") and the user turn `<|AUDIO|> {instruction}`, a space after
# the audio. Paper and code disagree; we follow the code.
SYSTEM_MCQ = "Focus on the audio clips and instruction. Choose one of the options without any explanation."
MCQ_AUDIO_SEP = " "
SYSTEM_MMAU = ('Focus on the audio clips and instructions. '
               'Put your answer in the format "The correct answer is: "___" ".')
SYSTEM_VOICE = "You are a voice assistant. Act as if you are a natural language partner"
AUDIO_SEP = "\n\n"  # the authors' MMAU prompt is "<|AUDIO|>\n\n{question}"


@dataclass
class Prompt:
    """One request to the model. The chat turn the model sees is: system = `system`; user = for each
    audio in `audios`, the model's audio placeholder followed by `audio_sep`, then `user` (section 9
    fills the placeholder: audio vectors + transcription for DeSTA, a text for the text-only systems)."""
    id: str
    system: str
    user: str
    audios: list
    audio_sep: str = AUDIO_SEP
    texts: list = None           # a text stand-in per audio (seed description, Speech-IFEval's textual_audio)
    max_new_tokens: int = None   # this prompt's budget (the benchmark's protocol); None: the run's default
    options: list = None         # multiple choice by likelihood: the answer is the likeliest option (section 9) ...
    reply_prefix: str = ""       # ... as the assistant's reply `reply_prefix + option`
    text_chat: list = None       # the exact chat the text system reads (a benchmark's own text reference)


@dataclass
class Scored:
    records: list  # one dict per row: id, prompt, response, extracted, correct, + grouping fields
    scores: dict   # the benchmark's figures, percentages in [0, 100]


def pct(hits, total):
    return 100.0 * hits / total if total else None


def require(row, keys, where):
    """Raise a clear error naming the file/row and the missing field."""
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


RESPONSE_KEYS = ("response", "model_output", "model_prediction")  # ours, then the authors' MMAU files


def read_responses(path):
    """A predictions file -> {id: response}. Accepts our predictions jsonl (id, response, ...) and json
    lists of rows such as the authors' MMAU results (id, model_output / model_prediction)."""
    path = Path(path)
    rows = desta.read_json(path) if path.suffix == ".json" else data.read_jsonl(path)
    if isinstance(rows, dict):  # {"results": [...]} or {id: response}
        rows = rows.get("results", [{"id": k, "response": v} for k, v in rows.items()])
    out = {}
    for n, row in enumerate(rows):
        require(row, ["id"], f"{path} row {n}")
        key = next((k for k in RESPONSE_KEYS if k in row), None)
        if key is None:
            raise ValueError(f"{path} row {n}: no response field (one of {list(RESPONSE_KEYS)})")
        out[str(row["id"])] = row[key] if row[key] is not None else ""
    return out


def responses_in_rows(rows):
    """Rows that already carry a model response (e.g. an authors' results file given as --data)."""
    out = {}
    for row in rows:
        key = next((k for k in RESPONSE_KEYS if k in row), None)
        if key is not None:
            out[row["id"]] = row[key] or ""
    return out



# -----------------------------------------------------------------------------------------------------
# 8. Perplexity of targets (Table III: self-generated 1.61 vs other-model 3.54)
#
# For each training row, the backbone reads exactly the text context it had when writing targets
# (system prompt + `<start_audio>{seed_description}<end_audio>\n{prompt}`, generate.backbone_messages)
# and we score the response tokens + the end-of-turn token, as training labels them (SPEC 5). PPL =
# exp(total NLL / total target tokens) over the manifest. Rows are batched by length, right-padded, and
# logits are computed only at the positions that predict a target token.

PPL_BATCH_TOKENS = 16384   # padded tokens per forward pass
PPL_LOGIT_CHUNK = 1024     # target positions per lm_head call: bounds the (chunk, vocab) logits


def ppl_sequence(tok, row, where):
    """A training row -> (context ids, target ids)."""
    require(row, ["seed_description", "prompt", "response"], where)
    messages = row.get("messages") or []
    system = messages[0]["content"] if messages and messages[0].get("role") == "system" else desta.DEFAULT_SYSTEM
    context = tok.apply_chat_template(generate.backbone_messages(row["seed_description"], row["prompt"], system))
    # an answer cut by max_new_tokens ("finished": false) has no end-of-turn, as in training (SPEC 5): the
    # backbone did not stop there, so scoring one would charge it for a token it never wrote
    return context, tok.encode(row["response"]) + ([tok.eot_id] if row.get("finished", True) else [])


@torch.no_grad()
def target_nll(llm, contexts, targets, pad_id=0, chunk=PPL_LOGIT_CHUNK):
    """One batch: summed NLL (float64) of each row's target ids given its context and the targets before
    them -> list of (nll, n_targets). contexts/targets: lists of id lists."""
    device = llm.embed_tokens.weight.device
    seqs = [c + t for c, t in zip(contexts, targets)]
    T = max(map(len, seqs))
    tokens = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    rows, cols, ys = [], [], []
    for i, (c, t) in enumerate(zip(contexts, targets)):
        tokens[i, :len(c) + len(t)] = torch.tensor(c + t)
        mask[i, :len(c) + len(t)] = True             # right padding: positions 0.. as the row alone
        rows += [i] * len(t)
        cols += range(len(c) - 1, len(c) + len(t) - 1)  # position p predicts token p + 1
        ys += t
    h = llm.hidden(tokens.to(device), attn_mask=mask.to(device))          # (B, T, dim)
    rows, cols, ys = (torch.tensor(x, device=device) for x in (rows, cols, ys))
    hs = h[rows, cols]                                                    # (N, dim): target positions only
    nll = torch.cat([F.cross_entropy(llm.lm_head(hs[j:j + chunk]).float(), ys[j:j + chunk], reduction="none")
                     for j in range(0, len(ys), chunk)])
    sums = torch.zeros(len(seqs), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
    return [(s, len(t)) for s, t in zip(sums.tolist(), targets)]


def length_batches(lengths, batch_tokens):
    """Indices sorted by length, cut into batches of at most batch_tokens padded tokens (at least one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        if cur and lengths[i] * (len(cur) + 1) > batch_tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + [cur] if cur else batches


def perplexity_of_targets(llm, tok, rows, out_path, batch_tokens=PPL_BATCH_TOKENS, where="manifest", log_every=10.0):
    """Per-row NLL appended to out_path as computed (row `n`, id, nll, tokens); rows already there are
    skipped on a rerun. Returns the scores: ppl = exp(total NLL / total tokens), and the mean per-row PPL."""
    writer = data.JsonlAppender(out_path)
    done = {r["n"]: r for r in writer.rows()}
    todo = [n for n in range(len(rows)) if n not in done]
    seqs = {n: ppl_sequence(tok, rows[n], f"{where} row {n}") for n in todo}
    t0 = last = time.time()
    try:
        for batch in length_batches([len(seqs[n][0]) + len(seqs[n][1]) for n in todo], batch_tokens):
            ns = [todo[i] for i in batch]
            results = target_nll(llm, [seqs[n][0] for n in ns], [seqs[n][1] for n in ns], tok.pad_id)
            for n, (nll, k) in zip(ns, results):
                rec = {"n": n, "id": rows[n].get("id"), "prompt": rows[n]["prompt"], "nll": nll, "tokens": k,
                       "ppl": math.exp(nll / k)}
                writer.append(rec)
                done[n] = rec
            if time.time() - last >= log_every:
                last = time.time()
                print(f"ppl: {len(done)}/{len(rows)} rows, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    finally:
        writer.close()
    recs = [done[n] for n in range(len(rows))]
    nll, tokens = sum(r["nll"] for r in recs), sum(r["tokens"] for r in recs)
    return {"ppl": math.exp(nll / tokens), "nll_per_token": nll / tokens, "tokens": tokens, "rows": len(recs),
            "ppl_row_mean": sum(r["ppl"] for r in recs) / len(recs)}


# -----------------------------------------------------------------------------------------------------
# 9. Running a model
#
# Three systems answer a Prompt:
#   desta   : the fusion model; each audio is its prompt_size vectors + the VAD-gated Whisper transcript
#   cascade : the backbone LLM; each audio is replaced by its VAD-gated Whisper transcript, as text
#   text    : the backbone LLM; each audio is replaced by the Prompt's text stand-in (seed description)
# The text systems frame the text as DeSTA frames audio, `<start_audio>...<end_audio>`, which is how the
# backbone saw seed descriptions when it wrote the training targets. Decoding is greedy (paper).
# Prompts go to the engine `chunk` at a time (one engine call each, continuous batching inside); every
# answer is appended to the predictions file as it finishes, and a rerun skips the ids already there.

RUN_CHUNK = 256        # prompts per engine call: bounds their audio features and prompt embeddings
ENCODE_BATCH = 16      # clips per Whisper forward (encoder for DeSTA, decoder for ASR)
# the systems, with the names the tiny table gives them
TINY_SYSTEMS = {"desta": "DeSTA", "text": "Text-only (description)", "cascade": "Cascade (ASR)"}


@dataclass
class Backbones:
    llm: desta.Llama
    tokenizer: desta.Tokenizer
    model: desta.DeSTA = None       # the fusion model (None: text systems only)
    asr: Whisper = None             # VAD + ASR give the transcripts (desta, cascade)
    vad: SileroVAD = None
    transcripts: dict = None        # audio path -> transcript, shared by every system in a run
    language: str = None            # forced ASR language; None: detected per clip (the authors' code)

    @property
    def device(self):
        return self.llm.embed_tokens.weight.device


def load_backbones(checkpoint=None, llm=None, asr=None, need_asr=True, dtype=torch.float32, device="cpu",
                   encoder_dtype=torch.float32):
    """DeSTA from an adapter folder (its backbones from its config, or `llm` / `asr` folders), or a bare
    LLM; plus Whisper ASR and Silero VAD when transcripts are needed. With DeSTA, an ASR model on the same
    Whisper folder shares the encoder. dtype is the LLM's; Whisper runs in encoder_dtype (the authors:
    fp32 Whisper and adapter, bf16 LLM)."""
    model = None
    if checkpoint is not None:
        model = desta.DeSTA.from_pretrained(desta.resolve_weights(checkpoint), llm_dir=llm, dtype=dtype,
                                            device=device, encoder_dtype=encoder_dtype).eval()
        lm, tok = model.llm, model.tokenizer
    elif llm is not None:
        llm_dir = desta.resolve_weights(llm)
        lm, tok = desta.Llama.from_pretrained(llm_dir, dtype, device), desta.Tokenizer.from_pretrained(llm_dir)
    else:
        raise ValueError("give a DeSTA checkpoint or an LLM folder")
    bb = Backbones(lm, tok, model, transcripts={})
    if need_asr:
        asr = asr or (model.cfg.encoder_model_id if model is not None else None)
        if asr is None:
            raise ValueError("transcripts need a Whisper ASR folder (--asr)")
        from asr.pipeline import load_asr
        bb.asr, bb.vad = load_asr(desta.resolve_weights(asr), encoder_dtype, device, model)
    return bb


def user_content(prompt, fillers):
    """The user turn: each audio's filler (the audio locator, or a framed text) + audio_sep, then the text."""
    text = "".join(f + prompt.audio_sep for f in fillers) + prompt.user
    return text if prompt.user else text.rstrip()


def text_messages(prompt, texts):
    """The chat a text-only LLM reads: each audio replaced by a text, framed as DeSTA frames audio. For
    one audio and audio_sep '\\n' this is generate.backbone_messages."""
    framed = [desta.framed_audio(t) for t in texts]
    return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user_content(prompt, framed)}]


def desta_messages(prompt, locator):
    return [{"role": "system", "content": prompt.system},
            {"role": "user", "content": user_content(prompt, [locator] * len(prompt.audios))}]


def load_clips(paths, n_mels_list, device):
    """Audio files -> (waves, {n_mels: log-mel (A, n_mels, 3000) on device})."""
    waves = [data.load_audio(p) for p in paths]
    padded = torch.stack([torch.as_tensor(data.pad_or_trim(w)) for w in waves])
    return waves, {n: data.log_mel_spectrogram(padded, n).to(device) for n in set(n_mels_list)}


def ensure_transcripts(bb, paths, waves, mels):
    """Fill bb.transcripts for these clips (VAD-gated Whisper, ENCODE_BATCH clips at a time)."""
    from asr.pipeline import transcribe_if_speech
    todo = [i for i, p in enumerate(paths) if p not in bb.transcripts]
    mel = mels[bb.asr.encoder.cfg.n_mels]
    for j in range(0, len(todo), ENCODE_BATCH):
        idx = todo[j:j + ENCODE_BATCH]
        texts = transcribe_if_speech([waves[i] for i in idx], mel[idx], bb.vad, bb.asr, language=bb.language)
        for i, t in zip(idx, texts):
            bb.transcripts[paths[i]] = t


@torch.no_grad()
def desta_prompt_embeddings(model, prompts, transcripts, mel, index):
    """DeSTA prompts -> one (T_i, dim) embedding tensor each (audio vectors spliced in, no padding).
    mel (A, n_mels, 3000) holds each distinct clip once; index maps an audio path to its row."""
    device = model.llm.embed_tokens.weight.device
    vectors = torch.cat([model.encode_audio(mel[j:j + ENCODE_BATCH]) for j in range(0, len(mel), ENCODE_BATCH)])
    spans = torch.tensor([index[a] for p in prompts for a in p.audios], device=device)  # build_batch's span order
    return generate.desta_inputs(model, [desta_messages(p, model.cfg.audio_locator) for p in prompts],
                                 [[transcripts[a] for a in p.audios] for p in prompts], vectors[spans])


def check_text_stand_ins(prompts):
    missing = [p.id for p in prompts if not p.texts or len(p.texts) != len(p.audios)]
    if missing:
        raise ValueError(f"--system text needs a text stand-in for every audio; prompt {missing[0]} has none")


def prompt_inputs(bb, system, prompts):
    """Prompts -> (model inputs, audio_texts): per prompt the chat up to the assistant's turn, as a (T, dim)
    embedding tensor (desta: audio vectors spliced in) or a list of ids (text systems), and the text that
    stands for each of its audios (transcript or text stand-in)."""
    if system not in TINY_SYSTEMS:
        raise ValueError(f"unknown system {system!r}; one of {list(TINY_SYSTEMS)}")
    if system == "text":
        check_text_stand_ins(prompts)
        audio_texts = [p.texts for p in prompts]
    else:
        paths = list(dict.fromkeys(a for p in prompts for a in p.audios))
        n_mels = [bb.asr.encoder.cfg.n_mels] + ([bb.model.whisper.cfg.n_mels] if system == "desta" else [])
        waves, mels = load_clips(paths, n_mels, bb.device)
        ensure_transcripts(bb, paths, waves, mels)
        audio_texts = [[bb.transcripts[a] for a in p.audios] for p in prompts]
    tok = bb.tokenizer
    if system == "desta":
        index = {a: i for i, a in enumerate(paths)}
        inputs = desta_prompt_embeddings(bb.model, prompts, bb.transcripts, mels[bb.model.whisper.cfg.n_mels], index)
    else:
        inputs = [tok.apply_chat_template(p.text_chat if system == "text" and p.text_chat else text_messages(p, t))
                  for p, t in zip(prompts, audio_texts)]
    return inputs, audio_texts


def answer_prompts(bb, system, prompts, max_new_tokens, batch_size, on_finish):
    """One engine call for `prompts` (same system); on_finish(prompt, response, audio_texts) per answer."""
    inputs, audio_texts = prompt_inputs(bb, system, prompts)
    tok = bb.tokenizer
    generate.generate(bb.llm, inputs, max_new_tokens, stop_ids=tok.stop_ids, batch_size=batch_size,
                      on_finish=lambda i, ids: on_finish(prompts[i], tok.decode(ids, skip_special=True).strip(),
                                                         audio_texts[i]))


@torch.no_grad()
def option_logprobs(llm, contexts, options):
    """Multiple choice by likelihood, for questions that share a prefix (one clip's questions).

    contexts: per question the chat up to the assistant's turn, a (T_i, dim) embedding tensor; options:
    per question a list of option id lists. -> per question, each option's summed log-probability as the
    assistant's reply. The longest common prefix (system, audio, transcription) runs once into cache row 0
    and is copied to every row; each row then runs the rest of its question plus one option. A model too
    small to answer in a given format (SmolLM2-135M) is still measured on what it knows this way.
    """
    first = contexts[0]
    L = min(len(c) for c in contexts) - 1                    # every row keeps >= 1 context token to predict from
    for c in contexts[1:]:
        same = (c[:L] == first[:L]).all(-1)
        L = int(same.long().cumprod(0).sum())
    rows = [(i, o) for i, opts in enumerate(options) for o in opts]
    suffixes = [torch.cat([contexts[i][L:], llm.embed_tokens(torch.as_tensor(o, device=first.device))]) for i, o in rows]
    R, Ts = len(rows), max(len(x) for x in suffixes)
    device, positions = first.device, torch.arange(L + Ts, device=first.device)
    llm.setup_cache(R, L + Ts)
    try:
        if L:  # the shared prefix, once, into row 0, then copied to every row
            llm.hidden(embeds=first[None, :L], input_pos=positions[None, :L])
            llm.copy_cache(0, torch.arange(1, R, device=device), L)
        x = torch.zeros(R, Ts, first.shape[-1], dtype=first.dtype, device=device)
        for r, s in enumerate(suffixes):
            x[r, :len(s)] = s                                 # right padding: only later (padded) queries see it
        h = llm.hidden(embeds=x, input_pos=positions[L:].expand(R, Ts))       # (R, Ts, dim)
    finally:
        llm.drop_cache()
    # option token k of row r is predicted at suffix position (context length - L - 1) + k
    r_idx, t_idx, ys = [], [], []
    for r, (i, o) in enumerate(rows):
        start = len(contexts[i]) - L - 1
        r_idx += [r] * len(o)
        t_idx += range(start, start + len(o))
        ys += o
    r_idx, t_idx, ys = (torch.tensor(v, device=device) for v in (r_idx, t_idx, ys))
    logp = F.log_softmax(llm.lm_head(h[r_idx, t_idx]).float(), -1).gather(1, ys[:, None])[:, 0]
    sums = torch.zeros(R, dtype=torch.float64, device=device).index_add_(0, r_idx, logp.double()).tolist()
    out, k = [], 0
    for opts in options:
        out.append(sums[k:k + len(opts)])
        k += len(opts)
    return out


@torch.no_grad()
def choose_options(bb, system, prompts, on_finish):
    """Multiple-choice prompts answered by likelihood, clip by clip (prompts about the same first audio
    share their prefix); on_finish(prompt, best option, audio_texts, {option: logprob})."""
    inputs, audio_texts = prompt_inputs(bb, system, prompts)
    tok, embed = bb.tokenizer, bb.llm.embed_tokens
    if system != "desta":  # ids -> embeddings, so one scorer serves every system
        inputs = [embed(torch.as_tensor(ids, device=bb.device)) for ids in inputs]
    clips = defaultdict(list)
    for i, p in enumerate(prompts):
        clips[p.audios[0] if p.audios else p.id].append(i)
    for idx in clips.values():
        # the reply prefix is scored too: it is the same for every option, so it cannot change the choice
        scores = option_logprobs(bb.llm, [inputs[i] for i in idx],
                                 [[tok.encode(prompts[i].reply_prefix + o) for o in prompts[i].options] for i in idx])
        for i, lp in zip(idx, scores):
            p = prompts[i]
            on_finish(p, p.options[max(range(len(lp)), key=lp.__getitem__)], audio_texts[i], dict(zip(p.options, lp)))


def run_prompts(bb, system, prompts, path, max_new_tokens=512, batch_size=16, chunk=RUN_CHUNK, log_every=10.0):
    """Answer every prompt not yet in the predictions file `path`, appending {id, prompt, response,
    audio_texts, system} as each finishes. -> ({id: response} for all prompts, {id: file row}, stats)."""
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate prompt ids, e.g. {Counter(ids).most_common(1)[0][0]!r}: a rerun could not resume")
    writer = data.JsonlAppender(path)
    done = {r["id"]: r for r in writer.rows()}
    todo = [p for p in prompts if p.id not in done]
    stats = {"system": system, "prompts": len(prompts), "resumed": len(prompts) - len(todo), "generated": 0,
             "vad": getattr(bb and bb.vad, "source", None)}  # the VAD weights the transcripts depend on
    t0 = last = time.time()

    def on_finish(p, response, audio_texts, option_logprobs=None):
        nonlocal last
        rec = {"id": p.id, "prompt": p.user, "response": response, "audio_texts": audio_texts, "system": system}
        if stats["vad"] and system != "text":
            rec["vad"] = stats["vad"]
        if option_logprobs is not None:
            rec["option_logprobs"] = option_logprobs
        writer.append(rec)
        done[p.id] = rec
        stats["generated"] += 1
        if time.time() - last >= log_every:
            last = time.time()
            print(f"{system}: {stats['generated']}/{len(todo)} answered ({stats['resumed']} resumed), "
                  f"{stats['generated'] / (last - t0):.2f}/s", file=sys.stderr, flush=True)

    try:
        # prompts with their own budget (multiple choice, Speech-IFEval's 2048) go in their own engine calls
        groups = defaultdict(list)
        by_likelihood = [p for p in todo if p.options]
        for j in range(0, len(by_likelihood), chunk):
            choose_options(bb, system, by_likelihood[j:j + chunk], on_finish)
        for p in todo:
            if not p.options:
                groups[p.max_new_tokens or max_new_tokens].append(p)
        for cap, group in groups.items():
            for j in range(0, len(group), chunk):
                answer_prompts(bb, system, group[j:j + chunk], cap, batch_size, on_finish)
    finally:
        writer.close()
    stats["seconds"] = time.time() - t0
    return {i: done[i]["response"] for i in ids}, done, stats


def unanswered(path, prompts):
    """Prompts the predictions file does not answer yet."""
    done = {r["id"] for r in data.read_appended(path)}
    return [p for p in prompts if p.id not in done]


def finalize_predictions(path, records, done):
    """Rewrite the predictions file in row order with the scored records (extracted, correct), keeping each
    answer's audio_texts and system, and any earlier answers outside this run (e.g. a larger --limit)."""
    extra = {"audio_texts", "system", "option_logprobs", "vad"}
    out = [{**r, **{k: done[r["id"]][k] for k in extra if k in done.get(r["id"], {})}} for r in records]
    seen = {r["id"] for r in records}
    write_predictions(path, out + [r for i, r in done.items() if i not in seen])


# -----------------------------------------------------------------------------------------------------
# 10. Outputs

# Table I columns (benchmark order as the paper lists them).
TABLE_I_COLUMNS = ("Dynamic-SUPERB", "MMAU", "SAKURA-Single", "SAKURA-Multi", "Speech-IFEval IFrate",
                   "Speech-IFEval Δ", "VoiceBench")


def write_predictions(path, records):
    """One json line per item: id, prompt, response, extracted, correct (+ the benchmark's fields)."""
    data.write_jsonl(path, records)


def write_scores(path, scores):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _cell(value, column, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):  # counts
        return str(value)
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if "Δ" in column else f"{value:.{digits}f}"  # a delta shows its sign
    return str(value)


def markdown_table(rows, columns=TABLE_I_COLUMNS, digits=2, label="Model"):
    """rows: {model: {column: value}} -> a markdown table, models as rows; missing values show '-'."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for model, values in rows.items():
        lines.append(f"| {model} | " + " | ".join(_cell(values.get(c), c, digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------------------------------
# 11. Command line

# Every benchmark is a module of benchmarks/ with the same four names, and this tuple is the one place that
# lists them (adding a benchmark: one module, one name here):
#   load(data, subset=None) -> rows          prompts(rows) -> [Prompt]
#   score(rows, responses, judge=None, reference_ifrate=..., verdicts=None) -> Scored (unused keywords ignored)
#   table_i_cells(scores) -> {Table I column: value}, or None where one run fills no cell (VoiceBench)
# tiny (benchmarks/tiny.py) has several systems per run and its own table (main_tiny), and holds the demo's
# results page (main_report) and the coverage of attributes in targets (main_coverage); ppl is computed here.
BENCHMARKS = ("mmau", "dynamic_superb", "sakura", "speech_ifeval", "voicebench")


def benchmark(name):
    """A benchmark's module, imported when first asked for (benchmarks/ imports this file, not the reverse)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}")
    return importlib.import_module(f"benchmarks.{name}")


def load_rows(name, data, subset=None):
    return benchmark(name).load(data, subset)


def score_benchmark(name, rows, responses, **kw):
    return benchmark(name).score(rows, responses, **kw)


def write_table(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def llm_dtype(args) -> torch.dtype:
    """--dtype resolved for this machine (tools/cli.py), said once, when a model is first loaded."""
    from tools import cli
    if not isinstance(args.dtype, torch.dtype):
        args.dtype, _ = cli.pick_dtype(args.device, args.dtype, say="precision")
    return args.dtype


def load_system(args):
    """The backbones --system needs: DeSTA (--checkpoint), or the bare LLM (--llm, else the checkpoint's)
    with Whisper ASR for the cascade (--asr, else the checkpoint's encoder)."""
    from tools import cli
    dtype = llm_dtype(args)
    if args.system == "desta":
        bb = load_backbones(args.checkpoint, args.llm, args.asr, dtype=dtype, device=args.device,
                            encoder_dtype=cli.DTYPES[args.encoder_dtype])
        bb.language = args.language
        return bb
    cfg = args.checkpoint and desta.DeSTAConfig.from_json(desta.resolve_weights(args.checkpoint) / "config.json")
    llm = args.llm or (cfg.llm_model_id if cfg else None)
    asr = args.asr or (cfg.encoder_model_id if cfg else None)
    if llm is None:
        raise ValueError(f"--system {args.system} needs --llm (or a --checkpoint whose config names the LLM)")
    if args.system == "cascade" and asr is None:
        raise ValueError("--system cascade needs --asr (or a --checkpoint whose config names the encoder)")
    bb = load_backbones(None, llm, asr, need_asr=args.system == "cascade", dtype=dtype, device=args.device,
                        encoder_dtype=cli.DTYPES[args.encoder_dtype])
    bb.language = args.language
    return bb


def main_ppl(args):
    """Table III: the backbone's perplexity of a training manifest's targets."""
    llm = args.llm or (desta.DeSTAConfig.from_json(desta.resolve_weights(args.checkpoint) / "config.json").llm_model_id
                       if args.checkpoint else None)
    if llm is None:
        raise ValueError("--benchmark ppl needs the backbone: --llm DIR (or a --checkpoint whose config names it)")
    rows = data.evenly_spread(data.read_jsonl(args.data, check=data.training_row_problem), args.limit)
    if not rows:
        raise ValueError(f"{args.data}: no rows")
    out, name = Path(args.out), f"ppl-{Path(args.data).stem}"
    path = out / f"{name}.predictions.jsonl"
    done = {r["n"] for r in data.read_appended(path)}
    llm_model = tok = None  # every row already scored: no model is loaded
    if any(n not in done for n in range(len(rows))):
        bb = load_backbones(llm=llm, need_asr=False, dtype=llm_dtype(args), device=args.device)
        llm_model, tok = bb.llm, bb.tokenizer
    scores = perplexity_of_targets(llm_model, tok, rows, path, args.batch_tokens, where=str(args.data))
    scores.update(data=str(args.data), llm=str(llm))
    write_scores(out / f"{name}.scores.json", scores)
    table = markdown_table({args.model_name or Path(str(llm)).name: {"PPL of targets": scores["ppl"]}},
                           columns=("PPL of targets",))
    write_table(out / f"{name}.md", table)
    print(json.dumps(scores, indent=2))
    print(table)
    return scores


def main(argv=None):
    # tooling is imported here, never at the top: it imports this file, not the reverse
    from benchmarks import common, speech_ifeval, tiny, voicebench
    from tools import cli

    p = argparse.ArgumentParser(description="Run and score benchmarks (DeSTA2.5-Audio, SPEC 10).")
    p.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS) + ["tiny", "ppl", "report", "coverage"])
    p.add_argument("--seeds", help="coverage: the seed manifest the training rows (--data) were written from")
    p.add_argument("--data", required=True, help="benchmark file or folder (see each loader); tiny: the seed "
                   "manifest; ppl: a training manifest (DeSTA-AQA5M layout); report: run folders RUN[,RUN...] "
                   "(RUN/train, RUN/eval)")
    p.add_argument("--checkpoint", help="DeSTA adapter folder (official layout) or repo id under weights/: "
                   "run the model")
    p.add_argument("--system", default="desta", choices=list(TINY_SYSTEMS),
                   help="desta (needs --checkpoint), cascade (Whisper ASR -> --llm), text (--llm given each "
                   "audio's text stand-in, e.g. Speech-IFEval's textual_audio)")
    p.add_argument("--llm", help="backbone LLM folder (cascade, text, ppl; default: the checkpoint's)")
    p.add_argument("--asr", help="Whisper folder for VAD-gated ASR (default: the checkpoint's encoder)")
    p.add_argument("--predictions", help="score only: jsonl of {id, response} (or a json list with model_output / "
                   "model_prediction); default: responses already in the data rows")
    p.add_argument("--subset", help="VoiceBench subset: " + ", ".join(voicebench.VOICEBENCH_RULE_SUBSETS))
    p.add_argument("--limit", type=cli.at_least_one, help="only the first N rows (tiny: N clips, in turn from each dataset; "
                   "ppl: N rows evenly spread over the manifest)")
    p.add_argument("--out", default="out/eval", help="folder for predictions, scores and the table")
    p.add_argument("--model-name", help="row label in the markdown table")
    p.add_argument("--judge", action="store_true", help=f"use the LLM judge configured by {common.JUDGE_ENV_BASE_URL}")
    p.add_argument("--reference-ifrate", type=float, default=speech_ifeval.SPEECH_IFEVAL_REFERENCE_IFRATE)
    p.add_argument("--judge-verdicts", help="Speech-IFEval: released judge verdicts of these responses "
                   "(reports/llm_eval@chain-of-thought.jsonl) score the chain-of-thought part offline")
    p.add_argument("--max-new-tokens", type=cli.at_least_one, default=512,
                   help="for prompts without a budget of their own (Speech-IFEval: 2048, its protocol)")
    p.add_argument("--batch-size", type=cli.at_least_one, default=16, help="generation slots")
    p.add_argument("--chunk", type=cli.at_least_one, default=RUN_CHUNK, help="prompts per engine call")
    p.add_argument("--batch-tokens", type=cli.at_least_one, default=PPL_BATCH_TOKENS,
                   help="ppl: padded tokens per forward")
    cli.precision_arguments(p)
    p.add_argument("--language", help="force the ASR language (e.g. fr); default: Whisper detects it per clip")
    p.add_argument("--device", default=cli.device_for(0))
    p.add_argument("--split", default=tiny.TINY_SPLIT, help="tiny: the manifest split to ask about")
    p.add_argument("--audio-root", help="tiny: folder the manifest ids are relative to (default: its folder)")
    p.add_argument("--seed", type=int, default=tiny.TINY_SEED, help="tiny: option order")
    p.add_argument("--systems", help="tiny: comma-separated systems (default: desta,text,cascade)")
    p.add_argument("--mcq", choices=("likelihood", "generate"), default=tiny.TINY_MCQ,
                   help="tiny: multiple choice by option likelihood (default) or by a generated answer")
    args = p.parse_args(argv)
    if args.benchmark in ("tiny", "report", "coverage"):  # the tiny preset's benchmark, results page, coverage
        return {"tiny": tiny.main_tiny, "report": tiny.main_report, "coverage": tiny.main_coverage}[args.benchmark](args)
    if args.benchmark == "ppl":
        return main_ppl(args)
    judge = common.JudgeConfig.from_env() if args.judge else None
    if args.judge and judge is None:
        p.error(f"--judge needs {common.JUDGE_ENV_BASE_URL} (and {common.JUDGE_ENV_API_KEY}, {common.JUDGE_ENV_MODEL})")
    rows = load_rows(args.benchmark, args.data, args.subset)[:args.limit]
    name = args.benchmark + (f"-{args.subset}" if args.subset else "")
    out = Path(args.out)
    run = args.checkpoint is not None or args.system != "desta"
    if run:  # run a model, resumably, then score
        if args.predictions:
            p.error("--predictions scores given answers: leave out --checkpoint / --system")
        if args.system == "desta" and not args.checkpoint:
            p.error("--system desta needs --checkpoint")
        prompts = benchmark(args.benchmark).prompts(rows)
        if args.system == "text":
            check_text_stand_ins(prompts)  # before loading anything
        name = f"{name}.{args.system}"
        bb = load_system(args) if unanswered(out / f"{name}.predictions.jsonl", prompts) else None
        responses, done, stats = run_prompts(bb, args.system, prompts,
                                             out / f"{name}.predictions.jsonl", args.max_new_tokens,
                                             args.batch_size, args.chunk)
        print(f"{name}: {stats}", file=sys.stderr)
    else:
        responses = read_responses(args.predictions) if args.predictions else responses_in_rows(rows)
        if not responses:
            p.error("no responses: give --checkpoint (run a model), --predictions, or data rows that carry a response")
        unknown = set(responses) - {r["id"] for r in rows}
        if unknown:
            print(f"warning: {len(unknown)} prediction ids not in the data, e.g. {sorted(unknown)[:3]}",
                  file=sys.stderr)
    verdicts = speech_ifeval.read_judge_verdicts(args.judge_verdicts) if args.judge_verdicts else None
    scored = score_benchmark(args.benchmark, rows, responses, judge=judge, reference_ifrate=args.reference_ifrate,
                             verdicts=verdicts)

    if run:
        scored.scores["run"] = stats  # with the VAD version the transcripts came from
        finalize_predictions(out / f"{name}.predictions.jsonl", scored.records, done)
    else:
        write_predictions(out / f"{name}.predictions.jsonl", scored.records)
    write_scores(out / f"{name}.scores.json", scored.scores)
    print(json.dumps(scored.scores, indent=2, ensure_ascii=False))
    if benchmark(args.benchmark).table_i_cells is not None:
        cells = benchmark(args.benchmark).table_i_cells(scored.scores)
        label = args.model_name or (args.system if run else "model")
        table = markdown_table({label: cells}, columns=tuple(cells))
        write_table(out / f"{name}.md", table)
        print(table)
    print(f"wrote {out / (name + '.predictions.jsonl')} and {out / (name + '.scores.json')}", file=sys.stderr)
    return scored


if __name__ == "__main__":
    sys.modules["evaluate"] = sys.modules[__name__]  # benchmarks/ imports `evaluate`: this module, not a copy
    try:
        main()
    except (ValueError, OSError, ImportError) as e:
        # bad input: a missing or malformed file, a bad row, a checkpoint that cannot load (ManifestError,
        # AudioError and CheckpointError are ValueErrors), an optional reader not installed; every
        # message names the file, field or package
        sys.exit(f"error: {e}")
