"""The inference pipeline around the model, point by point against the authors' code
(kehanlu/DeSTA2.5-Audio desta/models/modeling_desta25.py, DeSTA25AudioModel.generate):

  - ASR: Whisper's generate with no language (a multilingual model detects it), <= 128 tokens,
    batch_decode(skip_special_tokens=True) with the folder's clean-up, .strip(); "" stays "";
  - VAD on every clip, a given transcription too; no speech -> " ";
  - precision per module: Whisper + Q-Former fp32, the LLM its own dtype, audio vectors cast at the splice;
  - decoding of the answer: batch_decode(skip_special_tokens=True), clean_up_tokenization_spaces as the
    folder's tokenizer_config.json says.

Ends with the end-to-end oracle: an independent implementation of those steps from transformers modules
(and silero's own get_speech_timestamps) gives the same transcripts, answer tokens and text as
`python generate.py --audio ...`.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import desta
import generate

transformers = pytest.importorskip("transformers")


# ----------------------------------------------------------------------------------------- fixtures

def write_multilingual_whisper(root: Path, tiny_en: Path) -> Path:
    """A tiny random multilingual Whisper (full encoder-decoder, saved by transformers) with Whisper's
    real tokenizer files and a generation_config laid out as whisper-large-v3's: lang_to_id, task_to_id,
    forced_decoder_ids [[1, None], [2, transcribe]] (= detect the language, then transcribe)."""
    root.mkdir(parents=True, exist_ok=True)
    for f in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
              "preprocessor_config.json"):
        shutil.copy(tiny_en / f, root / f)
    tok_cfg = json.loads((tiny_en / "tokenizer_config.json").read_text())
    tok_cfg["clean_up_tokenization_spaces"] = True  # exercise the clean-up on the ASR side too
    (root / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    added = json.loads((tiny_en / "added_tokens.json").read_text())
    sot, translate, transcribe = added["<|startoftranscript|>"], added["<|translate|>"], added["<|transcribe|>"]
    gen_en = json.loads((tiny_en / "generation_config.json").read_text())
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        d_model=32, encoder_layers=4, encoder_attention_heads=2, decoder_layers=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=51864, max_source_positions=1500,
        max_target_positions=448, pad_token_id=50256, bos_token_id=sot, eos_token_id=50256,
        decoder_start_token_id=sot, init_std=0.2)
    transformers.WhisperForConditionalGeneration(cfg).save_pretrained(root)
    gen = {
        "bos_token_id": sot, "decoder_start_token_id": sot, "eos_token_id": 50256, "pad_token_id": 50256,
        "max_length": 448, "suppress_tokens": gen_en["suppress_tokens"],
        "begin_suppress_tokens": gen_en["begin_suppress_tokens"], "is_multilingual": True,
        "lang_to_id": {t: i for t, i in added.items() if sot < i < translate},
        "task_to_id": {"translate": translate, "transcribe": transcribe},
        "forced_decoder_ids": [[1, None], [2, transcribe]],
        "no_timestamps_token_id": added["<|notimestamps|>"], "return_timestamps": False,
    }
    (root / "generation_config.json").write_text(json.dumps(gen))
    return root


@pytest.fixture(scope="module")
def multilingual_whisper(tmp_path_factory, tiny_weights):
    return write_multilingual_whisper(tmp_path_factory.mktemp("whisper-ml"), tiny_weights / "openai" / "whisper-tiny.en")


def random_mel(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 80, 3000, generator=g) * 0.5


def hf_whisper(folder):
    model = transformers.WhisperForConditionalGeneration.from_pretrained(folder).eval()
    # transformers 5 skips clean-up for BPE unless told; 4.x (the authors' version) applied it
    tok = transformers.WhisperTokenizer.from_pretrained(
        folder, clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    return model, tok


# ----------------------------------------------------------------------------------------- 1. ASR language

def test_multilingual_whisper_detects_the_language_as_transformers(multilingual_whisper):
    """No language given: each clip's language is detected (sot -> likeliest language token), then
    sot, language, transcribe, notimestamps; same ids and text as transformers' generate."""
    ours = desta.Whisper.from_pretrained(multilingual_whisper)
    ref, tok = hf_whisper(multilingual_whisper)
    mel = random_mel(3)
    texts, langs = ours.transcribe(mel, max_new_tokens=20, return_languages=True)
    with torch.no_grad():
        detected = ref.detect_language(mel).tolist()
        ids = ref.generate(mel, max_new_tokens=20)
    lang_names = {i: t for t, i in ours.lang_to_id.items()}
    assert langs == [lang_names[i] for i in detected]
    assert texts == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    assert any(texts)


def test_forced_language_and_english_only_prompt(multilingual_whisper, tiny_weights):
    ours = desta.Whisper.from_pretrained(multilingual_whisper)
    ref, tok = hf_whisper(multilingual_whisper)
    mel = random_mel(2, seed=1)
    texts, langs = ours.transcribe(mel, max_new_tokens=12, language="fr", return_languages=True)
    with torch.no_grad():
        ids = ref.generate(mel, max_new_tokens=12, language="fr")
    assert langs == ["<|fr|>"] * 2
    assert texts == [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    with pytest.raises(ValueError, match="not one of"):
        ours.transcribe(mel, language="xx")
    # an English-only model keeps its fixed prompt and has no language to detect
    en = desta.Whisper.from_pretrained(tiny_weights / "openai" / "whisper-tiny.en")
    assert en.lang_to_id == {} and en.prompt() == [50257, 50362]
    with pytest.raises(ValueError, match="English-only"):
        en.transcribe(mel[:1], language="fr")


# ----------------------------------------------------------------------------------------- 3, 4. VAD / ASR

class FixedVAD:
    """Stands in for Silero: 'speech' iff the clip is not all zeros (the real one is tested in test_vad)."""
    source = "fixed"

    def has_speech(self, wave):
        return bool(np.abs(wave).max() > 0)


class FixedASR:
    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def transcribe(self, mel, max_new_tokens=128, language=None):
        self.calls.append((len(mel), max_new_tokens, language))
        return self.texts[:len(mel)]


def test_empty_asr_result_stays_empty():
    speech, silence = np.ones(1600, np.float32), np.zeros(1600, np.float32)
    asr = FixedASR(["", "hello"])
    texts = generate.transcribe_if_speech([speech, silence, speech], torch.zeros(3, 80, 3000), FixedVAD(), asr)
    assert texts == ["", " ", "hello"]        # "" is no token; " " (no speech) is one
    assert asr.calls == [(2, 128, None)]      # only the clips with speech, <= 128 tokens, no forced language


def test_vad_runs_when_a_transcription_is_given():
    speech, silence = np.ones(1600, np.float32), np.zeros(1600, np.float32)
    mel = torch.zeros(2, 80, 3000)
    given = ["a given text", "a given text"]
    assert generate.transcribe_if_speech([speech, silence], mel, FixedVAD(), None, given) == ["a given text", " "]
    # the flag keeps the old behaviour: the given text as it is, no VAD asked
    assert generate.transcribe_if_speech([speech, silence], mel, None, None, given, vad_with_given=False) == given
    # mixed: a clip without a given text still goes to Whisper
    asr = FixedASR(["heard"])
    assert generate.transcribe_if_speech([speech, speech], mel, FixedVAD(), asr, [None, "x"]) == ["heard", "x"]


# ----------------------------------------------------------------------------------------- 5. clean-up

def test_decoding_follows_clean_up_tokenization_spaces(tmp_path, random_backbones):
    src = random_backbones / "llm" / "tokenizer.model"
    for flag in (True, False):
        folder = tmp_path / str(flag)
        folder.mkdir()
        shutil.copy(src, folder / "tokenizer.model")
        (folder / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": flag}))
        tok = desta.Tokenizer.from_pretrained(folder)
        text = "I do n't know , really . Is it ? Yes ! It 's fine , we 're sure"
        ids = tok.encode(text)
        expected = transformers.PreTrainedTokenizerBase.clean_up_tokenization(None, text) if flag else text
        assert tok.decode(ids) == expected
        assert tok.decode(ids, clean_up=False) == text
    assert expected == text and "n't" in transformers.PreTrainedTokenizerBase.clean_up_tokenization(None, text)
    no_config = tmp_path / "bare"
    no_config.mkdir()
    shutil.copy(src, no_config / "tokenizer.model")
    assert desta.Tokenizer.from_pretrained(no_config).clean_up is False  # transformers' default


# ----------------------------------------------------------------------------------------- 2. precision

def test_encoder_and_adapter_stay_fp32_under_a_bf16_llm(random_backbones):
    cfg = desta.DeSTAConfig(llm_model_id=str(random_backbones / "llm"),
                            encoder_model_id=str(random_backbones / "whisper"),
                            qformer_num_hidden_layers=1, prompt_size=4, qformer_ffn_dim=16)
    torch.manual_seed(0)
    full = desta.DeSTA.from_config(cfg).eval()
    torch.manual_seed(0)
    mixed = desta.DeSTA.from_config(cfg, dtype=torch.bfloat16, encoder_dtype=torch.float32).eval()
    assert mixed.whisper.conv1.weight.dtype == torch.float32
    assert mixed.llm.embed_tokens.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in mixed.connector.parameters())
    mel = random_mel(1)
    audio = mixed.encode_audio(mel)
    assert audio.dtype == torch.float32
    assert torch.equal(audio, full.encode_audio(mel))  # Whisper + Q-Former do not depend on the LLM's dtype
    b = mixed.build_batch([[{"role": "user", "content": "<|AUDIO|>\nHi"}]], [["hello"]])
    assert mixed.embed(b, audio).dtype == torch.bfloat16  # cast at the splice
    # without encoder_dtype everything follows dtype (training keeps one dtype)
    assert desta.DeSTA.from_config(cfg, dtype=torch.bfloat16).whisper.conv1.weight.dtype == torch.bfloat16
