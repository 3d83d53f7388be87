"""Whisper for speech recognition: the text decoder and greedy, batched, KV-cached transcription.

DeSTA2.5's inference transcribes a clip that has speech (asr/vad.py decides) with the same Whisper
checkpoint whose encoder feeds the adapter; desta.WhisperEncoder is that encoder, reused here.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from desta import (Tokenizer, WhisperAttention, WhisperConfig, WhisperEncoder, empty_model, load_weights,
                   read_json)


class WhisperDecoderLayer(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int):
        super().__init__()
        self.self_attn = WhisperAttention(d, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = WhisperAttention(d, n_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, audio_kv, cache, t0):
        """x (B, T, d) new tokens at positions t0..t0+T-1; cache (k, v) (B, H, n_text_ctx, hd) is written
        in place; audio_kv is this layer's cross-attention (k, v), computed once per clip."""
        attn = self.self_attn
        h = self.self_attn_layer_norm(x)
        k, v = attn.split_heads(attn.k_proj(h)), attn.split_heads(attn.v_proj(h))
        T = x.shape[1]
        cache[0][:, :, t0:t0 + T], cache[1][:, :, t0:t0 + T] = k, v
        # causal over everything written so far: query i sees keys 0..t0+i
        mask = torch.ones(T, t0 + T, dtype=torch.bool, device=x.device).tril(t0)
        x = x + attn(h, kv=(cache[0][:, :, :t0 + T], cache[1][:, :, :t0 + T]), mask=mask)
        x = x + self.encoder_attn(self.encoder_attn_layer_norm(x), kv=audio_kv)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperDecoder(nn.Module):
    """Text decoder: learned positions, causal self-attention, cross-attention, output tied to the embedding."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d)
        self.embed_positions = nn.Embedding(cfg.n_text_ctx, d)
        self.layers = nn.ModuleList(WhisperDecoderLayer(d, cfg.decoder_heads, cfg.decoder_ffn_dim)
                                    for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(d)

    def audio_kv(self, audio):  # encoder output (B, 1500, d) -> per-layer cross-attention (k, v)
        return [(l.encoder_attn.split_heads(l.encoder_attn.k_proj(audio)),
                 l.encoder_attn.split_heads(l.encoder_attn.v_proj(audio))) for l in self.layers]

    def new_cache(self, batch: int):
        w = self.embed_tokens.weight
        hd = self.cfg.d_model // self.cfg.decoder_heads
        shape = (batch, self.cfg.decoder_heads, self.cfg.n_text_ctx, hd)
        return [(w.new_zeros(shape), w.new_zeros(shape)) for _ in self.layers]

    def forward(self, tokens, audio_kv, cache, t0: int = 0):  # tokens (B, T) -> logits (B, T, vocab)
        x = self.embed_tokens(tokens) + self.embed_positions.weight[t0:t0 + tokens.shape[1]]
        for layer, kv, c in zip(self.layers, audio_kv, cache):
            x = layer(x, kv, c, t0)
        return self.layer_norm(x) @ self.embed_tokens.weight.T


class Whisper(nn.Module):
    """Encoder + decoder, for speech recognition (the paper's inference transcribes speech first, SPEC 5)."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.model = nn.ModuleDict(dict(encoder=WhisperEncoder(cfg), decoder=WhisperDecoder(cfg)))  # HF key names

    @property
    def encoder(self) -> WhisperEncoder:
        return self.model["encoder"]

    @property
    def decoder(self) -> WhisperDecoder:
        return self.model["decoder"]

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32, device="cpu") -> "Whisper":
        folder = Path(folder)
        cfg = WhisperConfig.from_hf(read_json(folder / "config.json"), str(folder / "config.json"))
        model = empty_model(cls, cfg, dtype, device)
        load_weights(model, folder, ignore=("proj_out.",))  # proj_out is the tied embedding
        gen = folder / "generation_config.json"
        model.generation = read_json(gen) if gen.is_file() else read_json(folder / "config.json")
        model.tokenizer = Tokenizer.from_pretrained(folder)
        return model.eval()

    @property
    def lang_to_id(self) -> dict[str, int]:
        """Language tokens of a multilingual model ({"<|en|>": id, ...}); empty for English-only ones.
        generation_config.json's lang_to_id when present (what transformers reads), else the tokens
        between <|startoftranscript|> and <|translate|> (openai/whisper's layout)."""
        s = self.tokenizer.special
        if not self.generation.get("is_multilingual", "lang_to_id" in self.generation):
            return {}
        if "lang_to_id" in self.generation:
            return dict(self.generation["lang_to_id"])
        lo, hi = s["<|startoftranscript|>"], s["<|translate|>"]
        return {t: i for t, i in s.items() if lo < i < hi}

    def language_token(self, language: str) -> int:
        """'fr' or '<|fr|>' -> that language token's id."""
        token = language if language.startswith("<|") else f"<|{language.lower()}|>"
        if token not in self.lang_to_id:
            raise ValueError(f"language {language!r} is not one of this Whisper's languages "
                             f"({len(self.lang_to_id)} known{'; English-only model' if not self.lang_to_id else ''})")
        return self.lang_to_id[token]

    def prompt(self, language_id: int | None = None) -> list[int]:
        """Start of transcript (+ language + transcribe for multilingual models) + no timestamps."""
        s = self.tokenizer.special
        ids = [s["<|startoftranscript|>"]]
        if self.lang_to_id:
            if language_id is None:
                raise ValueError("a multilingual Whisper's prompt needs a language token (or let transcribe detect it)")
            ids += [language_id, s["<|transcribe|>"]]
        return ids + [s["<|notimestamps|>"]]

    @torch.no_grad()
    def transcribe(self, mel: torch.Tensor, max_new_tokens: int = 128, language: str | None = None,
                   return_languages: bool = False):
        """Greedy, batched, KV-cached decoding of log-mel (B, n_mels, 3000) -> texts.

        As transformers' Whisper generate, which the authors' code calls with no language: a
        multilingual model first detects each clip's language (the likeliest language token after
        <|startoftranscript|>), then decodes from sot, language, transcribe, notimestamps; `language`
        ('fr') forces one. An English-only model (tiny.en) has the fixed prompt sot, notimestamps.
        `suppress_tokens` are never produced, `begin_suppress_tokens` (blank, end of text) not as the
        first token; a row that produced end-of-text stays finished. Text is decoded as the
        tokenizer's folder says (clean-up of spaces) and stripped; no speech decoded stays "".
        return_languages: also return each row's language token ("<|en|>"; None for English-only).
        """
        B = mel.shape[0]
        audio, _ = self.encoder(mel)
        audio_kv = self.decoder.audio_kv(audio)
        cache = self.decoder.new_cache(B)
        s = self.tokenizer.special
        eot = s["<|endoftext|>"]
        suppress = torch.tensor(self.generation.get("suppress_tokens") or [], dtype=torch.long)
        begin = torch.tensor(self.generation.get("begin_suppress_tokens") or [], dtype=torch.long)
        sot = torch.full((B, 1), s["<|startoftranscript|>"], dtype=torch.long, device=mel.device)
        langs = self.lang_to_id
        if not langs and language is not None and language.strip("<|>").lower() != "en":
            raise ValueError(f"this Whisper is English-only: cannot transcribe in {language!r}")
        t0, lang = 0, None
        if langs and language is None:  # detect: the first step sees sot only, so its cache rows are reused
            logits = self.decoder(sot, audio_kv, cache, t0)[:, -1].float()
            t0 = 1
            ids = torch.tensor(list(langs.values()), device=mel.device)
            lang = ids[logits[:, ids].argmax(-1)]
            tokens = torch.stack([lang, torch.full_like(lang, s["<|transcribe|>"]),
                                  torch.full_like(lang, s["<|notimestamps|>"])], dim=1)
        else:
            if langs:
                lang = torch.full((B,), self.language_token(language), dtype=torch.long, device=mel.device)
            tokens = torch.tensor([self.prompt(None if lang is None else int(lang[0]))] * B, device=mel.device)
        n_prompt = t0 + tokens.shape[1]
        max_new_tokens = min(max_new_tokens, self.decoder.cfg.n_text_ctx - n_prompt)
        out = torch.full((B, max_new_tokens), eot, dtype=torch.long, device=mel.device)
        done = torch.zeros(B, dtype=torch.bool, device=mel.device)
        for i in range(max_new_tokens):
            logits = self.decoder(tokens, audio_kv, cache, t0)[:, -1].float()
            t0 += tokens.shape[1]
            logits[:, suppress] = -math.inf
            if i == 0:
                logits[:, begin] = -math.inf
            nxt = torch.where(done, eot, logits.argmax(-1))
            out[:, i] = nxt
            done |= nxt == eot
            if done.all():
                break
            tokens = nxt[:, None]
        texts = [self.tokenizer.decode([t for t in row if t != eot], skip_special=True).strip() for row in out.tolist()]
        if not return_languages:
            return texts
        names = {i: t for t, i in langs.items()}
        return texts, [None] * B if lang is None else [names[i] for i in lang.tolist()]
