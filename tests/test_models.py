"""Parity of desta.py's Whisper encoder and Llama family with `transformers`, and checkpoint errors.

Tiny random configs are saved with the real HF key names (and, for Llama, sharded and in the classic
`rope_theta` + `rope_scaling` config form that the released Llama 3.1 uses), then loaded by both.
"""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import desta
from asr.whisper import Whisper

transformers = pytest.importorskip("transformers")
TOL = 1e-4  # fp32, max abs


def save_llama(tmp_path, shard=None, **overrides):
    cfg = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=320, max_position_embeddings=4096, rms_norm_eps=1e-5,
               rope_theta=500000.0, tie_word_embeddings=False)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    model.save_pretrained(tmp_path, max_shard_size=shard) if shard else model.save_pretrained(tmp_path)
    return model


def classic_rope_config(folder, theta, scaling):
    """Rewrite config.json the way the released checkpoints have it (rope_theta + rope_scaling)."""
    path = folder / "config.json"
    d = json.loads(path.read_text())
    d.pop("rope_parameters", None)
    d["rope_theta"], d["rope_scaling"] = theta, scaling
    path.write_text(json.dumps(d))


LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   # small original context so that all three frequency bands occur at head_dim 16
                   "original_max_position_embeddings": 64}


def compare_llama(ref, ours, T=48):
    torch.manual_seed(1)
    x = torch.randint(0, ref.config.vocab_size, (3, T))
    # positions far beyond the original context exercise the scaled frequencies
    with torch.no_grad():
        err = (ref(x).logits - ours(x)).abs().max().item()
        mask = torch.ones(3, T, dtype=torch.bool)
        mask[1, :7] = False  # left padding must not change the real tokens' logits
        alone = ref(x[1:2, 7:]).logits
        err_pad = (ours(x, attn_mask=mask)[1, 7:] - alone[0]).abs().max().item()
    return err, err_pad


def test_llama31_sharded_parity(tmp_path):
    ref = save_llama(tmp_path, shard="40KB", rope_parameters=dict(LLAMA31_SCALING, rope_theta=500000.0))
    assert (tmp_path / "model.safetensors.index.json").is_file()
    classic_rope_config(tmp_path, 500000.0, LLAMA31_SCALING)
    ours = desta.Llama.from_pretrained(tmp_path)
    assert ours.cfg.rope_scaling["rope_type"] == "llama3"
    err, err_pad = compare_llama(ref, ours)
    print(f"llama3.1 (sharded, llama3 rope) max abs logits error {err:.2e}, left-padded {err_pad:.2e}")
    assert err <= TOL and err_pad <= TOL
    # the scaling is really applied: plain RoPE gives different logits
    ours.cfg.rope_scaling = None
    assert compare_llama(ref, ours)[0] > 1e-3


def test_llama_tied_no_scaling_parity(tmp_path):  # SmolLM2 / Llama 3.2 style
    ref = save_llama(tmp_path, tie_word_embeddings=True, rope_theta=100000.0)
    classic_rope_config(tmp_path, 100000.0, None)
    ours = desta.Llama.from_pretrained(tmp_path)
    assert ours.lm_head.weight.data_ptr() == ours.embed_tokens.weight.data_ptr()
    err, err_pad = compare_llama(ref, ours)
    print(f"tied llama max abs logits error {err:.2e}, left-padded {err_pad:.2e}")
    assert err <= TOL and err_pad <= TOL


def test_qwen2_biases_parity(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=320, tie_word_embeddings=True)
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF inits biases to zero: make them matter
        for layer in ref.model.layers:
            for p in (layer.self_attn.q_proj.bias, layer.self_attn.k_proj.bias, layer.self_attn.v_proj.bias):
                p.normal_()
    ref.save_pretrained(tmp_path)
    ours = desta.Llama.from_pretrained(tmp_path)
    assert ours.cfg.qkv_bias
    err, err_pad = compare_llama(ref, ours)
    print(f"qwen2 max abs logits error {err:.2e}, left-padded {err_pad:.2e}")
    assert err <= TOL and err_pad <= TOL
    # the inference layout (one GEMM for q/k/v with their biases, one for gate/up) computes the same
    ours.fuse_projections()
    assert ours.layers[0].self_attn.qkv_proj.bias.shape == (64 + 2 * 32,) and not hasattr(ours.layers[0].mlp, "up_proj")
    assert max(compare_llama(ref, ours)) <= TOL
    with pytest.raises(ValueError, match="fused"):
        desta.add_lora(ours)


def test_fused_projections_keep_lora_layers_and_frozen_weights(tmp_path):
    save_llama(tmp_path)
    ours = desta.Llama.from_pretrained(tmp_path).requires_grad_(False)
    x = torch.randint(0, 320, (2, 9))
    with torch.no_grad():
        before = ours(x)
    desta.add_lora(ours)
    ours.fuse_projections()  # q/k/v carry LoRA: left separate; gate/up are fused
    a, m = ours.layers[0].self_attn, ours.layers[0].mlp
    assert a.qkv_proj is None and isinstance(a.q_proj, desta.LoRALinear) and not m.gate_up_proj.weight.requires_grad
    with torch.no_grad():
        assert (ours(x) - before).abs().max() <= TOL  # LoRA's B starts at zero


def test_llama_embeds_input_and_bf16(tmp_path):
    save_llama(tmp_path)
    ours = desta.Llama.from_pretrained(tmp_path)
    x = torch.randint(0, 320, (2, 16))
    with torch.no_grad():
        assert torch.equal(ours(x), ours(embeds=ours.embed_tokens(x)))
        half = desta.Llama.from_pretrained(tmp_path, dtype=torch.bfloat16)
        assert half.embed_tokens.weight.dtype == torch.bfloat16
        y = half(x)
        assert y.dtype == torch.bfloat16 and (y.float() - ours(x)).abs().max() < 0.1


def save_whisper(tmp_path, layers=3):
    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(d_model=64, encoder_layers=layers, encoder_attention_heads=4, decoder_layers=2,
                                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                     num_mel_bins=80, vocab_size=100, max_target_positions=64, pad_token_id=99,
                                     bos_token_id=98, eos_token_id=99, decoder_start_token_id=98)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    model.save_pretrained(tmp_path)  # a full model: the decoder's keys are in the folder too
    return model


def test_whisper_encoder_parity_and_taps(tmp_path):
    ref = save_whisper(tmp_path)
    ours = desta.WhisperEncoder.from_pretrained(tmp_path)
    mel = torch.randn(2, 80, 3000)
    with torch.no_grad():
        out = ref.model.encoder(mel, output_hidden_states=True)
        final, taps = ours(mel, taps=[0, 1, 2])
    err = (out.last_hidden_state - final).abs().max().item()
    # HF hidden_states[k] is layer k-1's raw output for k < N; the last one is after the final LayerNorm,
    # so the last tap is checked against a hand-run of the last layer
    tap_errs = [(out.hidden_states[i + 1] - taps[i]).abs().max().item() for i in range(2)]
    with torch.no_grad():
        last_raw = ref.model.encoder.layers[2](out.hidden_states[2], attention_mask=None)
        last_raw = last_raw[0] if isinstance(last_raw, tuple) else last_raw
    tap_errs.append((last_raw - taps[2]).abs().max().item())
    print(f"whisper encoder max abs error final {err:.2e}, taps {[f'{e:.2e}' for e in tap_errs]}")
    assert err <= TOL and max(tap_errs) <= TOL
    assert (taps[2] - final).abs().max() > 1e-2  # raw tap != normed final state


def test_whisper_rejects_wrong_frames(tmp_path):
    save_whisper(tmp_path, layers=1)
    ours = desta.WhisperEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="3000"):
        ours(torch.zeros(1, 80, 2999))


def test_missing_unexpected_misshaped_tensors(tmp_path):
    save_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    good = dict(state)

    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, path)
    with pytest.raises(desta.CheckpointError, match=r"missing tensor.*layers\.1\.mlp\.up_proj"):
        desta.Llama.from_pretrained(tmp_path)

    # a derived RoPE buffer that older checkpoints carry is accepted (and unused)
    save_file(dict(good, **{"model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(8)}), path)
    desta.Llama.from_pretrained(tmp_path)

    state = dict(good, **{"model.layers.0.mlp.extra.weight": torch.zeros(2)})
    save_file(state, path)
    with pytest.raises(desta.CheckpointError, match="unexpected tensor.*extra"):
        desta.Llama.from_pretrained(tmp_path)

    state = dict(good)
    state["model.norm.weight"] = torch.ones(63)
    save_file(state, path)
    with pytest.raises(desta.CheckpointError, match=r"model\.norm\.weight has shape \(63,\), expected \(64,\)"):
        desta.Llama.from_pretrained(tmp_path)


def test_config_errors(tmp_path):
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    d = json.loads(path.read_text())
    path.write_text(json.dumps(dict(d, hidden_act="gelu")))
    with pytest.raises(desta.CheckpointError, match="config.json: hidden_act"):
        desta.Llama.from_pretrained(tmp_path)
    d.pop("rope_parameters", None)
    path.write_text(json.dumps(dict(d, rope_scaling={"rope_type": "yarn", "factor": 4.0})))
    with pytest.raises(desta.CheckpointError, match="rope_type='yarn'"):
        desta.Llama.from_pretrained(tmp_path)
    path.write_text("{not json")
    with pytest.raises(desta.CheckpointError, match="config.json: not valid JSON"):
        desta.Llama.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    path.write_text(json.dumps(d))
    with pytest.raises(desta.CheckpointError, match="neither model.safetensors nor"):
        desta.Llama.from_pretrained(tmp_path)


def test_whisper_decoder_incremental_parity(tmp_path):
    """Decoding in two cached steps gives the logits transformers computes for the whole sequence."""
    ref = save_whisper(tmp_path, layers=2)
    cfg = desta.WhisperConfig.from_hf(json.loads((tmp_path / "config.json").read_text()))
    ours = desta.empty_model(Whisper, cfg, torch.float32, "cpu")
    desta.load_weights(ours, tmp_path, ignore=("proj_out.",))
    mel, tokens = torch.randn(2, 80, 3000), torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        full = ref(input_features=mel, decoder_input_ids=tokens).logits
        audio, _ = ours.encoder(mel)
        kv, cache = ours.decoder.audio_kv(audio), ours.decoder.new_cache(2)
        steps = [ours.decoder(tokens[:, :5], kv, cache, 0)]
        steps += [ours.decoder(tokens[:, t:t + 1], kv, cache, t) for t in range(5, 12)]
    err = (torch.cat(steps, 1) - full).abs().max().item()
    print(f"whisper decoder (prefill 5 + 7 cached steps) max abs logits error {err:.2e}")
    assert err <= TOL


def test_truncated_weights_name_the_file(tmp_path):
    """A cut model.safetensors used to end in safetensors' SafetensorError, which names no file."""
    save_llama(tmp_path)
    path = tmp_path / "model.safetensors"
    whole = path.read_bytes()
    for n in (len(whole) // 2, 5):
        path.write_bytes(whole[:n])
        with pytest.raises(desta.CheckpointError, match=f"{path}: not a readable safetensors file .*truncated"):
            desta.Llama.from_pretrained(tmp_path)


def test_weights_lookup_messages(tmp_path, monkeypatch):
    """A folder without config.json is not 'no local weights ... run data.py weights --repo /a/path';
    a missing path is not a repo to download; a repo id says where weights/ was looked up."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(desta.CheckpointError, match=r"empty is a folder without config.json, so not a model"):
        desta.resolve_weights(tmp_path / "empty")
    with pytest.raises(desta.CheckpointError, match=r"nowhere: no such model folder") as e:
        desta.resolve_weights(tmp_path / "nowhere")
    assert "data.py weights" not in str(e.value)
    monkeypatch.delenv("DESTA_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(desta.CheckpointError, match=r"weights/ is looked up in the working directory "
                       f"{tmp_path} and in the project .*run: python data.py weights --repo nobody/nothing"):
        desta.resolve_weights("nobody/nothing")
    # run from another folder, the project's own weights/ is found
    monkeypatch.setattr(desta, "PROJECT_DIR", tmp_path / "project")
    save_llama(tmp_path / "project" / "weights" / "unit-test" / "found")
    monkeypatch.chdir(tmp_path / "empty")
    assert desta.resolve_weights("unit-test/found") == tmp_path / "project" / "weights" / "unit-test" / "found"
