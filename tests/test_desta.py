"""The DeSTA fusion model: chat context with the audio span, left-padded batches, the loss over
response + end-of-turn only, frozen backbones, and the official adapter layout (SPEC 4, 5)."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import desta

transformers = pytest.importorskip("transformers")
P = 8  # prompt_size for the tiny adapter


@pytest.fixture(scope="module")
def backbones(random_backbones):
    return random_backbones


def make_model(backbones, **kw):
    cfg = desta.DeSTAConfig(llm_model_id=str(backbones / "llm"), encoder_model_id=str(backbones / "whisper"),
                            qformer_num_hidden_layers=2, prompt_size=P, qformer_ffn_dim=48, **kw)
    torch.manual_seed(0)
    return desta.DeSTA.from_config(cfg).eval()


def conversation(prompt):
    return [{"role": "system", "content": desta.DEFAULT_SYSTEM},
            {"role": "user", "content": f"<start_audio><|AUDIO|><end_audio>\n{prompt}"}]


def test_context_layout(backbones):
    model = make_model(backbones)
    tok = model.tokenizer
    b = model.build_batch([conversation("What can you hear?"), conversation("Describe it in one word.")],
                          [["Hello world"], [" "]], responses=["A greeting.", "Silence"])
    assert model.taps == [0, 1, 2, 3]
    assert b.input_ids.shape == b.attn_mask.shape == b.labels.shape
    for row in range(2):
        ids = b.input_ids[row][b.attn_mask[row]].tolist()
        start = b.audio_starts[row].item() - (~b.attn_mask[row]).sum().item()
        assert ids[start:start + P] == [128095] * P  # <|reserved_special_token_87|>
        before = tok.decode(ids[:start])
        assert before.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge")
        assert before.endswith("<|start_header_id|>user<|end_header_id|>\n\n<start_audio>")
        trans = ["Hello world", " "][row]
        n = len(tok.encode(trans))
        assert ids[start + P:start + P + n] == tok.encode(trans)  # the transcription's own tokens
        after = tok.decode(ids[start + P + n:])
        assert after.startswith("<end_audio>\n")
        # labels: exactly the response tokens and the closing <|eot_id|>
        lab = [x for x in b.labels[row].tolist() if x != desta.IGNORE]
        assert lab == tok.encode(["A greeting.", "Silence"][row]) + [128009]
        assert b.labels[row, -len(lab):].tolist() == lab
    assert (~b.attn_mask[1]).sum() > 0 and not b.attn_mask[1, 0]  # the shorter row is left-padded


def test_loss_is_response_only_and_chunked_equals_full(backbones):
    model = make_model(backbones)
    b = model.build_batch([conversation("What can you hear?"), conversation("Hi")],
                          [["Hello world"], [" "]], responses=["A greeting, said twice.", "Nothing"])
    mel = torch.randn(2, 80, 3000)
    with torch.no_grad():
        loss = model(mel, b)
        loss_chunked = model(mel, b, loss_chunk=3)
        # hand computation: full logits, then CE at the label positions only
        embeds = model.embed(b, model.encode_audio(mel))
        logits = model.llm(embeds=embeds, attn_mask=b.attn_mask)
        nll = []
        for row in range(2):
            for t in range(1, b.input_ids.shape[1]):
                y = b.labels[row, t].item()
                if y != desta.IGNORE:
                    nll.append(-F.log_softmax(logits[row, t - 1], -1)[y])
        hand = torch.stack(nll).mean()
    n_resp = len(model.tokenizer.encode("A greeting, said twice.")) + len(model.tokenizer.encode("Nothing")) + 2
    assert len(nll) == n_resp
    assert abs(loss.item() - hand.item()) < 1e-5
    assert abs(loss_chunked.item() - loss.item()) < 1e-5


def test_gradients_reach_only_the_adapter(backbones):
    model = make_model(backbones).train()
    b = model.build_batch([conversation("Hi")], [["Hello"]], responses=["Hello to you."])
    loss = model(torch.randn(1, 80, 3000), b)
    loss.backward()
    assert all(p.grad is None for p in model.whisper.parameters())
    assert all(p.grad is None for p in model.llm.parameters())
    grads = {n: p.grad for n, p in model.connector.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["layer_weights"].abs().sum() > 0 and grads["layer_prompts.0"].abs().sum() > 0
    assert desta.count_parameters(model) == desta.count_parameters(model.connector)


def test_batched_equals_alone(backbones):
    """Left padding changes nothing: each row's response logits equal the row run alone."""
    model = make_model(backbones)
    convs = [conversation("What can you hear from the audio, in detail?"), conversation("Hi")]
    trans = [["Hello world, this is a longer transcription"], [" "]]
    resp = ["One two three.", "Four."]
    mel = torch.randn(2, 80, 3000)
    with torch.no_grad():
        b = model.build_batch(convs, trans, resp)
        both = model.llm(embeds=model.embed(b, model.encode_audio(mel)), attn_mask=b.attn_mask)
        for row in range(2):
            a = model.build_batch(convs[row:row + 1], trans[row:row + 1], resp[row:row + 1])
            alone = model.llm(embeds=model.embed(a, model.encode_audio(mel[row:row + 1])), attn_mask=a.attn_mask)
            n = a.input_ids.shape[1]
            assert (both[row, -n:] - alone[0]).abs().max() < 1e-4


def test_max_len_and_transcription_cap(backbones):
    model = make_model(backbones, max_transcription_tokens=5)
    long = "one two three four five six seven eight nine ten"
    capped = model.build_batch([conversation("Hi")], [[long]], responses=["ok"], cap_transcription=True)
    full = model.build_batch([conversation("Hi")], [[long]], responses=["ok"])
    assert full.input_ids.shape[1] - capped.input_ids.shape[1] == len(model.tokenizer.encode(long)) - 5
    n_ctx = model.build_batch([conversation("Hi")], [[" "]]).input_ids.shape[1]
    cut = model.build_batch([conversation("Hi")], [[" "]], responses=["a b c d e f g h"], max_len=n_ctx + 3)
    assert cut.input_ids.shape[1] == n_ctx + 3 and (cut.labels != desta.IGNORE).sum() == 3
    with pytest.raises(ValueError, match="cuts into an audio span"):
        model.build_batch([conversation("Hi")], [[" "]], responses=["x"], max_len=40)
    with pytest.raises(ValueError, match="1 audio locators but 2 transcriptions"):
        model.build_batch([conversation("Hi")], [["a", "b"]])


def test_official_layout_round_trip(backbones, tmp_path):
    model = make_model(backbones)
    with torch.no_grad():  # make every tensor non-trivial, layer_weights included
        for p in model.connector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    for k, v in dict(prompt_size=P, audio_locator="<|AUDIO|>", placeholder_token="<|reserved_special_token_87|>",
                     qformer_num_hidden_layers=2, connector_mode="qformer_1", model_type="desta25").items():
        assert conf[k] == v
    assert conf["llm_config"]["hidden_size"] == 48 and conf["encoder_config"]["d_model"] == 32
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert keys == {"perception.connector." + k for k in model.connector.state_dict()}
    assert "perception.connector.qformer.layer.1.crossattention.output.LayerNorm.weight" in keys
    assert len(keys) == 4 + 1 + 2 * 26 + 4  # prompts, weights, 26 per layer, proj
    loaded = desta.DeSTA.from_pretrained(tmp_path).eval()
    for k, v in model.connector.state_dict().items():
        assert torch.equal(v, loaded.connector.state_dict()[k]), k
    b = model.build_batch([conversation("Hi")], [["Hello"]], responses=["Yes."])
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        assert model(mel, b).item() == loaded(mel, b).item()


def test_a_model_built_with_init_saves_the_official_layout(backbones, tmp_path):
    # DeSTA(cfg, whisper, llm, tokenizer) from loaded backbones: save_pretrained finds their config.json
    cfg = desta.DeSTAConfig(llm_model_id=str(backbones / "llm"), encoder_model_id=str(backbones / "whisper"),
                            qformer_num_hidden_layers=1, prompt_size=P, qformer_ffn_dim=48)
    model = desta.DeSTA(cfg, desta.WhisperEncoder.from_pretrained(backbones / "whisper"),
                        desta.Llama.from_pretrained(backbones / "llm"), desta.Tokenizer.from_pretrained(backbones / "llm"))
    model.save_pretrained(tmp_path / "a")
    conf = json.loads((tmp_path / "a" / "config.json").read_text())
    assert conf["llm_config"] == json.loads((backbones / "llm" / "config.json").read_text())
    assert conf["encoder_config"]["d_model"] == 32
    loaded = desta.DeSTA.from_pretrained(tmp_path / "a")
    assert all(torch.equal(v, loaded.connector.state_dict()[k]) for k, v in model.connector.state_dict().items())
    # backbones built from bare configs have no config.json to copy: the file is written without them
    bare = desta.DeSTA(cfg, desta.WhisperEncoder(model.whisper.cfg), desta.Llama(model.llm.cfg), model.tokenizer)
    bare.save_pretrained(tmp_path / "b")
    assert "llm_config" not in json.loads((tmp_path / "b" / "config.json").read_text())
    desta.DeSTA.from_pretrained(tmp_path / "b")


def test_padding_mask_is_saved_and_changes_the_vectors(backbones, tmp_path):
    model = make_model(backbones, mask_audio_padding=True, target_layer_ids=[1, 3])
    model.save_pretrained(tmp_path)
    loaded = desta.DeSTA.from_pretrained(tmp_path).eval()
    assert loaded.cfg.mask_audio_padding is True and loaded.taps == [1, 3]
    mel = torch.full((1, 80, 3000), -0.5)
    mel[:, :, :400] = torch.rand(1, 80, 400)                       # 4 s of sound above the floor, then padding
    with torch.no_grad():
        masked = loaded.encode_audio(mel)
        loaded.cfg.mask_audio_padding = False
        assert (loaded.encode_audio(mel) - masked).abs().max() > 1e-3


def test_adapter_checkpoint_errors(backbones, tmp_path):
    model = make_model(backbones)
    model.save_pretrained(tmp_path)
    conf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(conf, qformer_num_layers=3)))
    with pytest.raises(desta.CheckpointError, match=r"unknown field\(s\) \['qformer_num_layers'\]"):
        desta.DeSTA.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(conf, qformer_num_hidden_layers=3)))
    with pytest.raises(desta.CheckpointError, match=r"missing tensor.*qformer\.layer\.2\."):
        desta.DeSTA.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(conf, llm_model_id="nobody/nothing")))
    with pytest.raises(desta.CheckpointError, match="python data.py weights --repo nobody/nothing"):
        desta.DeSTA.from_pretrained(tmp_path, weights_root=tmp_path / "none")


def test_unfinished_response_gets_no_end_of_turn(backbones):
    model = make_model(backbones)
    b = model.build_batch([conversation("Hi"), conversation("Hi")], [[" "], [" "]], ["cut off mid", "done."],
                          finished=[False, True])
    labels = [[x for x in row.tolist() if x != desta.IGNORE] for row in b.labels]
    assert labels[0] == model.tokenizer.encode("cut off mid")
    assert labels[1] == model.tokenizer.encode("done.") + [128009]


def test_lora_ablation_layout_and_round_trip(backbones, tmp_path):
    plain = make_model(backbones)
    model = make_model(backbones, use_lora=True, lora_rank=4)
    b = model.build_batch([conversation("Hi")], [["Hello"]], responses=["Yes."])
    mel = torch.randn(1, 80, 3000)
    model.connector.load_state_dict(plain.connector.state_dict())
    with torch.no_grad():  # B starts at zero: LoRA begins exactly at the backbone
        assert model(mel, b).item() == pytest.approx(plain(mel, b).item(), abs=1e-6)
    lora = {n: p for n, p in model.llm.named_parameters() if p.requires_grad}
    assert len(lora) == 2 * 3 * 2 and "layers.0.self_attn.q_proj.lora_A.default.weight" in lora
    assert desta.count_parameters(model) == desta.count_parameters(model.connector) + sum(p.numel() for p in lora.values())
    with torch.no_grad():
        for p in lora.values():
            p.normal_()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = set(f.keys())
    assert "llm_model.model.layers.1.self_attn.v_proj.lora_B.default.weight" in keys  # the authors' (peft) names
    loaded = desta.DeSTA.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert loaded(mel, b).item() == model.eval()(mel, b).item()
