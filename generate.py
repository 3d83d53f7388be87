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

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import desta

# -----------------------------------------------------------------------------------------------
# Sampling
# -----------------------------------------------------------------------------------------------


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (the nucleus), renormalised.

    probs (B, V). The most likely token always stays, so top_p -> 0 is greedy.
    """
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p      # mass of the strictly more likely tokens
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (int64 tensors holding values in [0, 2^32), so products never overflow)."""
    for _ in range(2):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    return (x >> 16) ^ x


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Counter-based uniforms in (0, 1), shape (B, vocab): a pure function of (seed, step, token).

    Each sequence's randomness depends on nothing but its own seed and position, so a sampled answer
    is the same alone, in any batch, in any slot, and after a restart (self-generation resumes).
    """
    key = hash32((hash32(seeds & 0xFFFFFFFF) ^ hash32(steps & 0xFFFFFFFF))[:, None]
                 + torch.arange(vocab, device=seeds.device))
    return (hash32(key).double() + 0.5) / 2**32


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
    gumbel = -torch.log(-torch.log(uniform_noise(seeds, steps, logits.shape[-1])))
    return (logits.double() + gumbel).argmax(-1)


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
        self.decode_step = torch.compile(self._decode_step, mode="reduce-overhead") if compile else self._decode_step

    # -- the two kinds of forward pass ---------------------------------------------------------
    def _prefill(self, rows: torch.Tensor, prompts: list) -> torch.Tensor:
        """Run new prompts (lists of ids, or (T, dim) embedding tensors) into cache rows; -> last logits."""
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        T = int(lens.max())
        if T > self.S:
            raise ValueError(f"prompt of {T} tokens does not fit the cache ({self.S}); raise max_len")
        pos = self.positions[:T].expand(len(prompts), T)
        valid = pos < lens[:, None]                                              # (n, T) right padding
        mask = (torch.ones(T, T, dtype=torch.bool, device=self.device).tril() & valid[:, None, :])[:, None]
        if isinstance(prompts[0], torch.Tensor):                                 # DeSTA: embeddings
            embeds = torch.zeros(len(prompts), T, prompts[0].shape[-1], dtype=prompts[0].dtype, device=self.device)
            for i, p in enumerate(prompts):
                embeds[i, :len(p)] = p
            h = self.llm.hidden(embeds=embeds.to(self.llm.embed_tokens.weight.dtype), pos=pos, mask=mask, write=(rows, pos))
        else:
            tokens = torch.zeros(len(prompts), T, dtype=torch.long, device=self.device)
            for i, p in enumerate(prompts):
                tokens[i, :len(p)] = torch.as_tensor(p)
            h = self.llm.hidden(tokens, pos=pos, mask=mask, write=(rows, pos))
        last = h[torch.arange(len(prompts), device=self.device), lens - 1]       # only these need logits
        return self.llm.lm_head(last), lens

    def _decode_step(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens (B,) at positions `lengths` (B,) -> logits (B, V); writes their keys/values."""
        pos = lengths[:, None]
        mask = (self.positions[None, :] <= pos)[:, None, None, :]              # (B, 1, 1, S)
        rows = torch.arange(self.B, device=self.device)
        h = self.llm.hidden(tokens[:, None], pos=pos, mask=mask, write=(rows, pos), read_cache=True)
        return self.llm.lm_head(h[:, 0])

    # -- the scheduler -------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, prompts: list, sampling: Sampling, stop_ids=(), continuous: bool = True, on_finish=None,
            seeds: list[int] | None = None):
        """Generate for every prompt; returns the new tokens of each (stop token excluded), in order.

        on_finish(index, tokens) is called as soon as a sequence finishes (self-generation appends its
        row there). Static batching (continuous=False) refills only when the whole batch is done.
        seeds: one sampling seed per prompt (default: sampling.seed + index).
        """
        if not prompts:
            return []
        if max(len(p) for p in prompts) + sampling.max_new_tokens > self.S:
            raise ValueError(f"longest prompt + max_new_tokens exceeds the cache length {self.S}")
        if seeds is None and sampling.seed is not None:
            seeds = [sampling.seed + i for i in range(len(prompts))]
        prompt_seeds = None if seeds is None else torch.tensor(seeds, dtype=torch.long, device=self.device)
        stop = torch.tensor(sorted(set(stop_ids)) or [-1], device=self.device)
        queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))    # longest first
        results: list = [None] * len(prompts)
        B, N = self.B, sampling.max_new_tokens
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
            if len(free) and queue and (continuous or not active.any()):
                take = [queue.pop(0) for _ in range(min(len(free), len(queue)))]
                rows = free[:len(take)]
                logits, lens = self._prefill(rows, [prompts[i] for i in take])
                owner[rows], n_new[rows] = torch.tensor(take, device=self.device), 0
                tok = draw(logits, rows)
                lengths[rows], last[rows], active[rows] = lens, tok, True
                out[rows, 0], n_new[rows] = tok, 1
                done = rows[torch.isin(tok, stop) | (n_new[rows] >= N)]
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
            done = rows[torch.isin(tok[rows], stop) | (n_new[rows] >= N)]
            if len(done):
                finish(done)
        return results


def generate(llm: desta.Llama, prompts: list, max_new_tokens: int = 256, temperature: float = 0.0,
             top_p: float = 1.0, stop_ids=(), seed: int | None = None, batch_size: int = 16,
             continuous: bool = True, max_len: int | None = None, on_finish=None,
             seeds: list[int] | None = None) -> list[list[int]]:
    """Batched, KV-cached generation. prompts: lists of token ids, or (T, dim) embedding tensors.

    Returns the new tokens of each prompt, without the stop token. Greedy when temperature is 0.
    """
    if not prompts:
        return []
    need = max(len(p) for p in prompts) + max_new_tokens
    max_len = max_len or need
    engine = Engine(llm, batch_size=min(batch_size, len(prompts)), max_len=max_len)
    try:
        return engine.run(prompts, Sampling(max_new_tokens, temperature, top_p, seed), stop_ids, continuous,
                          on_finish, seeds)
    finally:
        llm.drop_cache()
