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
import torch.nn.functional as F

import desta
import generate
from asr.pipeline import transcribe_if_speech
from asr.vad import SILERO_VAD_VERSION
from asr.whisper import Whisper
from tools import tokenizer_files

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
    ours = Whisper.from_pretrained(multilingual_whisper)
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
    ours = Whisper.from_pretrained(multilingual_whisper)
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
    en = Whisper.from_pretrained(tiny_weights / "openai" / "whisper-tiny.en")
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
    texts = transcribe_if_speech([speech, silence, speech], torch.zeros(3, 80, 3000), FixedVAD(), asr)
    assert texts == ["", " ", "hello"]        # "" is no token; " " (no speech) is one
    assert asr.calls == [(2, 128, None)]      # only the clips with speech, <= 128 tokens, no forced language


def test_vad_runs_when_a_transcription_is_given():
    speech, silence = np.ones(1600, np.float32), np.zeros(1600, np.float32)
    mel = torch.zeros(2, 80, 3000)
    given = ["a given text", "a given text"]
    assert transcribe_if_speech([speech, silence], mel, FixedVAD(), None, given) == ["a given text", " "]
    # the flag keeps the old behaviour: the given text as it is, no VAD asked
    assert transcribe_if_speech([speech, silence], mel, None, None, given, vad_with_given=False) == given
    # mixed: a clip without a given text still goes to Whisper
    asr = FixedASR(["heard"])
    assert transcribe_if_speech([speech, speech], mel, FixedVAD(), asr, [None, "x"]) == ["heard", "x"]


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


# ----------------------------------------------------------------------------------------- the oracle
#
# The authors' DeSTA25AudioModel.generate, step by step, written here from transformers modules and
# silero's own VAD functions; nothing of ours runs in it. Backbones: the tiny random multilingual
# Whisper above, a tiny random Llama with the real Llama 3 tokenizer and Llama 3.1's generation and
# tokenizer settings (stop ids 128001/128008/128009, clean-up on), and a random adapter saved in the
# official layout with prompt_size 64.

LLAMA31_TEMPLATE = (  # the Llama 3.1 chat template's path without tools (its default date string)
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


# Pieces HF's clean-up rewrites (" ," -> ",", " n't" -> "n't", ...): their output rows are scaled up so
# that the random LLM writes them often and the answer's clean-up shows in what is compared.
CLEAN_UP_PIECES = (" ,", " .", " ?", " !", " n't", " 's", " 're", " hello", " world", " it", " is")


@torch.no_grad()
def boost_tokens(weight, tok, scale):
    ids = sorted({i for piece in CLEAN_UP_PIECES for i in tok.encode(piece)})
    weight[ids] *= scale


def write_llama(root: Path) -> Path:
    models = pytest.importorskip("llama_models", reason="the llama-models wheel ships the Llama 3 tokenizer.model")
    from transformers.convert_slow_tokenizer import TikTokenConverter
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=128256, rope_theta=500000.0,
                                   initializer_range=0.3, bos_token_id=128000, eos_token_id=[128001, 128008, 128009])
    model = transformers.LlamaForCausalLM(cfg)
    model_file = Path(models.__file__).parent / "llama3" / "tokenizer.model"
    boost_tokens(model.lm_head.weight, desta.Tokenizer.from_file(model_file), 3.0)
    model.save_pretrained(root)
    shutil.copy(model_file, root / "tokenizer.model")
    TikTokenConverter(vocab_file=str(model_file), pattern=tokenizer_files.LLAMA3_PATTERN,
                      extra_special_tokens=tokenizer_files.LLAMA3_SPECIAL).converted().save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
        "clean_up_tokenization_spaces": True, "chat_template": LLAMA31_TEMPLATE, "model_max_length": 131072}))
    (root / "generation_config.json").write_text(json.dumps(  # as Llama-3.1-8B-Instruct ships it
        {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "do_sample": True,
         "temperature": 0.6, "top_p": 0.9}))
    return root


def write_adapter(root: Path, whisper: Path, llm: Path) -> Path:
    cfg = desta.DeSTAConfig(llm_model_id=str(llm), encoder_model_id=str(whisper), qformer_num_hidden_layers=2)
    torch.manual_seed(2)
    model = desta.DeSTA.from_config(cfg)
    with torch.no_grad():  # default init leaves layer_weights at 0 and LayerNorms at 1/0: perturb every tensor
        for p in model.connector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(root)
    return root


def write_clips(root: Path) -> list[Path]:
    """Speech (jfk, 11 s), digital silence, and a 33 s clip (past Whisper's 30 s), as 16 kHz mono float
    WAV files so that both pipelines read the very same samples (no resampler in the comparison)."""
    import soundfile as sf
    from scipy.signal import resample_poly
    from conftest import FIXTURES
    if not (FIXTURES / "jfk.flac").is_file():
        pytest.skip(f"fixture {FIXTURES / 'jfk.flac'} absent (the ../shared/fixtures folder is not in a user's clone)")
    x, sr = sf.read(FIXTURES / "jfk.flac", dtype="float32")
    jfk = resample_poly(x.mean(axis=1), 160, sr // 100).astype(np.float32)
    clips = {"speech": jfk, "silence": np.zeros(3 * 16000, np.float32), "long": np.concatenate([jfk] * 3)}
    paths = []
    for name, wave in clips.items():
        paths.append(root / f"{name}.wav")
        sf.write(paths[-1], wave, 16000, subtype="FLOAT")
    return paths


def official_connector(adapter: dict, whisper_cfg, prompt_size: int):
    """QformerConnector as the authors build it: BertConfig() with their overrides, loaded from the adapter."""
    from transformers.models.bert.modeling_bert import BertEncoder
    bert = transformers.BertConfig()
    bert.num_hidden_layers = max(int(k.split(".")[4]) for k in adapter if ".qformer.layer." in k) + 1
    bert.num_attention_heads = whisper_cfg.encoder_attention_heads
    bert.hidden_size = whisper_cfg.d_model
    bert.add_cross_attention, bert.is_decoder = True, True
    bert._attn_implementation = "eager"  # transformers 4.x eager BERT with no mask: bidirectional (test_adapter)
    c = torch.nn.Module()
    c.qformer = BertEncoder(bert)
    for layer in c.qformer.layer:
        layer.attention.self.is_causal = False
    c.layer_prompts = torch.nn.ParameterList(torch.nn.Parameter(torch.zeros(1, prompt_size, whisper_cfg.d_model))
                                             for _ in range(4))
    c.layer_weights = torch.nn.Parameter(torch.zeros(prompt_size, 4))
    c.proj = torch.nn.Sequential(torch.nn.LayerNorm(whisper_cfg.d_model), torch.nn.Linear(whisper_cfg.d_model, 48))
    c.load_state_dict({k.removeprefix("perception.connector."): v for k, v in adapter.items()})
    return c.eval()


@torch.no_grad()
def official_generate(paths, prompt, whisper_dir, llm_dir, ckpt_dir, max_new_tokens, given=None):
    """DeSTA25AudioModel.generate(messages, do_sample=False, max_new_tokens) for one prompt per clip;
    given: the "text" of every clip's audio entry (None: ASR)."""
    import soundfile as sf
    from safetensors.torch import load_file
    from silero_vad import get_speech_timestamps, load_silero_vad  # what torch.hub's snakers4/silero-vad gives
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    P, locator, placeholder = cfg["prompt_size"], cfg["audio_locator"], cfg["placeholder_token"]
    vad = load_silero_vad()
    processor = transformers.WhisperFeatureExtractor.from_pretrained(whisper_dir)
    whisper, wtok = hf_whisper(whisper_dir)
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(
        llm_dir, clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    tok.add_tokens([locator])
    llm = transformers.LlamaForCausalLM.from_pretrained(llm_dir).eval()
    connector = official_connector(load_file(ckpt_dir / "model.safetensors"), whisper.config, P)

    # 1. audio, VAD, ASR on the clips with speech (no language: Whisper detects it)
    features = [sf.read(p, dtype="float32")[0] for p in paths]
    transcriptions, asr_features, asr_indices = [given] * len(paths), [], []
    for i, f in enumerate(features):
        is_speech = get_speech_timestamps(torch.from_numpy(f), vad)
        if is_speech and transcriptions[i] is None:
            asr_features.append(f)
            asr_indices.append(i)
        if not is_speech:
            transcriptions[i] = " "
    batch_features = processor(features, sampling_rate=16000, return_tensors="pt").input_features
    if asr_features:
        ids = whisper.generate(input_features=processor(asr_features, sampling_rate=16000, return_tensors="pt")
                               .input_features, attention_mask=None, max_new_tokens=128)
        for i, t in zip(asr_indices, wtok.batch_decode(ids, skip_special_tokens=True)):
            transcriptions[i] = t.strip()

    # 2. contexts: <start_audio><|AUDIO|><end_audio> -> 64 + len(transcription tokens) placeholders
    contexts, starts = [], []
    for text in transcriptions:
        messages = [{"role": "system", "content": desta.DEFAULT_SYSTEM},
                    {"role": "user", "content": f"{locator}\n{prompt}"}]
        context = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        context = context.replace(locator, f"<start_audio>{locator}<end_audio>")
        tokens = []
        for t in tok.tokenize(context):
            if t == locator:
                starts.append(len(tokens))
                tokens += [placeholder] * (P + len(tok.tokenize(text, add_special_tokens=False)))
            else:
                tokens.append(t)
        contexts.append(tok.convert_tokens_to_string(tokens))
    inputs = tok(contexts, padding="longest", return_tensors="pt", add_special_tokens=False)
    pad = inputs["attention_mask"].shape[1] - inputs["attention_mask"].sum(1)

    # 3. perception: Whisper encoder layers, the Q-Former at each tap, per-query softmax over taps
    enc = whisper.model.encoder
    h = F.gelu(enc.conv2(F.gelu(enc.conv1(batch_features)))).permute(0, 2, 1) + enc.embed_positions.weight[:1500]
    outs = []
    for idx, layer in enumerate(enc.layers):
        h = layer(h, attention_mask=None)
        h = h[0] if isinstance(h, tuple) else h
        if idx in [0, 1, 2, 3]:  # the official target_layer_ids for a 4-layer Whisper (whisper-tiny)
            q = connector.layer_prompts[idx].expand(h.shape[0], -1, -1)
            outs.append(connector.qformer(q, encoder_hidden_states=h).last_hidden_state[:, :P])
    outs = torch.stack(outs, 0).permute(1, 2, 0, 3)
    audio = connector.proj((outs * connector.layer_weights.softmax(-1).unsqueeze(-1)).sum(2))

    # 4. splice audio vectors + transcription embeddings, greedy generate, batch_decode
    embeds = llm.model.embed_tokens(inputs["input_ids"])
    for i, text in enumerate(transcriptions):
        t_ids = tok.encode(text, add_special_tokens=False, return_tensors="pt")[0]
        span = torch.cat([audio[i].to(embeds.dtype), llm.model.embed_tokens(t_ids)])
        embeds[i, pad[i] + starts[i]:pad[i] + starts[i] + len(span)] = span
    out = llm.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pad_token_id=tok.pad_token_id,
                       temperature=None, top_p=None, max_new_tokens=max_new_tokens, do_sample=False)
    texts = tok.batch_decode(out, skip_special_tokens=True)
    stop = {128001, 128008, 128009}
    answer_ids = []
    for row in out.tolist():
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        answer_ids.append(row[:cut])
    return transcriptions, answer_ids, texts


def run_generate_cli(tmp_path, clips, prompt, ckpt, n, *extra):
    import os
    import subprocess
    import sys
    out = tmp_path / f"out{len(extra)}.jsonl"
    run = subprocess.run([sys.executable, "generate.py", "--audio", *map(str, clips), "--prompt", prompt,
                          "--checkpoint", str(ckpt), "--max-new-tokens", str(n), "--out", str(out),
                          "--dtype", "fp32", *extra],   # the reference runs in fp32; auto picks bf16 on some CPUs
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def official_folders(tmp_path_factory, multilingual_whisper):
    root = tmp_path_factory.mktemp("official")
    llm = write_llama(root / "llm")
    return llm, write_adapter(root / "ckpt", multilingual_whisper, llm)


def test_inference_loads_whisper_in_fp32_under_a_bf16_llm(official_folders):
    """What generate.py (and evaluate.py) load for inference: the authors' precision per module."""
    model, asr, vad = generate.load_for_inference(official_folders[1], dtype=torch.bfloat16)
    assert asr.encoder is model.whisper  # one encoder serves the adapter and the ASR
    assert {p.dtype for p in asr.parameters()} == {torch.float32}
    assert {p.dtype for p in model.connector.parameters()} == {torch.float32}
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert vad.source.startswith("silero-vad ")
    import evaluate
    bb = evaluate.load_backbones(official_folders[1], dtype=torch.bfloat16)
    assert bb.asr.encoder is bb.model.whisper and bb.asr.encoder.conv1.weight.dtype == torch.float32
    assert bb.llm.embed_tokens.weight.dtype == torch.bfloat16


def test_generate_cli_matches_the_official_pipeline(tmp_path, multilingual_whisper, official_folders):
    llm, ckpt = official_folders
    clips = write_clips(tmp_path)
    prompt, n = "What can you hear? Isn't it nice , really ?", 24
    ours = run_generate_cli(tmp_path, clips, prompt, ckpt, n)
    transcripts, answer_ids, texts = official_generate(clips, prompt, multilingual_whisper, llm, ckpt, n)
    print("\ntranscripts:", [t[:60] for t in transcripts], "\nanswers:", texts)
    assert transcripts[1] == " " and transcripts[0] and transcripts[2]  # silence; the two speech clips
    assert [r["transcription"] for r in ours] == transcripts
    assert [r["response_ids"] for r in ours] == answer_ids
    assert [r["response"] for r in ours] == texts
    assert all(r["vad"] == f"silero-vad {SILERO_VAD_VERSION} silero_vad.jit" for r in ours)
    # a given transcription: the VAD still runs, the silent clip gets " "
    given = "A given text , isn't it ?"
    ours = run_generate_cli(tmp_path, clips, prompt, ckpt, n, "--transcription", given)
    transcripts, answer_ids, texts = official_generate(clips, prompt, multilingual_whisper, llm, ckpt, n, given)
    assert transcripts == [given, " ", given] == [r["transcription"] for r in ours]
    assert [r["response_ids"] for r in ours] == answer_ids
    assert [r["response"] for r in ours] == texts
