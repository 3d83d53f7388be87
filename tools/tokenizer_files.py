"""
Tokenizer files -> the tiktoken ranks that `desta.Tokenizer` encodes with. Two formats:

    tokenizer.model    Meta's Llama 3 file: lines of `base64(token bytes) rank`, plus 256 special tokens
    tokenizer.json     Hugging Face's byte-level BPE (SmolLM2, Qwen2.5, Llama 3 repos, Whisper): the vocab,
                       the merges (their order is the rank), the pre-tokenizer's regex, the added tokens

Each reader returns `desta.Tokenizer`'s constructor arguments; `desta.Tokenizer.from_file` calls them.
What tokens mean to the model (chat formats, stop tokens) stays in desta.py.
"""
import base64
from pathlib import Path

import numpy as np

import desta

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
# GPT-2's pattern applied after splitting off every digit (HF's Digits(individual_digits) then
# ByteLevel, SmolLM2): a digit also ends a whitespace run, hence (?![^\s\p{N}]) for (?!\S).
GPT2_DIGITS_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
LLAMA3_SPECIAL += [f"<|reserved_special_token_{i}|>" for i in range(3, 256 - 8)]  # ids 128011..128255


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def pretokenizer_pattern(pre: dict | None, source: str) -> str:
    """The regex for an HF `pre_tokenizer` section, for the forms byte-level BPE models use."""
    steps = (pre or {}).get("pretokenizers", [pre] if pre else [])
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        pattern = GPT2_PATTERN
    elif kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        pattern = GPT2_DIGITS_PATTERN
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0]["pattern"].get("Regex")  # Llama 3, Qwen2: the regex is stored verbatim
        if pattern is None:
            raise desta.CheckpointError(f"{source}: pre_tokenizer Split without a Regex pattern is not supported")
    else:
        raise desta.CheckpointError(f"{source}: pre_tokenizer {kinds} is not supported")
    if any(s.get("add_prefix_space") for s in steps if s.get("type") == "ByteLevel"):
        raise desta.CheckpointError(f"{source}: ByteLevel add_prefix_space=true is not supported")
    return pattern


def read_llama3_model(path) -> dict:
    """Meta's `tokenizer.model`: lines of `base64(token bytes) rank`, plus 256 special tokens."""
    ranks = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
        except ValueError:
            raise desta.CheckpointError(f"{path}: line {i + 1} is not 'base64 rank'") from None
    n = len(ranks)
    special = {s: n + i for i, s in enumerate(LLAMA3_SPECIAL)}
    return dict(name=Path(path).name, pattern=LLAMA3_PATTERN, ranks=ranks, special=special, rank_to_id=None,
                chat_format="llama3")

def read_tokenizer_json(path) -> dict:
    """HF `tokenizer.json` (byte-level BPE). tiktoken merges by rank: we rank tokens by the position of the
    merge that made them (bytes first), which is HF BPE's merge priority, and map ranks back to the ids."""
    d = desta.read_json(path)
    model = d.get("model", {})
    if model.get("type") != "BPE":
        raise desta.CheckpointError(f"{path}: model.type={model.get('type')!r}, only byte-level BPE is supported")
    pattern = pretokenizer_pattern(d.get("pre_tokenizer"), str(path))
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(tok: str) -> bytes:
        try:
            return bytes(byte_of[c] for c in tok)
        except KeyError:
            raise desta.CheckpointError(f"{path}: vocab token {tok!r} is not byte-level") from None

    vocab = model["vocab"]
    ranks: dict[bytes, int] = {bytes([b]): b for b in range(256)}
    for m in model.get("merges", []):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        merged = to_bytes(a + b)
        if merged not in ranks:
            ranks[merged] = len(ranks)
    # tokens that no merge produces (rare) still need a rank to be decodable
    for tok in sorted(vocab, key=vocab.get):
        ranks.setdefault(to_bytes(tok), len(ranks))
    rank_to_id = np.zeros(len(ranks), dtype=np.int64)
    for tok, i in vocab.items():
        rank_to_id[ranks[to_bytes(tok)]] = i
    special = {t["content"]: t["id"] for t in d.get("added_tokens", [])}
    fmt = "llama3" if "<|start_header_id|>" in special else "chatml" if "<|im_start|>" in special else None
    return dict(name=Path(path).name, pattern=pattern, ranks=ranks, special=special, rank_to_id=rank_to_id,
                chat_format=fmt)
