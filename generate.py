"""
generate.py: the KV-cached batched generation engine, self-generation of training targets, and
inference on audio files.

    python generate.py selfgen --manifest seeds.jsonl --out rows.jsonl ...   (what `make data` calls)
    python generate.py --audio x.wav --prompt "What can you hear?" [--checkpoint DIR]

The engine (gpt-fast style, with continuous batching):
  * a static KV cache with one row per batch *slot*; every sequence starts at position 0 of its slot,
    so prompts of different lengths need no left padding and batched results equal solo results;
  * prefill: new prompts (token ids, or embeddings for DeSTA's audio prompts) run together,
    right-padded, and only their last position goes through the output head;
  * decode: one token for every slot per step, attending over the slot's cached positions;
  * continuous batching: when a slot finishes, the next prompt in the queue is prefilled into it at
    once, so one long answer never idles the rest of the batch. Prompts are queued longest first.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import desta

# -----------------------------------------------------------------------------------------------
# Sampling
# -----------------------------------------------------------------------------------------------


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (the nucleus), renormalised.

    probs (B, V). The most likely token always stays, so top_p = 0 is greedy (ties: the lowest id,
    as argmax picks); top_p >= 1 keeps every token.
    """
    if top_p >= 1.0:
        return probs  # a cumulative sum that rounds past 1 must not drop the tail
    sorted_p, idx = probs.sort(dim=-1, descending=True, stable=True)
    # mass of the strictly more likely tokens (an exclusive cumsum, not cumsum - p, which can round)
    mass_before = torch.cat([torch.zeros_like(sorted_p[:, :1]), sorted_p[:, :-1].cumsum(-1)], dim=-1)
    drop = mass_before >= top_p
    drop[:, 0] = False  # without this, top_p = 0 drops every token and the renormalisation gives NaN
    kept = torch.zeros_like(probs).scatter_(-1, idx, sorted_p.masked_fill(drop, 0.0))
    return kept / kept.sum(-1, keepdim=True)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding values in [0, 2^32), so products never overflow)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Counter-based uniforms in (0, 1) for tokens (B, K): a pure function of (seed, step, token id).

    Each sequence's randomness depends on nothing but its own seed and position, so a sampled answer
    is the same alone, in any batch, in any slot, and after a restart (self-generation resumes).
    """
    row = hash32(seeds & 0xFFFFFFFF) ^ hash32(steps & 0xFFFFFFFF)
    return (hash32(hash32(row[:, None] + tokens)).double() + 0.5) / 2**32


# Gumbel noise -log(-log(u)) from 32-bit uniforms lies within [G_LO, G_HI], so a token whose scaled
# logit is more than G_HI - G_LO below the best one can never win: only the rest need noise.
G_LO, G_HI = -math.log(-math.log(0.5 / 2**32)), -math.log(-math.log(1 - 0.5 / 2**32))


def sample(logits: torch.Tensor, temperature: float, top_p: float, seeds=None, steps=None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,). temperature 0 is greedy.

    Sampling uses the Gumbel-max trick: argmax(logits/T + Gumbel noise) over the top-p nucleus is a
    draw from the renormalised nucleus distribution. seeds/steps (B,) int64 pick each row's noise.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_p < 1.0:
        keep = top_p_filter(F.softmax(logits, dim=-1), top_p) > 0
        logits = logits.masked_fill(~keep, -math.inf)
    if seeds is None:  # unseeded: fresh randomness
        seeds = torch.randint(0, 2**32, (logits.shape[0],), device=logits.device)
        steps = torch.zeros_like(seeds)
    # only tokens that can still win get noise (a handful at the paper's temperature 0.05)
    contenders = logits >= logits.max(-1, keepdim=True).values - (G_HI - G_LO)
    k = int(contenders.sum(-1).max())
    cand, idx = logits.topk(k, dim=-1)
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, idx)))
    return idx.gather(-1, (cand.double() + gumbel).argmax(-1, keepdim=True)).squeeze(-1)


# -----------------------------------------------------------------------------------------------
# The engine
# -----------------------------------------------------------------------------------------------


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0   # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None    # sequence i uses seed + i unless run() gets explicit per-prompt seeds


class Engine:
    """Generates for a stream of prompts with `batch_size` slots over one static KV cache."""

    def __init__(self, llm: desta.Llama, batch_size: int = 16, max_len: int = 2048, compile: bool = False):
        self.llm, self.B, self.S = llm, batch_size, max_len
        llm.setup_cache(batch_size, max_len)
        w = llm.embed_tokens.weight
        self.device = w.device
        self.positions = torch.arange(max_len, device=self.device)
        self.decode_step = self._decode_step
        if compile:  # one graph: the decode step's shapes never change (static cache, fixed batch)
            llm.fuse_projections()  # 4 GEMMs a layer, not 7: pays when compiled, noise in eager mode
            if self.device.type == "cpu":
                # weights become constants, prepacked for the CPU GEMM, and each GEMM shape is timed between
                # oneDNN/MKL and inductor's own AMX/AVX-512 kernel (each lever measured: README "Speed",
                # bench/levers.py; the first call then takes ~45-95 s instead of ~35 s)
                import torch._inductor.config as inductor_config  # (torch.compile's options= does not reach these)
                inductor_config.freezing = inductor_config.max_autotune = True
                inductor_config.max_autotune_gemm_backends = "CPP,ATEN"
                self.decode_step = torch.compile(self._decode_step)
            else:
                self.decode_step = torch.compile(self._decode_step, mode="reduce-overhead")

    # -- the two kinds of forward pass ---------------------------------------------------------
    def _prefill(self, rows: torch.Tensor, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Run new prompts into cache rows -> (last logits, lengths). Prompts of ids that open with the same
        long prefix as the one before them (one clip's K prompts in self-generation: system prompt + seed
        description) reuse its keys/values: the first of such a group runs whole, the others copy its
        cache rows for the shared part and run only the rest."""
        if isinstance(prompts[0], torch.Tensor):
            return self._prefill_whole(rows, prompts)
        shared = shared_prefixes(prompts)
        lead = [i for i, n in enumerate(shared) if n == 0]
        lead_logits, lens = self._prefill_whole(rows[lead], [prompts[i] for i in lead])
        rest = [i for i, n in enumerate(shared) if n]
        if not rest:
            return lead_logits, lens
        logits = lead_logits.new_empty(len(prompts), lead_logits.shape[-1])
        lengths = torch.zeros(len(prompts), dtype=torch.long, device=self.device)
        logits[lead], lengths[lead] = lead_logits, lens
        leader = {}
        for i, n in enumerate(shared):
            leader[i] = i if n == 0 else leader[i - 1]
        src, dst = rows[[leader[i] for i in rest]], rows[rest]
        self.llm.copy_cache(src, dst)  # the shared keys/values: copied, not recomputed
        starts = torch.tensor([shared[i] for i in rest], device=self.device)
        logits[rest], lengths[rest] = self._prefill_rest(dst, [prompts[i] for i in rest], starts)
        return logits, lengths

    def _prefill_rest(self, rows, prompts, starts):
        """The tokens of each prompt from `starts` on, over cache rows that already hold the prompt before."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        T = int((lens - starts).max())
        pos = (starts[:, None] + self.positions[:T]).clamp(max=self.S - 1)     # padding past the end: never read
        tokens = torch.zeros(len(prompts), T, dtype=torch.long, device=self.device)
        for i, (p, s) in enumerate(zip(prompts, starts.tolist())):
            tokens[i, :len(p) - s] = torch.as_tensor(p[s:])
        h = self.llm.hidden(tokens, input_pos=pos, rows=rows)
        last = h[torch.arange(len(prompts), device=self.device), lens - starts - 1]
        return self.llm.lm_head(last), lens

    def _prefill_whole(self, rows: torch.Tensor, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Run new prompts (lists of ids, or (T, dim) embedding tensors) into cache rows; -> last logits."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        T = int(lens.max())
        if T > self.S:
            raise ValueError(f"prompt of {T} tokens does not fit the cache ({self.S}); raise max_len")
        pos = self.positions[:T].expand(len(prompts), T)                        # right padding: never read
        if isinstance(prompts[0], torch.Tensor):                                 # DeSTA: embeddings
            embeds = torch.zeros(len(prompts), T, prompts[0].shape[-1], dtype=prompts[0].dtype, device=self.device)
            for i, p in enumerate(prompts):
                embeds[i, :len(p)] = p
            h = self.llm.hidden(embeds=embeds.to(self.llm.embed_tokens.weight.dtype), input_pos=pos, rows=rows)
        else:
            tokens = torch.zeros(len(prompts), T, dtype=torch.long, device=self.device)
            for i, p in enumerate(prompts):
                tokens[i, :len(p)] = torch.as_tensor(p)
            h = self.llm.hidden(tokens, input_pos=pos, rows=rows)
        last = h[torch.arange(len(prompts), device=self.device), lens - 1]       # only these need logits
        return self.llm.lm_head(last), lens

    def _decode_step(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at positions `lengths` (B,) -> logits (B, V); writes their keys/values."""
        h = self.llm.hidden(tokens[:, None], input_pos=lengths[:, None])        # every slot, one token each
        return self.llm.lm_head(h[:, 0])

    # -- the scheduler -------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, prompts: list, sampling: Sampling, stop_ids=(), continuous: bool = True, on_finish=None,
            seeds: list[int] | None = None, max_new: list[int] | None = None):
        """Generate for every prompt; returns the new tokens of each (stop token excluded), in order.

        on_finish(index, tokens) is called as soon as a sequence finishes (self-generation appends its
        row there). Static batching (continuous=False) refills only when the whole batch is done.
        seeds: one sampling seed per prompt (default: sampling.seed + index).
        max_new: a per-prompt cap on new tokens (at most sampling.max_new_tokens).
        """
        if not prompts:
            return []
        if max(len(p) for p in prompts) + sampling.max_new_tokens > self.S:
            raise ValueError(f"longest prompt + max_new_tokens exceeds the cache length {self.S}")
        if seeds is None and sampling.seed is not None:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        prompt_seeds = None if seeds is None else torch.tensor(seeds, dtype=torch.long, device=self.device)
        stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=self.device)
        # longest first, keeping prompts that share a prefix together so they are prefilled together
        groups = []
        shared = [0] * len(prompts) if isinstance(prompts[0], torch.Tensor) else shared_prefixes(prompts)
        for i, n in enumerate(shared):
            if n == 0:
                groups.append([i])
            else:
                groups[-1].append(i)
        queue = sorted(groups, key=lambda g: -max(len(prompts[i]) for i in g))
        results: list = [None] * len(prompts)
        B, N = self.B, sampling.max_new_tokens
        caps = torch.tensor(max_new or [N] * len(prompts), device=self.device).clamp(max=N)
        owner = torch.full((B,), -1, dtype=torch.long, device=self.device)      # prompt index per slot
        lengths = torch.zeros(B, dtype=torch.long, device=self.device)          # cached positions per slot
        n_new = torch.zeros(B, dtype=torch.long, device=self.device)
        out = torch.zeros(B, N, dtype=torch.long, device=self.device)
        last = torch.zeros(B, dtype=torch.long, device=self.device)
        active = torch.zeros(B, dtype=torch.bool, device=self.device)

        def draw(logits, slots):  # each sequence's noise comes from its own (seed, step)
            if prompt_seeds is None:
                return sample(logits, sampling.temperature, sampling.top_p)
            return sample(logits, sampling.temperature, sampling.top_p, prompt_seeds[owner[slots]], n_new[slots])

        def finish(slots: torch.Tensor):
            for s, i, n in zip(slots.tolist(), owner[slots].tolist(), n_new[slots].tolist()):
                toks = out[s, :n].tolist()
                if toks and toks[-1] in stop_ids:
                    toks = toks[:-1]
                results[i] = toks
                if on_finish is not None:
                    on_finish(i, toks)
            active[slots] = False

        while queue or active.any():
            free = (~active).nonzero().squeeze(-1)
            take = []
            if queue and (continuous or not active.any()):
                # while others decode, a group joins only whole: split over two prefills, its shared part
                # would run twice (the second half finds no leader to copy from); an idle batch takes all
                whole = bool(active.any())
                while queue and len(take) < len(free):
                    room = len(free) - len(take)
                    if len(queue[0]) <= room:
                        take += queue.pop(0)
                    elif whole:
                        break
                    else:
                        take += queue[0][:room]
                        queue[0] = queue[0][room:]
            if take:
                rows = free[:len(take)]
                logits, lens = self._prefill(rows, [prompts[i] for i in take])
                owner[rows], n_new[rows] = torch.tensor(take, device=self.device), 0
                tok = draw(logits, rows)
                lengths[rows], last[rows], active[rows] = lens, tok, True
                out[rows, 0], n_new[rows] = tok, 1
                done = rows[torch.isin(tok, stop) | (n_new[rows] >= caps[owner[rows]])]
                if len(done):
                    finish(done)
                continue  # fill every free slot before the next decode step
            logits = self.decode_step(last, lengths)
            tok = draw(logits, torch.arange(B, device=self.device))
            lengths = torch.where(active, lengths + 1, lengths)
            rows = active.nonzero().squeeze(-1)
            out[rows, n_new[rows]] = tok[rows]
            n_new[rows] += 1
            last = tok
            done = rows[torch.isin(tok[rows], stop) | (n_new[rows] >= caps[owner[rows]])]
            if len(done):
                finish(done)
        return results


MIN_SHARED_PREFIX = 64  # tokens shared with the group's first prompt before its cache rows are copied


def common_prefix(a, b) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def shared_prefixes(prompts: list[list[int]]) -> list[int]:
    """Per prompt, how many of its first tokens it shares with the group it belongs to: 0 opens a group
    (it runs whole); n > 0: the prompt equals the group's first prompt for n tokens (n >= MIN_SHARED_PREFIX,
    and at least its last token is left to run). Groups are runs of consecutive prompts. The bar is above
    a chat template's system turn (ChatML ~32 tokens), so groups are one clip's prompts, not every prompt."""
    out, lead = [], None
    for p in prompts:
        n = 0 if lead is None else min(common_prefix(lead, p), len(p) - 1)
        if n >= MIN_SHARED_PREFIX:
            out.append(n)
        else:
            out.append(0)
            lead = p
    return out


def generate(llm: desta.Llama, prompts: list, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, stop_ids=(), seed: int | None = None, batch_size: int = 16,
             continuous: bool = True, max_len: int | None = None, on_finish=None,
             seeds: list[int] | None = None, compile: bool = False) -> list[list[int]]:
    """Batched, KV-cached generation. prompts: lists of token ids, or (T, dim) embedding tensors.

    Returns the new tokens of each prompt, without the stop token. Greedy when temperature is 0.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size ({batch_size}) and max_new_tokens ({max_new_tokens}) must be at least 1")
    if not prompts:
        return []
    need = max(len(p) for p in prompts) + max_new_tokens
    max_len = max_len or need
    engine = Engine(llm, batch_size=min(batch_size, len(prompts)), max_len=max_len, compile=compile)
    try:
        return engine.run(prompts, Sampling(max_new_tokens, temperature, top_p, seed), stop_ids, continuous,
                          on_finish, seeds)
    finally:
        llm.drop_cache()


# -----------------------------------------------------------------------------------------------
# Self-generation of training targets (SPEC 1)
# -----------------------------------------------------------------------------------------------
# The backbone LLM reads each clip's seed description in place of the audio, with the same system
# prompt and the same `<start_audio>...<end_audio>` framing the fusion model will see, and answers a
# prompt from the pool. Its answer becomes the training target for (audio, prompt).

SELFGEN_SAMPLING = Sampling(max_new_tokens=512, temperature=0.05, top_p=1.0)  # the paper's decoding
PROMPT_POOLS = {"speech": "prompts/speech.txt", "sound": "prompts/sound.txt",
                "speech_attributes": "prompts/speech_attributes.txt", "sound_attributes": "prompts/sound_attributes.txt"}


def choose_prompts(row: dict, pools: dict[str, list[str]], k, seed: int, k_attributes: int = 0) -> list[str]:
    """K distinct prompts for a clip: from the speech pool if it has a transcription, else the sound
    pool; then k_attributes more from the matching attribute pool (short questions on one property each,
    prompts/README.md). Seeded by the clip id, so any rank, any restart, picks the same prompts.
    k: an int, or {dataset: k} (balanced_k) to give small corpora more prompts per clip."""
    if isinstance(k, dict):
        k = k[row.get("dataset", "")]
    kind = "speech" if row.get("transcription", " ").strip() else "sound"
    chosen = random.Random(f"{seed}:{row['id']}").sample(pools[kind], min(k, len(pools[kind])))
    if k_attributes:  # its own stream: asking for attribute prompts leaves the general choice unchanged
        pool = [p for p in pools[f"{kind}_attributes"] if p not in chosen]
        chosen += random.Random(f"{seed}:{row['id']}:attributes").sample(pool, min(k_attributes, len(pool)))
    return chosen


def balanced_k(rows: list[dict], k: int, max_factor: int = 4) -> dict[str, int]:
    """Prompts per clip for each dataset so that small corpora are upsampled towards the largest one
    (the paper balances its 50 corpora), at most max_factor x k per clip."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.get("dataset", "")] = counts.get(r.get("dataset", ""), 0) + 1
    biggest = max(counts.values())
    return {d: min(max_factor * k, max(k, round(k * biggest / n))) for d, n in counts.items()}


def backbone_messages(seed_description: str, prompt: str, system: str = desta.DEFAULT_SYSTEM) -> list[dict]:
    """What the backbone reads to write a target: the description stands where the audio will be."""
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"{desta.framed_audio(seed_description)}\n{prompt}"}]


def training_row(seed_row: dict, prompt: str, response: str, system: str = desta.DEFAULT_SYSTEM,
                 finished: bool = True) -> dict:
    """A training manifest row in the DeSTA-AQA5M layout (SPEC 9). An answer cut by max_new_tokens
    is marked `"finished": false`: training then learns its words but not to stop there."""
    row = {"id": seed_row["id"], "dataset": seed_row.get("dataset", ""),
           "seed_description": seed_row["seed_description"], "prompt": prompt, "response": response,
           "messages": [{"role": "system", "content": system},
                        {"role": "user", "content": f"{desta.framed_audio()}\n{prompt}",
                         "audios": [{"audio": seed_row["id"], "text": seed_row.get("transcription") or " "}]}]}
    if not finished:
        row["finished"] = False
    return row


def cut_at_stop(text: str, stop: str | None) -> tuple[str, bool]:
    """An answer ends at the first `stop` text after its first words (a stop string, as in vLLM's `stop`):
    -> (the text before it, whether it was found). A small backbone often states what was asked in its
    first paragraph and then runs on into text no clip could predict; the stop keeps the first part."""
    text = text.strip()
    if not stop or stop not in text:
        return text, False
    return text[:text.index(stop)].rstrip(), True


def row_seed(seed: int, clip_id: str, prompt: str) -> int:
    """Each (clip, prompt) pair samples with its own noise: resumed or sharded runs write the same text."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{clip_id}\0{prompt}".encode()).digest()[:4], "little")


def part_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.part{rank}")


def self_generate(llm: desta.Llama, tok: desta.Tokenizer, seed_rows: list[dict], pools: dict[str, list[str]],
                  out, k: int = 4, seed: int = 42, sampling: Sampling = SELFGEN_SAMPLING, batch_size: int = 16,
                  rank: int = 0, world: int = 1, system: str = desta.DEFAULT_SYSTEM,
                  continuous: bool = True, log_every: float = 10.0, compile: bool = False,
                  k_attributes: int = 0, stop: str | None = None) -> dict:
    """Write this rank's share of the (clip, prompt) pairs to `<out>.part<rank>`, skipping pairs that
    any part file already holds. Rows are appended as they finish. Returns counts and speed.
    stop: end each answer at this text (cut_at_stop). The cut is made on the decoded text when the
    sequence ends (at a stop token or the cap), so it costs no host sync per step but saves no decoding."""
    out = Path(out)
    pairs = [(row, p) for row in seed_rows for p in choose_prompts(row, pools, k, seed, k_attributes)]
    done = {(r["id"], r["prompt"]) for part in out.parent.glob(f"{out.name}.part*")
            for r in data.read_appended(part)}
    mine = [(row, p) for i, (row, p) in enumerate(pairs) if i % world == rank and (row["id"], p) not in done]
    writer = data.JsonlAppender(part_path(out, rank))
    stats = dict(pairs=len(pairs), skipped=sum(i % world == rank for i in range(len(pairs))) - len(mine),
                 rows=0, tokens=0)
    t0 = last_log = time.time()

    def on_finish(i, tokens):
        nonlocal last_log
        row, prompt = mine[i]
        response, stopped = cut_at_stop(tok.decode(tokens, skip_special=True), stop)
        writer.append(training_row(row, prompt, response, system,
                                   finished=stopped or len(tokens) < sampling.max_new_tokens))
        stats["rows"] += 1
        stats["tokens"] += len(tokens)
        if time.time() - last_log >= log_every or stats["rows"] == len(mine):
            last_log = time.time()
            dt = max(last_log - t0, 1e-9)
            print(f"selfgen rank {rank}/{world}: {stats['rows']}/{len(mine)} rows "
                  f"({stats['skipped']} already done), {stats['rows'] / dt:.2f} rows/s, "
                  f"{stats['tokens'] / dt:.0f} tok/s", file=sys.stderr, flush=True)

    try:
        prompts = [tok.apply_chat_template(backbone_messages(row["seed_description"], p, system)) for row, p in mine]
        seeds = [row_seed(seed, row["id"], p) for row, p in mine]
        generate(llm, prompts, sampling.max_new_tokens, sampling.temperature, sampling.top_p, tok.stop_ids,
                 batch_size=batch_size, continuous=continuous, on_finish=on_finish, seeds=seeds, compile=compile)
    finally:
        writer.close()
    stats["seconds"] = time.time() - t0
    return stats


def merge_parts(out, seed_rows: list[dict], pools: dict[str, list[str]], k: int, seed: int,
                k_attributes: int = 0) -> int:
    """Join every rank's part file into `out` in the canonical (clip, prompt) order, atomically, then
    remove the parts. Each pair appears exactly once; a missing pair is an error."""
    out = Path(out)
    parts = sorted(out.parent.glob(f"{out.name}.part*"))
    got = {(r["id"], r["prompt"]): r for part in parts for r in data.read_jsonl(part)}
    order = [(row["id"], p) for row in seed_rows for p in choose_prompts(row, pools, k, seed, k_attributes)]
    missing = [key for key in order if key not in got]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} (id, prompt) pairs not generated yet, e.g. {missing[0]}")
    data.write_jsonl(out, [got[key] for key in order])
    for part in parts:
        part.unlink()
    return len(order)


# -----------------------------------------------------------------------------------------------
# Inference on audio files
# -----------------------------------------------------------------------------------------------


@torch.no_grad()
def desta_inputs(model: desta.DeSTA, conversations: list[list[dict]], transcriptions: list[list[str]],
                 audio: torch.Tensor) -> list[torch.Tensor]:
    """Conversations with audio locators -> one (T_i, dim) embedding prompt each, without padding.

    transcriptions[i] has one text per locator of conversation i; audio (A, prompt_size, dim) holds the
    adapter's vectors for every locator, in conversation order (DeSTA.build_batch's span order).
    """
    b = model.build_batch(conversations, transcriptions).to(model.llm.embed_tokens.weight.device)
    embeds = model.embed(b, audio)
    return [embeds[i][b.attn_mask[i]] for i in range(len(conversations))]


@torch.no_grad()
def answer(model: desta.DeSTA, mel: torch.Tensor | desta.EncodedAudio, prompts: list[str], transcriptions: list[str],
           sampling: Sampling = Sampling(max_new_tokens=512), system: str = desta.DEFAULT_SYSTEM,
           batch_size: int = 16, return_ids: bool = False):
    """DeSTA answers: one prompt per clip; mel (B, n_mels, 3000) or its cached encoder features. Audio
    vectors go in as embeddings.
    The text is batch_decode's (special tokens dropped, the tokenizer's clean-up), not stripped, as
    the authors' code returns it; return_ids: also the answer token ids (stop token excluded)."""
    locator = desta.framed_audio(model.cfg.audio_locator)
    convs = [[{"role": "system", "content": system}, {"role": "user", "content": f"{locator}\n{p}"}] for p in prompts]
    audio = model.encode_audio(mel.to(model.llm.embed_tokens.weight.device))
    rows = desta_inputs(model, convs, [[t] for t in transcriptions], audio)
    tok = model.tokenizer
    out = generate(model.llm, rows, sampling.max_new_tokens, sampling.temperature, sampling.top_p, tok.stop_ids,
                   sampling.seed, batch_size)
    texts = [tok.decode(t, skip_special=True) for t in out]
    return (texts, out) if return_ids else texts


# -----------------------------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------------------------


def main_selfgen(argv):
    from tools import cli, resume
    ap = argparse.ArgumentParser(prog="generate.py selfgen",
                                 description="self-generate training targets with the backbone LLM (SPEC 1)")
    ap.add_argument("--seeds", required=True, help="seed manifest (jsonl)")
    ap.add_argument("--llm", required=True, help="backbone LLM folder (HF layout) or repo id under weights/")
    ap.add_argument("--out", required=True, help="training manifest to write (jsonl, DeSTA-AQA5M layout)")
    ap.add_argument("--split", default=None, help="only seed rows of this split")
    ap.add_argument("--k", type=cli.at_least_zero, default=4,
                    help="prompts per clip from the general pools (0: attribute prompts alone, with --k-attributes)")
    ap.add_argument("--k-attributes", type=cli.at_least_zero, default=0,
                    help="more prompts per clip from the attribute pools (one property per question)")
    ap.add_argument("--balance", action="store_true",
                    help="upsample small corpora: up to 4k prompts per clip, towards the largest corpus's rows")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--speech-prompts", default=PROMPT_POOLS["speech"])
    ap.add_argument("--sound-prompts", default=PROMPT_POOLS["sound"])
    ap.add_argument("--speech-attribute-prompts", default=PROMPT_POOLS["speech_attributes"])
    ap.add_argument("--sound-attribute-prompts", default=PROMPT_POOLS["sound_attributes"])
    ap.add_argument("--fixed-prompt", default=None, help="use this one prompt for every clip (the paper's 1-P)")
    ap.add_argument("--max-new-tokens", type=cli.at_least_one, default=SELFGEN_SAMPLING.max_new_tokens)
    ap.add_argument("--temperature", type=cli.non_negative, default=SELFGEN_SAMPLING.temperature)
    ap.add_argument("--top-p", type=cli.probability, default=SELFGEN_SAMPLING.top_p)
    ap.add_argument("--stop", type=cli.stop_text, default=None,
                    help="end each answer at the first occurrence of this text, e.g. '\\n\\n' (the first paragraph); "
                    "\\n and \\t are read as a newline and a tab")
    ap.add_argument("--batch-size", type=cli.at_least_one, default=16)
    cli.precision_arguments(ap, encoder=False)
    ap.add_argument("--limit", type=cli.at_least_one, default=None, help="only N seed rows, evenly spread over the manifest")
    ap.add_argument("--one-voice", action="store_true",
                    help="only clips whose seed description has one spoken segment (questions about the speaker)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the decode step (pays off on long jobs)")
    ap.add_argument("--source", choices=("backbone", "template"), default="backbone",
                    help="who writes the targets: the backbone LLM (the method), or a fixed template that restates "
                    "the seed description whatever the prompt (the comparison study; no LLM runs)")
    a = ap.parse_args(argv)
    if a.k + a.k_attributes == 0:
        ap.error("--k 0 takes the attribute pools alone: --k plus --k-attributes must be at least 1")
    if a.fixed_prompt and a.k_attributes:
        ap.error("--fixed-prompt is the one-prompt ablation: leave out --k-attributes")
    out = Path(a.out)
    rank, world = cli.dist_setup()
    # rows are keyed by (id, prompt): a second clip with the same id would take the first's rows
    rows = data.read_jsonl(a.seeds, required=("id", "seed_description"), unique="id")
    rows = [r for r in rows if (a.split is None or r.get("split") == a.split)
            and (not a.one_voice or data.one_voice(r["seed_description"]))]
    if not rows:
        sys.exit(f"error: {a.seeds}: no seed rows{f' of split {a.split}' if a.split else ''}"
                 f"{' with one voice' if a.one_voice else ''}")
    rows = data.evenly_spread(rows, a.limit)
    k = balanced_k(rows, a.k) if a.balance else a.k
    if a.fixed_prompt:
        pools = {"speech": [a.fixed_prompt], "sound": [a.fixed_prompt]}
    else:
        pools = {"speech": data.load_prompts(a.speech_prompts), "sound": data.load_prompts(a.sound_prompts)}
        if a.k_attributes:
            pools.update(speech_attributes=data.load_prompts(a.speech_attribute_prompts),
                         sound_attributes=data.load_prompts(a.sound_attribute_prompts))
    settings = {"source": a.source, "seed": a.seed}
    if a.source == "backbone":
        settings.update(llm=str(a.llm), max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                        stop=a.stop)
    resume.check_selfgen_settings(out, settings, write=rank == 0)
    if a.source == "template":  # same (clip, prompt) pairs as the backbone would get; instant
        written = [training_row(r, p, data.templated_answer(r["seed_description"]))
                   for r in rows for p in choose_prompts(r, pools, k, a.seed, a.k_attributes)]
        data.write_jsonl(out, written)
        print(f"{out}: {len(written)} templated rows", file=sys.stderr)
        return
    if out.is_file() and not list(out.parent.glob(f"{out.name}.part*")):
        have = {(r["id"], r["prompt"]) for r in data.read_jsonl(out)}
        if all((r["id"], p) in have for r in rows for p in choose_prompts(r, pools, k, a.seed, a.k_attributes)):
            print(f"{out}: complete ({len(have)} rows), nothing to do", file=sys.stderr)
            return
    llm_dir = desta.resolve_weights(a.llm)
    device = cli.device_for(rank)
    dtype, _ = cli.pick_dtype(device, a.dtype, say="selfgen")
    llm = desta.Llama.from_pretrained(llm_dir, dtype, device)
    tok = desta.Tokenizer.from_pretrained(llm_dir)
    sampling = Sampling(a.max_new_tokens, a.temperature, a.top_p)
    stats = self_generate(llm, tok, rows, pools, out, k, a.seed, sampling, a.batch_size, rank, world,
                          compile=a.compile, k_attributes=a.k_attributes, stop=a.stop)
    print(f"selfgen rank {rank}: wrote {stats['rows']} rows, {stats['tokens']} tokens in {stats['seconds']:.1f} s",
          file=sys.stderr)
    cli.barrier(world)
    if rank == 0:
        n = merge_parts(out, rows, pools, k, a.seed, a.k_attributes)
        print(f"{out}: {n} rows", file=sys.stderr)
    if world > 1:
        torch.distributed.destroy_process_group()


def load_for_inference(checkpoint, dtype=torch.float32, encoder_dtype=torch.float32, device="cpu",
                       need_asr=True):
    """DeSTA, its Whisper ASR (sharing the encoder) and the VAD, each module in the authors' precision:
    Whisper (encoder and ASR decoder) and the adapter in encoder_dtype (fp32), the LLM in dtype.
    -> (model, asr or None, vad)."""
    from asr.pipeline import load_asr
    model = desta.DeSTA.from_pretrained(desta.resolve_weights(checkpoint), dtype=dtype, device=device,
                                        encoder_dtype=encoder_dtype).eval()
    asr, vad = load_asr(desta.resolve_weights(model.cfg.encoder_model_id) if need_asr else None, encoder_dtype,
                        device, model)
    return model, asr, vad


def main_infer(argv):
    from asr.pipeline import transcribe_if_speech
    from tools import cli
    ap = argparse.ArgumentParser(prog="generate.py", description="DeSTA2.5-Audio inference on audio files")
    ap.add_argument("--audio", nargs="*", default=[], help="audio file(s); several batch together")
    ap.add_argument("--prompt", required=True, help="the instruction (one for all files)")
    ap.add_argument("--checkpoint", default="DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B",
                    help="adapter folder (official layout) or repo id under weights/")
    ap.add_argument("--transcription", default=None,
                    help="use this text instead of Whisper ASR (a clip the VAD finds no speech in still gets ' ')")
    ap.add_argument("--no-vad-with-transcription", action="store_true",
                    help="use --transcription as it is, without the VAD")
    ap.add_argument("--language", default=None,
                    help="force Whisper's language (e.g. fr); default: detected per clip, as the authors' code")
    ap.add_argument("--llm", default=None, help="text-only mode: talk to this bare LLM (no --audio)")
    ap.add_argument("--system", default=desta.DEFAULT_SYSTEM)
    ap.add_argument("--max-new-tokens", type=cli.at_least_one, default=512)
    ap.add_argument("--temperature", type=cli.non_negative, default=0.0)
    ap.add_argument("--top-p", type=cli.probability, default=1.0)
    ap.add_argument("--seed", type=int, default=None)
    cli.precision_arguments(ap)
    ap.add_argument("--out", default=None, help="also write one json line per file: audio, transcription, "
                    "response, response_ids, vad")
    a = ap.parse_args(argv)
    if a.llm and a.audio:
        ap.error("--llm is the text-only mode and takes no --audio (the LLM would never hear it); drop --llm "
                 "to ask DeSTA about the audio (its LLM comes from --checkpoint)")
    sampling = Sampling(a.max_new_tokens, a.temperature, a.top_p, a.seed)
    device = cli.device_for(0)
    dtype, _ = cli.pick_dtype(device, a.dtype, say="precision")
    if a.llm or not a.audio:
        llm_dir = desta.resolve_weights(a.llm or desta.DeSTAConfig().llm_model_id)
        llm, tok = desta.Llama.from_pretrained(llm_dir, dtype, device), desta.Tokenizer.from_pretrained(llm_dir)
        ids = tok.apply_chat_template([{"role": "system", "content": a.system}, {"role": "user", "content": a.prompt}])
        out = generate(llm, [ids], sampling.max_new_tokens, sampling.temperature, sampling.top_p, tok.stop_ids, a.seed)
        print(tok.decode(out[0], skip_special=True).strip())
        return
    given = a.transcription is not None
    model, asr, vad = load_for_inference(a.checkpoint, dtype, cli.DTYPES[a.encoder_dtype], device, need_asr=not given)
    waves = [data.load_audio(p) for p in a.audio]
    mel = data.log_mel_spectrogram(torch.stack([torch.as_tensor(data.pad_or_trim(w)) for w in waves]),
                                   model.whisper.cfg.n_mels).to(device)
    texts = transcribe_if_speech(waves, mel, vad, asr, [a.transcription] * len(waves) if given else None,
                                 vad_with_given=not a.no_vad_with_transcription, language=a.language)
    replies, ids = answer(model, mel, [a.prompt] * len(waves), texts, sampling, a.system, return_ids=True)
    vad_source = None if given and a.no_vad_with_transcription else vad.source
    print(f"[vad] {vad_source}", file=sys.stderr)
    rows = []
    for path, text, reply, tokens in zip(a.audio, texts, replies, ids):
        print(f"== {path}\n[transcription] {text.strip() or '(no speech)'}\n{reply}\n")
        rows.append({"audio": path, "transcription": text, "response": reply, "response_ids": tokens,
                     "vad": vad_source})
    if a.out:
        data.write_jsonl(a.out, rows)


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["selfgen"]:
            main_selfgen(sys.argv[2:])
        else:
            main_infer(sys.argv[1:])
    except (data.ManifestError, data.AudioError, desta.CheckpointError) as e:
        sys.exit(f"error: {e}")  # bad input: the message names the file; no traceback needed
