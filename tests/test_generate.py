"""The generation engine: greedy parity with transformers' generate, batching never changes results,
continuous == static batching, seeded sampling, the top-p nucleus, and prefill from embeddings."""
import pytest
import torch

import desta
import generate
from asr.pipeline import transcribe_if_speech

transformers = pytest.importorskip("transformers")
STOP = 7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=300, rope_theta=10000.0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(path)
    return ref, desta.Llama.from_pretrained(path)


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, 300, (n,), generator=g).tolist() for n in lengths]


def hf_greedy(ref, prompts, n):
    """transformers' generate, left-padded batch; new tokens without the stop token."""
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    out = ref.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, eos_token_id=STOP, pad_token_id=0)
    res = []
    for row in out[:, T:].tolist():
        row = row[:row.index(STOP)] if STOP in row else row
        res.append(row)
    return res


def test_greedy_matches_transformers(tiny):
    ref, ours = tiny
    prompts = prompts_of([5, 17, 9, 30, 2, 12])
    batched = generate.generate(ours, prompts, max_new_tokens=24, stop_ids=[STOP], batch_size=4)
    alone = [generate.generate(ours, [p], max_new_tokens=24, stop_ids=[STOP])[0] for p in prompts]
    assert batched == alone
    assert batched == [hf_greedy(ref, [p], 24)[0] for p in prompts]
    assert batched == hf_greedy(ref, prompts, 24)


def test_compiled_decode_step_matches_transformers(tiny, tmp_path):
    """The compiled decode step (fused projections, frozen prepacked weights, autotuned GEMMs on CPU) gives
    the same greedy tokens; a fresh copy of the model, since compiling fuses its projections in place."""
    ref, _ = tiny
    ref.save_pretrained(tmp_path)
    ours = desta.Llama.from_pretrained(tmp_path)
    prompts = prompts_of([5, 17, 9, 30], seed=5)
    out = generate.generate(ours, prompts, max_new_tokens=12, stop_ids=[STOP], batch_size=4, compile=True)
    assert ours.layers[0].self_attn.qkv_proj is not None
    assert out == hf_greedy(ref, prompts, 12)


def test_stop_ids_end_sequences(tiny):
    _, ours = tiny
    prompts = prompts_of([6, 11, 3])
    free = generate.generate(ours, prompts, max_new_tokens=16)
    stop = free[0][4]  # make a token the first one produces a stop token
    stopped = generate.generate(ours, prompts, max_new_tokens=16, stop_ids=[stop])
    for f, s in zip(free, stopped):
        cut = f.index(stop) if stop in f else len(f)
        assert s == f[:cut]


def test_continuous_equals_static(tiny):
    _, ours = tiny
    prompts = prompts_of([3, 25, 8, 14, 4, 19, 6, 10, 2, 22], seed=3)
    kw = dict(max_new_tokens=30, stop_ids=[STOP, 11, 23, 42], batch_size=3)
    finished = []
    cont = generate.generate(ours, prompts, continuous=True, on_finish=lambda i, t: finished.append(i), **kw)
    static = generate.generate(ours, prompts, continuous=False, **kw)
    assert cont == static
    assert sorted(finished) == list(range(len(prompts)))
    assert len({len(c) for c in cont}) > 1  # skewed lengths really occurred


def test_seeded_sampling_is_reproducible(tiny):
    _, ours = tiny
    prompts = prompts_of([5, 9, 13])
    kw = dict(max_new_tokens=20, temperature=1.0, top_p=0.9, batch_size=2)
    a = generate.generate(ours, prompts, seed=42, **kw)
    b = generate.generate(ours, prompts, seed=42, **kw)
    c = generate.generate(ours, prompts, seed=43, **kw)
    assert a == b and a != c
    # a sequence's randomness is its own: the same answer alone, in another batch, in any order
    alone = [generate.generate(ours, [p], seeds=[42 + i], **kw)[0] for i, p in enumerate(prompts)]
    static = generate.generate(ours, prompts, seed=42, continuous=False, **dict(kw, batch_size=1))
    assert a == alone == static
    greedy = generate.generate(ours, prompts, max_new_tokens=20)
    assert generate.generate(ours, prompts, max_new_tokens=20, temperature=1.0, top_p=1e-6, seed=0) == greedy


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.05, 0.5, 0.2, 0.15, 0.1]])
    kept = generate.top_p_filter(probs, 0.8)  # 0.5 + 0.2 = 0.7 < 0.8, so 0.15 joins; 0.1, 0.05 go
    assert torch.allclose(kept, torch.tensor([[0, 0.5, 0.2, 0.15, 0]]) / 0.85)
    assert torch.equal(generate.top_p_filter(probs, 0.7) > 0, torch.tensor([[False, True, True, False, False]]))
    assert torch.equal(generate.top_p_filter(probs, 0.01) > 0, torch.tensor([[False, True, False, False, False]]))
    assert torch.allclose(generate.top_p_filter(probs, 1.0), probs)
    # empirical: sampling only ever returns nucleus tokens, in proportion
    n = 8000
    draws = generate.sample(probs.log().expand(n, 5), 1.0, 0.8, torch.arange(n), torch.zeros(n, dtype=torch.long))
    freq = torch.bincount(draws, minlength=5) / n
    assert freq[0] == 0 and freq[4] == 0
    assert abs(freq[1] - 0.5 / 0.85) < 0.03 and abs(freq[3] - 0.15 / 0.85) < 0.03


def test_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(6000, 3)
    seeds, steps = torch.arange(6000), torch.zeros(6000, dtype=torch.long)
    for T in (1.0, 0.5):
        freq = torch.bincount(generate.sample(logits, T, 1.0, seeds, steps), minlength=3) / 6000
        expected = torch.softmax(logits[0] / T, -1)
        assert (freq - expected).abs().max() < 0.02, (T, freq, expected)


def test_prefill_from_embeddings_equals_forward(tiny):
    """DeSTA prompts arrive as embeddings: the engine's prefill logits equal the model's own forward,
    and generating from embeddings equals generating from the same ids."""
    _, ours = tiny
    prompts = prompts_of([7, 15, 4])
    embeds = [ours.embed_tokens(torch.tensor(p)).detach() + 0.01 * torch.randn(len(p), 64) for p in prompts]
    engine = generate.Engine(ours, batch_size=3, max_len=32)
    with torch.no_grad():
        logits, _ = engine._prefill(torch.arange(3), embeds)
        for i, e in enumerate(embeds):
            assert (logits[i] - ours(embeds=e[None])[0, -1]).abs().max() < 1e-5
    ours.drop_cache()
    plain = [ours.embed_tokens(torch.tensor(p)).detach() for p in prompts]
    assert generate.generate(ours, plain, max_new_tokens=12) == generate.generate(ours, prompts, max_new_tokens=12)


def test_prompt_too_long_is_an_error(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="exceeds the cache length"):
        generate.generate(ours, prompts_of([20]), max_new_tokens=10, max_len=16)


def test_gumbel_shortcut_is_exact():
    """Noise only for tokens that can still win gives the draw the full-vocabulary Gumbel-max gives."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 500, generator=g) * 3
    seeds, steps = torch.arange(64) * 7919, torch.arange(64) % 5
    for T in (0.05, 0.7, 2.0):
        full = torch.arange(500).expand(64, 500)
        gumbel = -torch.log(-torch.log(generate.uniform_noise(seeds, steps, full)))
        expected = ((logits / T).double() + gumbel).argmax(-1)
        assert torch.equal(generate.sample(logits, T, 1.0, seeds, steps), expected)


def test_shared_prefix_prefill_gives_the_same_tokens(tiny):
    """Prompts that open alike (one clip's K prompts in self-generation) reuse the first one's cache rows:
    the same tokens as running each alone, whatever the batch and the refill pattern."""
    _, ours = tiny
    base = prompts_of([80], seed=5)[0]
    tails = prompts_of([3, 9, 1, 6, 12], seed=6)
    prompts = [base + t for t in tails[:3]] + prompts_of([7], seed=7) + [base[:70] + t for t in tails[3:]]
    assert generate.shared_prefixes(prompts) == [0, 80, 80, 0, 0, 70]
    assert generate.shared_prefixes([base, base]) == [0, 79]           # a copy still runs its last token
    assert generate.shared_prefixes([base, base[:40] + tails[0]]) == [0, 0]   # too short a prefix to share
    kw = dict(max_new_tokens=12, stop_ids=[STOP])
    alone = [generate.generate(ours, [p], **kw)[0] for p in prompts]
    for batch_size in (2, 3, 6):
        assert generate.generate(ours, prompts, batch_size=batch_size, **kw) == alone, batch_size
    sampled = dict(kw, temperature=1.0, top_p=0.9, seeds=list(range(6)))
    assert generate.generate(ours, prompts, batch_size=4, **sampled) == \
        [generate.generate(ours, [p], seeds=[i], **{k: v for k, v in sampled.items() if k != "seeds"})[0]
         for i, p in enumerate(prompts)]


def test_a_group_joins_a_running_batch_whole(tiny, monkeypatch):
    """Continuous batching refills one or two slots at a time; a clip's K prompts must still be prefilled
    together, or the ones that come later find no leader and run their shared prefix again."""
    _, ours = tiny
    tails = prompts_of([3, 9, 1, 6, 12, 4, 2, 8, 5, 7, 10, 11], seed=8)
    prompts = [prompts_of([80], seed=20 + g)[0] + tails[3 * g + j] for g in range(4) for j in range(3)]
    whole = []
    run_whole = generate.Engine._prefill_whole
    monkeypatch.setattr(generate.Engine, "_prefill_whole",
                        lambda self, rows, ps: whole.append(len(ps)) or run_whole(self, rows, ps))
    engine = generate.Engine(ours, batch_size=6, max_len=128)
    caps = [2, 5, 9, 3, 7, 4, 6, 8, 2, 5, 3, 9]  # slots free one or two at a time
    got = engine.run(prompts, generate.Sampling(max_new_tokens=9), max_new=caps)
    ours.drop_cache()
    assert sum(whole) == 4  # one leader per group: every other prompt copied its prefix
    assert got == [generate.generate(ours, [p], max_new_tokens=c)[0] for p, c in zip(prompts, caps)]


def test_top_p_zero_is_greedy_not_nan(tiny):
    """--top-p 0 once gave NaN (every token masked): it keeps the most likely token, like greedy."""
    probs = torch.tensor([[0.05, 0.5, 0.2, 0.15, 0.1], [0.4, 0.1, 0.4, 0.05, 0.05]])
    kept = generate.top_p_filter(probs, 0.0)
    assert not kept.isnan().any()
    assert torch.equal(kept, torch.tensor([[0.0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))  # a tie: the lowest id, as argmax
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 300, generator=g)
    n = torch.arange(32)
    assert torch.equal(generate.sample(logits, 1.0, 0.0, n, n), logits.argmax(-1))
    _, ours = tiny
    prompts = prompts_of([5, 9, 13])
    greedy = generate.generate(ours, prompts, max_new_tokens=12)
    assert generate.generate(ours, prompts, max_new_tokens=12, temperature=1.0, top_p=0.0, seed=0) == greedy


def test_bad_sizes_are_errors(tiny):
    _, ours = tiny
    for kw in (dict(batch_size=0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError, match="must be at least 1"):
            generate.generate(ours, prompts_of([4]), **{"max_new_tokens": 4, **kw})


def run_cli(*argv):
    import os
    import subprocess
    import sys
    from conftest import ROOT
    return subprocess.run([sys.executable, "generate.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_cli_refuses_audio_in_text_only_mode_and_zero_sizes(tmp_path):
    """--llm X --audio a.wav used to answer without the audio (even a missing file); 0 new tokens crashed."""
    r = run_cli("--llm", str(tmp_path / "llm"), "--audio", str(tmp_path / "a.wav"), "--prompt", "hi")
    assert r.returncode == 2 and "--llm is the text-only mode and takes no --audio" in r.stderr, r.stderr
    r = run_cli("--llm", str(tmp_path / "llm"), "--prompt", "hi", "--max-new-tokens", "0")
    assert r.returncode == 2 and "argument --max-new-tokens: must be at least 1, got 0" in r.stderr, r.stderr
    r = run_cli("--llm", str(tmp_path / "llm"), "--prompt", "hi", "--top-p", "-0.1")
    assert r.returncode == 2 and "argument --top-p: must be in [0, 1]" in r.stderr, r.stderr


def test_vad_listens_to_the_30_seconds_whisper_sees():
    """A clip with speech only after 30 s: Whisper's mel holds the first 30 s (silence), so the VAD must
    judge those too, not the whole clip (it heard the later speech and Whisper transcribed silence)."""
    import data

    class LoudIsSpeech:  # a stand-in VAD: anything audible is speech
        def has_speech(self, w):
            return bool(abs(w).max() > 0.1) if len(w) else False

    class NoASR:
        def transcribe(self, mel, max_new_tokens, language=None):
            return ["(transcript)"] * len(mel)

    late = torch.zeros(data.N_SAMPLES + 16000)
    late[data.N_SAMPLES:] = 0.5                                  # "speech" only in second 31
    early = late.flip(0)                                         # speech in the first second
    mel = torch.zeros(2, 80, data.N_FRAMES)
    assert transcribe_if_speech([late.numpy(), early.numpy()], mel, LoudIsSpeech(), NoASR()) == \
        [" ", "(transcript)"]


def test_cli_truncated_checkpoint_names_the_file(random_backbones, tmp_path):
    cfg = desta.DeSTAConfig(llm_model_id=str(random_backbones / "llm"), encoder_model_id=str(random_backbones / "whisper"),
                            qformer_num_hidden_layers=1, prompt_size=4, qformer_ffn_dim=48)
    desta.DeSTA.from_config(cfg).save_pretrained(tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    r = run_cli("--checkpoint", str(tmp_path / "ckpt"), "--audio", str(tmp_path / "a.wav"), "--prompt", "hi",
                "--transcription", " ")
    assert r.returncode == 1 and f"error: {weights}: not a readable safetensors file" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("--checkpoint", str(tmp_path / "empty"), "--audio", str(tmp_path / "a.wav"), "--prompt", "hi")
    assert r.returncode == 1 and "empty is a folder without config.json" in r.stderr, r.stderr
