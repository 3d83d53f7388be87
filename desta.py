"""
desta.py: the DeSTA2.5-Audio model, in one file, in reading order.

    audio (16 kHz) -> log-mel (data.py) -> WhisperEncoder (frozen) -> raw outputs of 4 tapped layers
      -> QFormerConnector (the only trainable part: 64 queries per tap, one shared 6-layer Q-Former,
         per-query softmax over taps, LayerNorm + Linear into the LLM's width)
      -> 64 audio vectors, followed by the transcription's token embeddings, spliced into the chat
         context of the frozen Llama-family LLM, which answers.

Sections:
  1. checkpoint I/O     safetensors folders in Hugging Face layout (single file or sharded index)
  2. Whisper encoder    the final state and the taps (its decoder, for ASR, is in asr/whisper.py)
  3. Llama family       Llama 3.x, SmolLM2, Qwen2.5-style biases; RMSNorm, llama3 RoPE, GQA, SwiGLU,
                        an optional static KV cache for generate.py
  4. Tokenizer          tiktoken over the model's own ids (the file formats are read in
                        tools/tokenizer_files.py), chat rendering (Llama 3 with the 3.1 date header, ChatML)
  5. Q-Former adapter   the official connector, with module names that mirror the released keys
  6. DeSTA              the fusion model, its chat context, its loss, and the official adapter layout

Facts (sizes, key names, formulas) are in SPEC.md; every section cites the part it implements. The
inference pipeline's untrained speech-recognition step (Silero VAD, Whisper's decoder) is in asr/.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

# -----------------------------------------------------------------------------------------------
# 1. Checkpoint I/O (Hugging Face layout)
# -----------------------------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint folder or config that cannot be used as it is; the message names the file/field."""


def read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def open_safetensors(path):
    """safe_open, naming the file when it is truncated or corrupt (safetensors' own error does not)."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e}): truncated or corrupt; download, "
                              f"convert or save it again") from None


def safetensors_index(folder) -> dict[str, Path]:
    """Map every tensor name in an HF folder to the file that holds it (sharded or single file)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        return {name: folder / shard for name, shard in weight_map.items()}
    single = folder / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{folder}: neither model.safetensors nor model.safetensors.index.json found")
    with open_safetensors(single) as f:
        return {name: single for name in f.keys()}


DERIVED_BUFFERS = (".rotary_emb.inv_freq",)


@torch.no_grad()
def load_weights(module: nn.Module, folder, key_of=lambda name: name, ignore=(), tied=()) -> None:
    """Copy checkpoint tensors into `module`, tensor by tensor (so an 8B model never needs 2 copies).

    key_of(param_name) -> checkpoint key. Checkpoint keys that start with a prefix in `ignore` are
    allowed to be unused (e.g. Whisper's decoder when loading the encoder); any other unused key, any
    missing key, and any shape mismatch is an error that names the tensor and the folder.
    `tied` lists parameter names that share storage with another parameter and are not loaded.
    """
    where = safetensors_index(folder)
    wanted = {key_of(n): (n, t) for n, t in module.state_dict(keep_vars=True).items() if n not in tied}
    missing = sorted(k for k in wanted if k not in where)
    if missing:
        raise CheckpointError(f"{folder}: missing tensor(s) {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    # some checkpoints also store buffers that are derived from the config (RoPE's inv_freq): never needed
    unexpected = sorted(k for k in where if k not in wanted and not k.startswith(tuple(ignore))
                        and not k.endswith(DERIVED_BUFFERS))
    if unexpected:
        raise CheckpointError(f"{folder}: unexpected tensor(s) {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    by_file: dict[Path, list[str]] = {}
    for k in wanted:
        by_file.setdefault(where[k], []).append(k)
    for path, keys in by_file.items():
        with open_safetensors(path) as f:
            for k in keys:
                name, dst = wanted[k]
                src = f.get_tensor(k)
                if tuple(src.shape) != tuple(dst.shape):
                    raise CheckpointError(f"{path}: tensor {k} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
                dst.copy_(src)


def empty_model(cls, cfg, dtype, device):
    """Build a module without initialising its weights (they are all loaded next)."""
    with torch.device("meta"):
        model = cls(cfg)
    return model.to(dtype).to_empty(device=device)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# -----------------------------------------------------------------------------------------------
# 2. Whisper encoder (SPEC 3)
# -----------------------------------------------------------------------------------------------

N_AUDIO_CTX = 1500  # encoder positions for 30 s (20 ms each), after the stride-2 conv
N_FRAMES = 3000     # log-mel frames for 30 s (10 ms hop)


@dataclass
class WhisperConfig:
    n_mels: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_heads: int = 6
    encoder_ffn_dim: int = 1536
    decoder_layers: int = 4
    decoder_heads: int = 6
    decoder_ffn_dim: int = 1536
    vocab_size: int = 51864
    n_audio_ctx: int = N_AUDIO_CTX
    n_text_ctx: int = 448

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "WhisperConfig":
        try:
            return cls(n_mels=d["num_mel_bins"], d_model=d["d_model"],
                       encoder_layers=d["encoder_layers"], encoder_heads=d["encoder_attention_heads"],
                       encoder_ffn_dim=d["encoder_ffn_dim"], decoder_layers=d.get("decoder_layers", 0),
                       decoder_heads=d.get("decoder_attention_heads", 1),
                       decoder_ffn_dim=d.get("decoder_ffn_dim", 0), vocab_size=d["vocab_size"],
                       n_audio_ctx=d.get("max_source_positions", N_AUDIO_CTX),
                       n_text_ctx=d.get("max_target_positions", 448))
        except KeyError as e:
            raise CheckpointError(f"{source}: missing Whisper field {e}") from None


class WhisperAttention(nn.Module):
    """Multi-head attention as Whisper has it: q, v and out have a bias, k has none (SPEC 3)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def split_heads(self, x):  # (B, T, d) -> (B, H, T, d/H)
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, -1).transpose(1, 2)

    def forward(self, x, kv=None, mask=None, is_causal=False):
        q = self.split_heads(self.q_proj(x))
        if kv is None:  # self-attention; cross-attention passes precomputed (k, v)
            kv = self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, is_causal=is_causal)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class WhisperEncoderLayer(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int):
        super().__init__()
        self.self_attn = WhisperAttention(d, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x):  # pre-LN, no mask: every clip is padded to 30 s
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(nn.Module):
    """Module names mirror HF's `model.encoder.*` keys so checkpoints load without renaming."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.n_audio_ctx, d)  # loaded, never recomputed (SPEC 3)
        self.layers = nn.ModuleList(WhisperEncoderLayer(d, cfg.encoder_heads, cfg.encoder_ffn_dim)
                                    for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, mel: torch.Tensor, taps=(), cropped: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mel (B, n_mels, 3000) -> final state (B, 1500, d) and the raw outputs of layers `taps`.

        The taps are the layers' own outputs, before the final LayerNorm (unlike HF's last
        `hidden_states` entry, which is after it): that is what the adapter was trained on (SPEC 4).
        cropped: mel may be shorter than 30 s (an even number of frames); the encoder then attends over
        those frames only, with the first positions' embeddings (whisper.cpp's `audio_ctx`). Whisper was
        trained on 30 s windows, so this is not the released model's input: the tiny preset's choice.
        """
        full = (self.cfg.n_mels, 2 * self.cfg.n_audio_ctx)
        ok = (mel.shape[-2] == full[0] and mel.shape[-1] % 2 == 0 and 0 < mel.shape[-1] <= full[1]) if cropped \
            else mel.shape[-2:] == full
        if not ok:
            raise ValueError(f"Whisper expects log-mel of shape (B, {full[0]}, {full[1]}), got {tuple(mel.shape)}: "
                             "pad or cut audio to 30 s first")
        x = F.gelu(self.conv1(mel.to(self.conv1.weight.dtype)))
        x = F.gelu(self.conv2(x)).transpose(1, 2)         # (B, 1500, d)
        x = x + self.embed_positions.weight[: x.shape[1]]
        tapped = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in taps:
                tapped.append(x)
        if len(tapped) != len(taps):
            raise ValueError(f"taps {list(taps)} out of range for {len(self.layers)} encoder layers")
        return self.layer_norm(x), tapped

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32, device="cpu") -> "WhisperEncoder":
        folder = Path(folder)
        hf_config = read_json(folder / "config.json")
        cfg = WhisperConfig.from_hf(hf_config, str(folder / "config.json"))
        model = empty_model(cls, cfg, dtype, device)
        model.hf_config = hf_config  # DeSTA.save_pretrained writes it as the official encoder_config
        # a full WhisperForConditionalGeneration folder also holds the decoder: not ours to load here
        load_weights(model, folder, key_of=lambda n: "model.encoder." + n,
                     ignore=("model.decoder.", "proj_out."))
        return model.eval()


# -----------------------------------------------------------------------------------------------
# 3. Llama family (SPEC 6)
# -----------------------------------------------------------------------------------------------


@dataclass
class LlamaConfig:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    head_dim: int = 128
    ffn_dim: int = 14336
    vocab_size: int = 128256
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = None   # {"rope_type": "llama3", "factor": 8, ...} or None
    tie_embeddings: bool = False        # Llama 3.2 1B/3B, SmolLM2, small Qwen2.5
    qkv_bias: bool = False              # Qwen2.5
    max_seq_len: int = 131072

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "LlamaConfig":
        """Read an HF Llama/Qwen2 config.json; a feature this module does not implement is an error."""
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{source}: hidden_act={act!r} is not supported (SwiGLU needs 'silu')")
        # transformers >= 5 may write rope_parameters instead of rope_theta + rope_scaling
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "llama3"):
            raise CheckpointError(f"{source}: rope_scaling.rope_type={kind!r} is not supported (default, llama3)")
        if d.get("mlp_bias"):
            raise CheckpointError(f"{source}: mlp_bias=true is not supported")
        n_heads = d["num_attention_heads"]
        try:
            return cls(dim=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=n_heads,
                       n_kv_heads=d.get("num_key_value_heads") or n_heads,
                       head_dim=d.get("head_dim") or d["hidden_size"] // n_heads,
                       ffn_dim=d["intermediate_size"], vocab_size=d["vocab_size"],
                       norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
                       rope_scaling=rope if kind == "llama3" else None,
                       tie_embeddings=bool(d.get("tie_word_embeddings", False)),
                       qkv_bias=bool(d.get("attention_bias", False) or d.get("model_type") == "qwen2"),
                       max_seq_len=d.get("max_position_embeddings", 131072))
        except KeyError as e:
            raise CheckpointError(f"{source}: missing Llama field {e}") from None


def rope_inv_freq(cfg: LlamaConfig, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,), with Llama 3.1's long-context rescaling when configured."""
    f = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device, dtype=torch.int64).float() / cfg.head_dim)
    s = cfg.rope_scaling
    if s:  # SPEC 6: keep high frequencies, divide low ones by `factor`, blend in between
        old, factor = s["original_max_position_embeddings"], s["factor"]
        lo, hi = s["low_freq_factor"], s["high_freq_factor"]
        wavelen = 2 * math.pi / f
        scaled = torch.where(wavelen > old / lo, f / factor, f)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        f = torch.where(medium, blended, scaled)
    return f


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):  # x (B, H, T, hd); cos/sin (B, 1, T, hd). HF weights are rotate-half (SPEC 6)
    return x * cos + rotate_half(x) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # normalise in fp32, cast back, then scale: exactly as the reference does
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class KVCache(nn.Module):
    """A static, preallocated cache (gpt-fast): one row per batch slot, shapes never change."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, rows, pos, k, v):
        """Store k, v (B, Hkv, T, hd) at positions pos (B, T) of cache rows `rows` (B,), or of rows 0..B-1 if
        rows is None; -> the keys and values those rows now hold, (B, Hkv, S, hd) each."""
        B, H, S, hd = k.shape[0], *self.k.shape[1:]
        r = torch.arange(B, device=k.device) if rows is None else rows
        # flat row index of every (row, head, position): one index_copy_ instead of a slow
        # multi-dimensional advanced-index write
        heads = torch.arange(H, device=k.device)[None, :, None]
        idx = ((r[:, None, None] * H + heads) * S + pos[:, None, :]).flatten()
        self.k.view(-1, hd).index_copy_(0, idx, k.reshape(-1, hd))
        self.v.view(-1, hd).index_copy_(0, idx, v.reshape(-1, hd))
        if rows is None:
            return self.k[:B], self.v[:B]   # the first B rows (every slot in a decode step): a view, no gather
        return self.k[rows], self.v[rows]


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.qkv_proj: nn.Linear | None = None  # Llama.fuse_projections: q, k, v as one GEMM
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mask, cache_at=None):
        B, T, _ = x.shape
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split([self.n_heads * self.head_dim] + [self.n_kv_heads * self.head_dim] * 2, -1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_at is not None:  # (rows, pos): store this step's keys/values, attend over the rows' cache
            k, v = self.kv_cache.update(*cache_at, k, v)
        if T == 1 and self.n_kv_heads != self.n_heads:
            # a decode step: each KV head's group of query heads becomes one block of query rows (transformers'
            # pack_gqa), so SDPA's CPU kernel packs each KV head once, not once per query head (bf16, batch 16,
            # a CPU without AMX: 1.29 -> 0.23 ms a call, decode 1.4-1.5x faster; README "Speed")
            y = F.scaled_dot_product_attention(q.view(B, self.n_kv_heads, -1, self.head_dim), k, v, attn_mask=mask)
            y = y.view(B, self.n_heads, 1, self.head_dim)
        else:  # GQA: SDPA broadcasts each KV head over its query group, no repeated copies in memory
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)
        self.gate_up_proj: nn.Linear | None = None  # Llama.fuse_projections: gate and up as one GEMM

    def forward(self, x):  # SwiGLU
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = LlamaAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(self, x, cos, sin, mask, cache_at=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_at)
        return x + self.mlp(self.post_attention_layernorm(x))


def padding_mask(attn_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool, False at (left) padding -> (B, 1, T, T) causal attention mask for SDPA.

    Each position also sees itself, so a padding row never has an all-masked softmax (which would
    give NaN); padding outputs are never read.
    """
    T = attn_mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=attn_mask.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=attn_mask.device)
    return ((causal & attn_mask[:, None, :]) | eye)[:, None]


def positions_from_mask(attn_mask: torch.Tensor) -> torch.Tensor:
    """RoPE positions that start at 0 at each row's first real token, so left padding changes nothing."""
    return (attn_mask.long().cumsum(-1) - 1).clamp(min=0)


class Llama(nn.Module):
    """A Llama-family decoder; module names mirror HF's `model.*` keys."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.checkpoint_layers = False  # recompute each layer in backward (big batches, little memory)

    def hidden(self, tokens=None, embeds=None, attn_mask=None, input_pos=None, rows=None):
        """Final normed hidden states (B, T, dim).

        tokens (B, T) ids, or embeds (B, T, dim) (DeSTA splices audio vectors into these).
        Without a cache: attn_mask (B, T) bool marks real tokens (default: all); RoPE positions and the
        causal mask come from it. With the KV cache (setup_cache; generate.py): input_pos (B, T) are these
        tokens' positions; their keys/values are stored there, in cache rows `rows` (B,) (default: rows
        0..B-1), and each token attends to its row's cached positions up to its own. So a prompt prefills
        at positions 0..T-1 (right padding writes past the end, where nothing reads until it is
        overwritten), a decode step runs one token per row at its length, and a row that holds a copied
        prefix (copy_cache) goes on from the prefix's length.
        """
        x = self.embed_tokens(tokens) if embeds is None else embeds
        B, T, _ = x.shape
        if input_pos is None:
            if attn_mask is None:
                attn_mask = torch.ones(B, T, dtype=torch.bool, device=x.device)
            mask, pos, cache_at = padding_mask(attn_mask), positions_from_mask(attn_mask), None
        else:
            S = self.layers[0].self_attn.kv_cache.k.shape[2]
            mask = (torch.arange(S, device=x.device) <= input_pos[..., None])[:, None]   # (B, 1, T, S)
            pos, cache_at = input_pos, (rows, input_pos)
        angles = pos[..., None].float() * rope_inv_freq(self.cfg, x.device)  # (B, T, hd/2), fp32
        angles = torch.cat((angles, angles), dim=-1)[:, None]                 # (B, 1, T, hd)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for layer in self.layers:
            if self.checkpoint_layers and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache_at)
        return self.norm(x)

    def forward(self, tokens=None, embeds=None, attn_mask=None, **kw) -> torch.Tensor:
        """-> logits (B, T, vocab). Training never calls this: it computes logits only where there is loss."""
        return self.lm_head(self.hidden(tokens, embeds, attn_mask, **kw))

    def setup_cache(self, batch: int, max_len: int, dtype=None, device=None):
        p = self.embed_tokens.weight
        for layer in self.layers:
            layer.self_attn.kv_cache = KVCache(batch, self.cfg.n_kv_heads, max_len, self.cfg.head_dim,
                                               dtype or p.dtype, device or p.device)

    def copy_cache(self, src: torch.Tensor, dst: torch.Tensor, length: int | None = None):
        """Cache rows src -> rows dst (index tensors, or src one row for many), positions [0, length):
        a prompt prefix computed once (one clip's K prompts, one clip's questions) is reused, not rerun."""
        for layer in self.layers:
            c = layer.self_attn.kv_cache
            c.k[dst, :, :length] = c.k[src, :, :length]
            c.v[dst, :, :length] = c.v[src, :, :length]

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Inference layout (gpt-fast's wqkv/w13): q/k/v and gate/up each become one Linear over the
        concatenated weights, so a decode step runs 4 GEMMs a layer instead of 7 (on CPU it pays in a
        compiled decode step, not in eager mode: README "Speed", bench/levers.py). The separate weights
        are released, so the checkpoint's names no longer load into this model and LoRA cannot be added;
        LoRA'd layers are left as they are."""
        def fused(*parts: nn.Linear) -> nn.Linear:
            w = parts[0].weight
            out = nn.Linear(w.shape[1], sum(p.out_features for p in parts), bias=parts[0].bias is not None,
                            device="meta")
            out.weight = nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=w.requires_grad)
            if out.bias is not None:
                out.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=w.requires_grad)
            return out
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            if a.qkv_proj is None and not isinstance(a.q_proj, LoRALinear):
                a.qkv_proj = fused(a.q_proj, a.k_proj, a.v_proj)
                del a.q_proj, a.k_proj, a.v_proj
            if m.gate_up_proj is None:
                m.gate_up_proj = fused(m.gate_proj, m.up_proj)
                del m.gate_proj, m.up_proj

    def drop_cache(self):
        for layer in self.layers:
            layer.self_attn.kv_cache = None

    @classmethod
    def from_pretrained(cls, folder, dtype=torch.float32, device="cpu") -> "Llama":
        folder = Path(folder)
        hf_config = read_json(folder / "config.json")
        cfg = LlamaConfig.from_hf(hf_config, str(folder / "config.json"))
        model = empty_model(cls, cfg, dtype, device)
        model.hf_config = hf_config  # DeSTA.save_pretrained writes it as the official llm_config
        if cfg.tie_embeddings:  # to_empty() breaks the tie: tie again before loading
            model.lm_head.weight = model.embed_tokens.weight
        load_weights(model, folder,
                     key_of=lambda n: n if n.startswith("lm_head.") else "model." + n,
                     ignore=("lm_head.",) if cfg.tie_embeddings else (),
                     tied=("lm_head.weight",) if cfg.tie_embeddings else ())
        return model.eval()


class LoRALinear(nn.Linear):
    """A frozen Linear plus a trainable low-rank update: y = W x + (alpha / r) * B A dropout(x).

    The paper's ablation (C1/C2) puts LoRA on q/k/v. It subclasses nn.Linear so the base weight keeps
    its checkpoint name, and names its factors `lora_A.default` / `lora_B.default` as peft does, the
    names the authors' code saves. B starts at zero, so the model starts exactly at the backbone.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the frozen base, shared, not copied
        self.scale, self.p = alpha / rank, dropout
        self.lora_A = nn.ModuleDict(dict(default=nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)))
        self.lora_B = nn.ModuleDict(dict(default=nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)))
        nn.init.zeros_(self.lora_B["default"].weight)

    def forward(self, x):
        delta = self.lora_B["default"](self.lora_A["default"](F.dropout(x, self.p, self.training).float()))
        return super().forward(x) + (self.scale * delta).to(x.dtype)


def add_lora(llm: Llama, rank: int = 16, alpha: float = 16.0, dropout: float = 0.1,
             targets=("q_proj", "k_proj", "v_proj")) -> None:
    """Wrap the attention projections of every layer with LoRA (the official code: r 16, alpha 16, q/k/v)."""
    for layer in llm.layers:
        if layer.self_attn.qkv_proj is not None:
            raise ValueError("add_lora: the projections are fused (Llama.fuse_projections); add LoRA before fusing")
        for name in targets:
            setattr(layer.self_attn, name, LoRALinear(getattr(layer.self_attn, name), rank, alpha, dropout))


# -----------------------------------------------------------------------------------------------
# 4. Tokenizer and chat formats (SPEC 7)
# -----------------------------------------------------------------------------------------------

LLAMA31_DATE_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


def clean_up_tokenization(text: str) -> str:
    """HF's `clean_up_tokenization`: no space before . ? ! , and English contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


class Tokenizer:
    """tiktoken underneath, over ranks read from the model's tokenizer file (from_file); ids are the model's
    own ids; renders chat for Llama 3 and ChatML models."""

    def __init__(self, name: str, pattern: str, ranks: dict[bytes, int], special: dict[str, int],
                 rank_to_id: np.ndarray | None, chat_format: str, chat_template: str | None = None,
                 clean_up: bool = False):
        n = len(ranks)
        # tokenizer_config.json's clean_up_tokenization_spaces: HF's decode then removes the space before
        # punctuation and contractions (true for Llama-3.1-8B-Instruct; false for whisper-tiny.en, SmolLM2)
        self.clean_up = clean_up
        self.special = special
        # special tokens get the ranks right after the regular ones; ids are mapped back below
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens={s: n + i for i, s in enumerate(special)})
        ident = np.arange(n) if rank_to_id is None else rank_to_id
        self.rank_to_id = np.concatenate([ident, np.array(list(special.values()), dtype=np.int64)])
        self.id_to_bytes: dict[int, bytes] = {int(ident[r]): b for b, r in ranks.items()}
        self.id_to_bytes.update({i: s.encode() for s, i in special.items()})
        self.vocab_size = max(self.id_to_bytes) + 1
        self.chat_format = chat_format
        self.chat_template = chat_template or ""
        if chat_format == "llama3":
            self.bos_id = special["<|begin_of_text|>"]
            self.stop_ids = [special[s] for s in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
            self.eot_id = special["<|eot_id|>"]
        elif chat_format == "chatml":
            self.bos_id = None
            self.eot_id = special["<|im_end|>"]
            self.stop_ids = sorted({self.eot_id} | {special[s] for s in ("<|endoftext|>",) if s in special})
        else:  # no chat (Whisper's tokenizer)
            self.bos_id = self.eot_id = None
            self.stop_ids = [special["<|endoftext|>"]] if "<|endoftext|>" in special else []
        self.pad_id = self.stop_ids[0] if self.stop_ids else 0  # never attended to; any valid id works

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder) -> "Tokenizer":
        folder = Path(folder)
        template, config = None, {}
        cfg_path = folder / "tokenizer_config.json"
        if cfg_path.is_file():
            config = read_json(cfg_path)
            template = config.get("chat_template")
            if isinstance(template, list):  # some repos store several named templates
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
        found = [p for p in (folder / "tokenizer.json", folder / "tokenizer.model", folder / "original" / "tokenizer.model")
                 if p.is_file()]
        if not found:
            raise CheckpointError(f"{folder}: no tokenizer.json or tokenizer.model")
        tok = cls.from_file(found[0], template)
        # absent: false, the default of current transformers (a bare tokenizer.model has no config)
        tok.clean_up = bool(config.get("clean_up_tokenization_spaces", False))
        return tok

    @classmethod
    def from_file(cls, path, chat_template: str | None = None) -> "Tokenizer":
        """A `tokenizer.json` (byte-level BPE) or Meta's Llama 3 `tokenizer.model`, read into tiktoken's ranks
        by tools/tokenizer_files.py (a file format, not the method)."""
        from tools import tokenizer_files
        path = Path(path)
        read = tokenizer_files.read_tokenizer_json if path.suffix == ".json" else tokenizer_files.read_llama3_model
        return cls(**read(path), chat_template=chat_template)

    # -- encode / decode ---------------------------------------------------------------------
    def encode(self, text: str, bos: bool = False, allow_special: bool = False) -> list[int]:
        """Text -> ids. Special-token text is plain text unless allow_special (as HF treats added tokens)."""
        ranks = self.enc.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())
        ids = self.rank_to_id[ranks].tolist() if ranks else []
        return ([self.bos_id] if bos and self.bos_id is not None else []) + ids

    def decode(self, ids, skip_special: bool = False, clean_up: bool | None = None) -> str:
        """ids -> text. clean_up (default: the folder's clean_up_tokenization_spaces) applies HF's rules,
        as `batch_decode` in the authors' code does (transformers 4.x applied them to BPE tokenizers too)."""
        specials = set(self.special.values())
        data = b"".join(self.id_to_bytes[int(i)] for i in ids if not (skip_special and int(i) in specials))
        text = data.decode("utf-8", errors="replace")
        return clean_up_tokenization(text) if (self.clean_up if clean_up is None else clean_up) else text

    # -- chat --------------------------------------------------------------------------------
    def default_system(self) -> str | None:
        """ChatML templates (SmolLM2, Qwen2.5) insert their own system turn when none is given."""
        if self.chat_format != "chatml":
            return None
        for newline in ("\n", "\\n"):  # a real newline in the jinja string, or the escape `\n`
            start = "<|im_start|>system" + newline
            i = self.chat_template.find(start)
            j = self.chat_template.find("<|im_end|>", i)
            if i >= 0 and j > 0:
                return self.chat_template[i + len(start):j]
        return None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The model's chat template as text (what HF's jinja template renders, for plain chat)."""
        if self.chat_format is None:
            raise ValueError("this tokenizer has no chat format")
        out = []
        if self.chat_format == "llama3":
            system = ""
            if messages and messages[0]["role"] == "system":
                system, messages = messages[0]["content"].strip(), messages[1:]
            out.append("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                       + LLAMA31_DATE_HEADER + system + "<|eot_id|>")
            for m in messages:
                out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>")
            if add_generation_prompt:
                out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        else:
            default = self.default_system()
            if messages and messages[0]["role"] != "system" and default is not None:
                out.append(f"<|im_start|>system\n{default}<|im_end|>\n")
            for m in messages:
                out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
            if add_generation_prompt:
                out.append("<|im_start|>assistant\n")
        return "".join(out)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt), allow_special=True)


# -----------------------------------------------------------------------------------------------
# 5. The Q-Former adapter (SPEC 4)
# -----------------------------------------------------------------------------------------------


@dataclass
class QFormerConfig:
    encoder_dim: int = 1280   # Whisper d; also the Q-Former's width
    llm_dim: int = 4096
    num_layers: int = 6       # `qformer_num_hidden_layers` of the released model
    num_heads: int = 20       # = Whisper's encoder heads in the official code
    ffn_dim: int = 3072       # BERT's default intermediate size, kept by the official code
    prompt_size: int = 64     # queries per tap
    num_taps: int = 4
    dropout: float = 0.1
    norm_eps: float = 1e-12


class QFormerAttention(nn.Module):
    """BERT attention sub-block: x = LayerNorm(x + dropout(dense(attention(x, context)))).

    The children are called `self` and `output` (with `dense`, `LayerNorm`) because those are the
    released checkpoint's key names; keeping them lets the official adapter load with no renaming.
    """

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        d = cfg.encoder_dim
        self.n_heads, self.p = cfg.num_heads, cfg.dropout
        self.self = nn.ModuleDict(dict(query=nn.Linear(d, d), key=nn.Linear(d, d), value=nn.Linear(d, d)))
        self.output = nn.ModuleDict(dict(dense=nn.Linear(d, d), LayerNorm=nn.LayerNorm(d, eps=cfg.norm_eps)))

    def forward(self, x, context, mask=None):  # x (B, Q, d) queries; context (B, S, d); mask (B, 1, 1, S)
        B = x.shape[0]
        heads = lambda t: t.view(B, t.shape[1], self.n_heads, -1).transpose(1, 2)
        q = heads(self.self["query"](x))
        k, v = heads(self.self["key"](context)), heads(self.self["value"](context))
        # the official model has no mask at all: the queries see each other in both directions (NOT
        # causal) and every frame; `mask` only exists for DeSTAConfig.mask_audio_padding
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        y = F.dropout(self.output["dense"](y.transpose(1, 2).flatten(2)), self.p, self.training)
        return self.output["LayerNorm"](x + y)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        d = cfg.encoder_dim
        self.p = cfg.dropout
        self.attention = QFormerAttention(cfg)        # queries <-> queries
        self.crossattention = QFormerAttention(cfg)   # queries  -> Whisper frames
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(d, cfg.ffn_dim)))
        self.output = nn.ModuleDict(dict(dense=nn.Linear(cfg.ffn_dim, d), LayerNorm=nn.LayerNorm(d, eps=cfg.norm_eps)))

    def forward(self, x, frames, frame_mask=None):
        x = self.attention(x, x)
        x = self.crossattention(x, frames, frame_mask)
        y = self.output["dense"](F.gelu(self.intermediate["dense"](x)))
        return self.output["LayerNorm"](x + F.dropout(y, self.p, self.training))


class QFormerConnector(nn.Module):
    """Taps (num_taps x (B, S, encoder_dim)) -> (B, prompt_size, llm_dim) audio vectors.

    One learnable query set per tap runs through ONE shared Q-Former stack; a per-query softmax over
    the taps (`layer_weights`) mixes the results; LayerNorm + Linear project into the LLM.
    """

    def __init__(self, cfg: QFormerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder_dim
        self.layer_prompts = nn.ParameterList(nn.Parameter(torch.randn(1, cfg.prompt_size, d)) for _ in range(cfg.num_taps))
        self.layer_weights = nn.Parameter(torch.zeros(cfg.prompt_size, cfg.num_taps))
        self.qformer = nn.ModuleDict(dict(layer=nn.ModuleList(QFormerLayer(cfg) for _ in range(cfg.num_layers))))
        self.proj = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.llm_dim))

    def forward(self, taps: list[torch.Tensor], frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """frame_mask (B, S) bool, True at frames the queries may read (None: all, as the official model)."""
        if len(taps) != self.cfg.num_taps:
            raise ValueError(f"expected {self.cfg.num_taps} tapped layers, got {len(taps)}")
        mask = None
        if frame_mask is not None:  # frames past every clip's end are never read: drop them before k/v
            S = int(frame_mask.sum(1).max())
            taps, mask = [t[:, :S] for t in taps], frame_mask[:, None, None, :S]
        outs = []
        for prompts, frames in zip(self.layer_prompts, taps):
            x = prompts.expand(frames.shape[0], -1, -1)
            for layer in self.qformer["layer"]:
                x = layer(x, frames, mask)
            outs.append(x)
        outs = torch.stack(outs, dim=2)                                    # (B, Q, taps, d)
        w = self.layer_weights.softmax(dim=-1).to(outs.dtype)[..., None]   # (Q, taps, 1): per query
        return self.proj((outs * w).sum(dim=2))                            # (B, Q, llm_dim)


# -----------------------------------------------------------------------------------------------
# 6. DeSTA: the fusion model (SPEC 4, 5)
# -----------------------------------------------------------------------------------------------

# Taps per Whisper depth, from the official code: every quarter of the encoder, 0-based.
TAPS_BY_DEPTH = {32: [7, 15, 23, 31], 24: [5, 11, 17, 23], 12: [2, 5, 8, 11], 4: [0, 1, 2, 3]}
DEFAULT_SYSTEM = "Focus on the audio clips and instructions."
START_AUDIO, END_AUDIO = "<start_audio>", "<end_audio>"
AUDIO_LOCATOR = "<|AUDIO|>"  # one per audio in a row's messages (the official loader asserts it)
IGNORE = -100  # label of positions without loss


def framed_audio(inside: str = AUDIO_LOCATOR) -> str:
    """An audio's place in a user turn as the official models see it: the locator the audio vectors
    replace, or (self-generation, text baselines) the text that stands for the audio, between the markers."""
    return f"{START_AUDIO}{inside}{END_AUDIO}"


def audio_frame_mask(mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(A, n_mels, T) log-mel -> (A, n_frames) bool: True up to the encoder frame holding the last mel frame
    above the example's floor. Zero padding (pad_or_trim) lands exactly on the floor (log-mel clamps to max -
    8), so this is the clip's length; a clip that is all floor keeps one frame."""
    floor = mel.amin(dim=(1, 2), keepdim=True)
    active = (mel > floor).any(dim=1)                                              # (A, T)
    idx = torch.arange(1, mel.shape[-1] + 1, device=mel.device)
    last = (active * idx).amax(dim=1)                                              # mel frames in use
    used = ((last + 1) // 2).clamp(min=1)                                          # conv2 has stride 2
    return torch.arange(n_frames, device=mel.device)[None] < used[:, None]


ENCODER_CROP_FRAMES = 50  # cropped encoder input (DeSTAConfig.crop_encoder_input) rounds up to whole seconds


def encoder_crop_lengths(frame_mask: torch.Tensor) -> torch.Tensor:
    """(A, 1500) clip frames -> (A,) encoder frames each clip is encoded with: its length rounded up to a
    whole second. A clip's features then depend on the clip alone, never on what it is batched with."""
    n = frame_mask.sum(1)
    return ((n + ENCODER_CROP_FRAMES - 1) // ENCODER_CROP_FRAMES * ENCODER_CROP_FRAMES).clamp(max=frame_mask.shape[1])


@dataclass
class EncodedAudio:
    """What the frozen encoder gives the adapter for A clips (what the feature cache stores, data.py)."""
    taps: list                        # num_taps x (A, S, encoder_dim), fp32
    frame_mask: torch.Tensor | None   # (A, S) bool, True at frames the Q-Former reads; None: all of them

    def to(self, device) -> "EncodedAudio":
        return EncodedAudio([t.to(device) for t in self.taps],
                            None if self.frame_mask is None else self.frame_mask.to(device))


@torch.no_grad()
def encoder_features(whisper: WhisperEncoder, mel: torch.Tensor, taps: list[int], mask_padding: bool = False,
                     crop: bool = False) -> EncodedAudio:
    """mel (A, n_mels, 3000) -> the frozen encoder's taps, and which frames the Q-Former reads.

    crop (DeSTAConfig.crop_encoder_input): each clip is encoded on its own frames rounded up to a whole
    second; the taps come back zero-padded to the longest, and the mask marks the clip's frames."""
    if not crop:
        _, tapped = whisper(mel, taps=taps)
        mask = audio_frame_mask(mel, tapped[0].shape[1]) if mask_padding else None
        return EncodedAudio([t.float() for t in tapped], mask)
    mask = audio_frame_mask(mel, N_AUDIO_CTX)
    lengths = encoder_crop_lengths(mask)
    S = int(lengths.max())
    out = [mel.new_zeros(len(mel), S, whisper.cfg.d_model, dtype=torch.float32) for _ in taps]
    for n in lengths.unique().tolist():  # clips of one crop length run together
        rows = (lengths == n).nonzero()[:, 0]
        _, tapped = whisper(mel[rows, :, : 2 * n], taps=taps, cropped=True)
        for o, t in zip(out, tapped):
            o[rows, :n] = t.float()
    return EncodedAudio(out, mask[:, :S])


@dataclass
class DeSTAConfig:
    """The official `config.json` fields (first block) plus this project's optional extras."""
    llm_model_id: str = "DeSTA-ntu/Llama-3.1-8B-Instruct"
    encoder_model_id: str = "openai/whisper-large-v3"
    connector_mode: str = "qformer_1"
    qformer_num_hidden_layers: int = 6
    prompt_size: int = 64
    use_lora: bool = False
    audio_locator: str = AUDIO_LOCATOR
    placeholder_token: str = "<|reserved_special_token_87|>"
    # extras (the authors' config class accepts and keeps unknown kwargs):
    target_layer_ids: list | None = None    # taps; None = TAPS_BY_DEPTH[encoder depth]
    qformer_ffn_dim: int = 3072
    max_transcription_tokens: int = 100     # cap in training (SPEC 5); not applied at inference
    # The official Q-Former reads all 1500 frames, the 30 s padding included (SPEC 4). With clips of a few
    # seconds the padding is most of what it averages over, so at small scale its output hardly depends on
    # the clip (tiny preset, measured: 2.5% spread across clips at init, 0.13% after training -> answers
    # at the label prior). True: cross-attention reads only frames up to the clip's end (found from the
    # log-mel, whose zero padding sits at the floor value). False (default) = the released model.
    mask_audio_padding: bool = False
    # Whisper itself reads the 30 s window in the released model, ~0.36 s a clip for tiny.en on 2 CPU cores.
    # True (implies mask_audio_padding): it reads only the clip, rounded up to whole seconds (~10x cheaper for
    # the tiny corpus). Linear probes on mean-pooled taps 1 and 3 (300 train / 150 test single-speaker clips)
    # barely move (cropped vs 30 s): gender 98.7 vs 98.0%, accent 41.3 vs 44.7, pitch 67.3 vs 70.0, rate 93.3 vs
    # 95.3 (n = 150 each, so within noise); sound 80.0% and instrument 100% cropped (n = 60, 58).
    crop_encoder_input: bool = False
    lora_rank: int = 16                     # used when use_lora (the official code: r 16, alpha 16)
    lora_alpha: float = 16.0

    # fields the official config.json carries that we read elsewhere or recompute
    IGNORED = ("llm_config", "encoder_config", "info", "model_type", "architectures", "transformers_version",
               "torch_dtype", "dtype", "_name_or_path", "auto_map")

    def taps(self, encoder_layers: int) -> list[int] | None:
        """The encoder layers the Q-Former reads: target_layer_ids, else every quarter of the encoder."""
        return self.target_layer_ids or TAPS_BY_DEPTH.get(encoder_layers)

    @classmethod
    def from_json(cls, path) -> "DeSTAConfig":
        d = read_json(path)
        known = {f.name for f in fields(cls)}
        # an HF PretrainedConfig dump also has generic keys (return_dict, id2label, ...): those are not
        # DeSTA fields, so only DeSTA-looking keys we do not know are errors
        suspicious = [k for k in d if k not in known and k not in cls.IGNORED
                      and k.startswith(("qformer", "llm_", "encoder_", "prompt", "audio", "placeholder", "connector"))]
        if suspicious:
            raise CheckpointError(f"{path}: unknown field(s) {suspicious}")
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class DeSTABatch:
    """A left-padded batch. Rows are chat contexts (+ response); audio spans are where vectors go."""
    input_ids: torch.Tensor      # (B, T) transcription ids already in place after the audio span
    attn_mask: torch.Tensor      # (B, T) bool, False at padding
    labels: torch.Tensor | None  # (B, T) next-token targets aligned with input_ids, IGNORE elsewhere
    audio_rows: torch.Tensor     # (A,) row of each audio clip
    audio_starts: torch.Tensor   # (A,) first position of its prompt_size audio vectors

    def to(self, device) -> "DeSTABatch":
        return DeSTABatch(*(None if t is None else t.to(device) for t in
                            (self.input_ids, self.attn_mask, self.labels, self.audio_rows, self.audio_starts)))


class DeSTA(nn.Module):
    def __init__(self, cfg: DeSTAConfig, whisper: WhisperEncoder, llm: Llama, tokenizer: Tokenizer):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.whisper, self.llm = whisper, llm
        self.taps = cfg.taps(whisper.cfg.encoder_layers)
        if self.taps is None:
            raise CheckpointError(f"no default taps for a {whisper.cfg.encoder_layers}-layer Whisper: set target_layer_ids")
        qcfg = QFormerConfig(encoder_dim=whisper.cfg.d_model, llm_dim=llm.cfg.dim,
                             num_layers=cfg.qformer_num_hidden_layers, num_heads=whisper.cfg.encoder_heads,
                             ffn_dim=cfg.qformer_ffn_dim, prompt_size=cfg.prompt_size, num_taps=len(self.taps))
        p = llm.embed_tokens.weight
        self.connector = QFormerConnector(qcfg).to(p.device)  # adapter weights stay fp32 (master copy)
        self.whisper.requires_grad_(False)
        self.llm.requires_grad_(False)
        if cfg.use_lora:  # the paper's ablation; the LoRA factors are the only LLM weights that train
            add_lora(llm, cfg.lora_rank, cfg.lora_alpha)
        self.placeholder_id = self._placeholder_id()

    def _placeholder_id(self) -> int:
        tok = self.tokenizer
        if self.cfg.placeholder_token in tok.special:
            return tok.special[self.cfg.placeholder_token]
        # ChatML models have no reserved tokens; any id works since its embedding is overwritten
        return tok.pad_id

    # -- context ---------------------------------------------------------------------------------
    def audio_context(self, messages: list[dict]) -> list[str]:
        """Render the chat and split it at each audio locator: text pieces around the audio spans."""
        text = self.tokenizer.render_chat(messages, add_generation_prompt=True)
        loc = self.cfg.audio_locator
        if framed_audio(loc) not in text:  # training rows carry the markers already; a bare locator gets them
            text = text.replace(loc, framed_audio(loc))
        return text.split(loc)

    def build_batch(self, messages_list: list[list[dict]], transcriptions: list[list[str]],
                    responses: list[str] | None = None, cap_transcription: bool = False,
                    max_len: int | None = None, finished: list[bool] | None = None) -> DeSTABatch:
        """Token ids for each conversation, with room for prompt_size audio vectors per clip, left-padded.

        transcriptions[i] has one text per audio locator in conversation i (`" "` when no speech).
        With responses: the response and the end-of-turn token are appended and become the labels
        (SPEC 5); max_len cuts the end of longer rows (the official collator's truncation). A response
        marked not finished (cut at generation time) gets no end-of-turn token.
        """
        tok, P = self.tokenizer, self.cfg.prompt_size
        rows, labels, spans = [], [], []
        for i, messages in enumerate(messages_list):
            pieces = self.audio_context(messages)
            if len(pieces) - 1 != len(transcriptions[i]):
                raise ValueError(f"conversation {i}: {len(pieces) - 1} audio locators but "
                                 f"{len(transcriptions[i])} transcriptions")
            ids = tok.encode(pieces[0], allow_special=True)
            for text, piece in zip(transcriptions[i], pieces[1:]):
                t = tok.encode(text)
                if cap_transcription:
                    t = t[: self.cfg.max_transcription_tokens]
                spans.append((i, len(ids)))
                ids += [self.placeholder_id] * P + t + tok.encode(piece, allow_special=True)
            lab = [IGNORE] * len(ids)
            if responses is not None:
                target = tok.encode(responses[i]) + ([tok.eot_id] if finished is None or finished[i] else [])
                ids, lab = ids + target, lab + target
            if max_len is not None:
                ids, lab = ids[:max_len], lab[:max_len]
            rows.append(ids)
            labels.append(lab)
        T = max(map(len, rows))
        pad = [T - len(r) for r in rows]
        input_ids = torch.tensor([[tok.pad_id] * n + r for n, r in zip(pad, rows)])
        attn_mask = torch.tensor([[False] * n + [True] * len(r) for n, r in zip(pad, rows)])
        lab = torch.tensor([[IGNORE] * n + l for n, l in zip(pad, labels)]) if responses is not None else None
        starts = [(row, s + pad[row]) for row, s in spans]
        if any(s + P > T for _, s in starts):
            raise ValueError(f"max_len={max_len} cuts into an audio span")
        return DeSTABatch(input_ids, attn_mask, lab, torch.tensor([r for r, _ in starts], dtype=torch.long),
                          torch.tensor([s for _, s in starts], dtype=torch.long))

    # -- forward ---------------------------------------------------------------------------------
    def encoder_features(self, mel: torch.Tensor) -> EncodedAudio:
        return encoder_features(self.whisper, mel, self.taps, self.cfg.mask_audio_padding, self.cfg.crop_encoder_input)

    def encode_audio(self, audio: torch.Tensor | EncodedAudio, connector: nn.Module | None = None) -> torch.Tensor:
        """mel (A, n_mels, 3000), or its cached encoder features -> (A, prompt_size, llm_dim) audio vectors.

        connector: what to run the adapter through (train.py passes its DDP wrapper of self.connector).
        """
        feats = audio if isinstance(audio, EncodedAudio) else self.encoder_features(audio)
        return (connector or self.connector)(feats.taps, feats.frame_mask)

    def embed(self, batch: DeSTABatch, audio: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the audio vectors spliced in (the transcription ids are already real
        tokens after each span, so their embeddings come from the lookup itself)."""
        x = self.llm.embed_tokens(batch.input_ids)
        P = self.cfg.prompt_size
        cols = batch.audio_starts[:, None] + torch.arange(P, device=x.device)    # (A, P)
        rows = batch.audio_rows[:, None].expand_as(cols)
        return x.index_put((rows, cols), audio.to(x.dtype))                       # out of place: grads flow

    def forward(self, mel: torch.Tensor | EncodedAudio, batch: DeSTABatch, loss_chunk: int = 1024, connector=None):
        """Mean next-token loss over the response and end-of-turn tokens (SPEC 5).

        Logits are computed only at positions that carry a label, chunk by chunk, never for the whole
        (B, T, vocab) tensor: with a 128k vocabulary that tensor would dominate memory.
        """
        embeds = self.embed(batch, self.encode_audio(mel, connector))
        h = self.llm.hidden(embeds=embeds, attn_mask=batch.attn_mask)
        return chunked_cross_entropy(self.llm.lm_head, h[:, :-1], batch.labels[:, 1:], loss_chunk)

    # -- official adapter layout -----------------------------------------------------------------
    PREFIX = "perception.connector."
    LLM_PREFIX = "llm_model.model."  # where the authors' code keeps the LLM (and so its LoRA factors)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything that trains, under the released checkpoint's key names."""
        state = {self.PREFIX + k: v for k, v in self.connector.state_dict().items()}
        state.update({self.LLM_PREFIX + n: p for n, p in self.llm.named_parameters() if "lora_" in n})
        return state

    def save_pretrained(self, folder) -> None:
        """config.json + adapter-only model.safetensors with the released keys, written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        conf = {k: v for k, v in asdict(self.cfg).items() if v is not None}
        conf.update(model_type="desta25", architectures=["DeSTA25AudioModel"])
        # the backbones' own config.json, as the official file carries them; a backbone built from a bare
        # config (not from_pretrained) has none, and from_pretrained here does not need them
        for key, module in (("llm_config", self.llm), ("encoder_config", self.whisper)):
            if getattr(module, "hf_config", None) is not None:
                conf[key] = module.hf_config
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.trainable_state().items()}
        tmp = folder / "model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / "model.safetensors")
        tmp = folder / "config.json.tmp"
        tmp.write_text(json.dumps(conf, indent=2))
        os.replace(tmp, folder / "config.json")

    def load_adapter(self, folder) -> None:
        """The trainable tensors from an official-layout folder (connector, and LoRA factors if used)."""
        holder = nn.Module()
        holder.connector = self.connector
        key_of = lambda n: self.PREFIX + n.removeprefix("connector.")
        if self.cfg.use_lora:
            holder.lora = nn.ParameterDict({n.replace(".", "/"): p for n, p in self.llm.named_parameters() if "lora_" in n})
            key_of = lambda n: (self.LLM_PREFIX + n.removeprefix("lora.").replace("/", ".") if n.startswith("lora.")
                                else self.PREFIX + n.removeprefix("connector."))
        load_weights(holder, folder, key_of=key_of)

    @classmethod
    def from_pretrained(cls, folder, llm_dir=None, encoder_dir=None, dtype=torch.float32, device="cpu",
                        weights_root=None, encoder_dtype=None) -> "DeSTA":
        """Load the adapter folder and the backbones it names (local folders, see resolve_weights)."""
        folder = Path(folder)
        cfg = DeSTAConfig.from_json(folder / "config.json")
        model = cls.from_config(cfg, llm_dir, encoder_dir, dtype, device, weights_root, encoder_dtype)
        model.load_adapter(folder)
        return model

    @classmethod
    def from_config(cls, cfg: DeSTAConfig, llm_dir=None, encoder_dir=None, dtype=torch.float32, device="cpu",
                    weights_root=None, encoder_dtype=None) -> "DeSTA":
        """A fresh adapter (PyTorch default init, SPEC 4) over the frozen backbones.

        dtype is the LLM's; encoder_dtype Whisper's (None: dtype). The authors' model runs Whisper and
        the Q-Former in fp32 and the LLM in bf16, casting the audio vectors at the splice (embed); the
        adapter here is always fp32, so inference passes encoder_dtype=fp32 (generate.py, evaluate.py).
        """
        llm_dir = resolve_weights(llm_dir or cfg.llm_model_id, weights_root)
        encoder_dir = resolve_weights(encoder_dir or cfg.encoder_model_id, weights_root)
        return cls(cfg, WhisperEncoder.from_pretrained(encoder_dir, encoder_dtype or dtype, device),
                   Llama.from_pretrained(llm_dir, dtype, device), Tokenizer.from_pretrained(llm_dir))


def chunked_cross_entropy(lm_head: nn.Linear, h: torch.Tensor, labels: torch.Tensor, chunk: int = 1024):
    """Mean CE of lm_head(h) against labels over positions whose label is not IGNORE.

    h (B, T, d), labels (B, T). Only the selected rows go through lm_head, `chunk` rows at a time,
    each chunk checkpointed so its (chunk, vocab) logits are recomputed in backward, not stored.
    """
    keep = labels != IGNORE
    h, y = h[keep], labels[keep]                     # (N, d), (N,)
    if y.numel() == 0:
        raise ValueError("batch has no label positions (every response was cut by max_len?)")
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk):
        part = lambda hh, yy: F.cross_entropy(lm_head(hh).float(), yy, reduction="sum")
        hh, yy = h[i:i + chunk], y[i:i + chunk]
        if torch.is_grad_enabled() and hh.requires_grad:
            total = total + torch.utils.checkpoint.checkpoint(part, hh, yy, use_reentrant=False)
        else:
            total = total + part(hh, yy)
    return total / y.numel()


PROJECT_DIR = Path(__file__).resolve().parent
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as on the hub


def resolve_weights(name_or_path, weights_root=None) -> Path:
    """A local HF-layout folder for a model id: the path itself, or `<weights root>/<repo id>`.

    The weights root is weights_root, else $DESTA_WEIGHTS, else ./weights (relative to the working
    directory, where `python data.py weights` puts them) and then the project's own weights/ folder,
    so the scripts also find them when run from elsewhere.
    """
    p = Path(name_or_path)
    if (p / "config.json").is_file():
        return p
    not_hf = "is a folder without config.json, so not a model in the Hugging Face layout (config.json + " \
             "model.safetensors + tokenizer files)"
    if p.is_dir():
        raise CheckpointError(f"{p} {not_hf}")
    env = os.environ.get("DESTA_WEIGHTS")
    roots = [Path(weights_root)] if weights_root else [Path(env)] if env else [Path("weights"), PROJECT_DIR / "weights"]
    for root in roots:
        if (root / name_or_path / "config.json").is_file():
            return root / name_or_path
        if (root / name_or_path).is_dir():
            raise CheckpointError(f"{root / name_or_path} {not_hf}")
    if not REPO_ID.match(str(name_or_path)):  # a path, not a hub id: downloading it would not help
        raise CheckpointError(f"{name_or_path}: no such model folder (working directory {Path.cwd()})")
    looked = ", ".join(dict.fromkeys(str(r.absolute() / name_or_path) for r in roots))
    where = "weights_root" if weights_root else "$DESTA_WEIGHTS" if env else \
        f"weights/ is looked up in the working directory {Path.cwd()} and in the project {PROJECT_DIR}"
    raise CheckpointError(f"no local weights for {name_or_path!r} (looked in {looked}; {where}); "
                          f"run: python data.py weights --repo {name_or_path}")
