"""Tests for the Q-Former adapter (SPEC section 4): sizes, key names, parity, mixing, init.

The parity oracle is built from `transformers`' own BERT layers (the official DeSTA2.5 code runs a
`BertEncoder` with `is_decoder=True, add_cross_attention=True` over the queries, no attention mask),
plus queries / per-query softmax mixing / projection written here from the SPEC. `transformers` is a
test-only dependency: the oracle tests skip without it; everything else needs only torch.
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: `pytest tests/...`
import desta  # noqa: E402

# Official adapter (whisper-large-v3 + Llama-3.1-8B), SPEC 4.
OFFICIAL_TRAINABLE = 131_540_224
OFFICIAL_QFORMER = 125_962_752
OFFICIAL_QUERIES = 327_680
OFFICIAL_LAYER_WEIGHTS = 256
OFFICIAL_PROJECTION = 5_249_536
OFFICIAL_NUM_TENSORS = 165

# A tiny config for numerical tests: every dimension distinct so a transposed weight cannot pass.
SMALL = dict(encoder_dim=64, llm_dim=48, num_layers=2, num_heads=4, ffn_dim=96, prompt_size=8, num_taps=4)
BATCH, SEQ = 2, 30       # SEQ stands in for Whisper's 1500 frames
PARITY_TOL = 1e-5        # fp32 max abs error allowed against the oracle
CAUSAL_GAP = 1e-3        # our output must differ from a causal-mask variant by more than this
PROJ_LN_EPS = 1e-5       # official proj.0 is nn.LayerNorm(d) with PyTorch's default eps


# ----------------------------------------------------------------------------- helpers

def count_params(module: nn.Module) -> int:
    if hasattr(desta, "count_parameters"):
        return desta.count_parameters(module, trainable_only=True)
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def expected_shapes(cfg) -> dict:
    """Official checkpoint keys (minus 'perception.connector.') -> shape, generated from SPEC 4."""
    D, P, T, Fd, L = cfg.encoder_dim, cfg.prompt_size, cfg.num_taps, cfg.ffn_dim, cfg.llm_dim
    shapes = {f"layer_prompts.{t}": (1, P, D) for t in range(T)}
    shapes["layer_weights"] = (P, T)
    for i in range(cfg.num_layers):
        pre = f"qformer.layer.{i}"
        for block in ("attention", "crossattention"):  # cross k/v project from the tap width = D
            for name in ("query", "key", "value"):
                shapes[f"{pre}.{block}.self.{name}.weight"] = (D, D)
                shapes[f"{pre}.{block}.self.{name}.bias"] = (D,)
            shapes[f"{pre}.{block}.output.dense.weight"] = (D, D)
            shapes[f"{pre}.{block}.output.dense.bias"] = (D,)
            shapes[f"{pre}.{block}.output.LayerNorm.weight"] = (D,)
            shapes[f"{pre}.{block}.output.LayerNorm.bias"] = (D,)
        shapes[f"{pre}.intermediate.dense.weight"] = (Fd, D)
        shapes[f"{pre}.intermediate.dense.bias"] = (Fd,)
        shapes[f"{pre}.output.dense.weight"] = (D, Fd)
        shapes[f"{pre}.output.dense.bias"] = (D,)
        shapes[f"{pre}.output.LayerNorm.weight"] = (D,)
        shapes[f"{pre}.output.LayerNorm.bias"] = (D,)
    shapes["proj.0.weight"] = (D,)
    shapes["proj.0.bias"] = (D,)
    shapes["proj.1.weight"] = (L, D)
    shapes["proj.1.bias"] = (L,)
    return shapes


def small_cfg(**overrides):
    return desta.QFormerConfig(**{**SMALL, **overrides})


def randomized_state(model: nn.Module, seed: int) -> dict:
    """Default init leaves layer_weights at 0 and LayerNorms at 1/0, which would hide mixing and
    norm-affine bugs: perturb every tensor so each one matters."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        noise = torch.randn(v.shape, generator=g)
        if k == "layer_weights":
            sd[k] = noise                               # clearly non-uniform per-query mixing
        elif k.endswith("LayerNorm.weight") or k == "proj.0.weight":
            sd[k] = 1.0 + 0.2 * noise
        elif k.endswith(".bias"):
            sd[k] = 0.1 * noise
        else:
            sd[k] = v.clone()                           # queries (N(0,1)) and Linear weights as initialized
    return sd


def small_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = small_cfg(**overrides)
    model = desta.QFormerConnector(cfg)
    model.load_state_dict(randomized_state(model, seed + 1), strict=True)
    return cfg, model.eval()


def make_taps(cfg, seed: int = 100, batch: int = BATCH, seq: int = SEQ) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, cfg.encoder_dim, generator=g) for _ in range(cfg.num_taps)]


def build_oracle(cfg):
    """Q-Former from transformers' BertEncoder + queries/mixing/projection written from the SPEC."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert.modeling_bert import BertEncoder

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            bert = transformers.BertConfig(
                hidden_size=cfg.encoder_dim, num_attention_heads=cfg.num_heads,
                intermediate_size=cfg.ffn_dim, num_hidden_layers=cfg.num_layers, hidden_act="gelu",
                layer_norm_eps=1e-12, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                is_decoder=True, add_cross_attention=True)
            # transformers 5.x marks is_decoder self-attention `is_causal`; the SDPA backend then
            # applies a causal mask whenever no mask is passed. The eager backend only adds the mask
            # it is given, which is what the official code ran (transformers 4.49, eager BERT, no
            # mask) and what SPEC 4 says: bidirectional. Force eager and clear the flag as well.
            bert._attn_implementation = "eager"
            self.qformer = BertEncoder(bert)
            for layer in self.qformer.layer:
                layer.attention.self.is_causal = False
            self.layer_prompts = nn.ParameterList(
                [nn.Parameter(torch.zeros(1, cfg.prompt_size, cfg.encoder_dim)) for _ in range(cfg.num_taps)])
            self.layer_weights = nn.Parameter(torch.zeros(cfg.prompt_size, cfg.num_taps))
            self.proj = nn.Sequential(nn.LayerNorm(cfg.encoder_dim, eps=PROJ_LN_EPS),
                                      nn.Linear(cfg.encoder_dim, cfg.llm_dim))

        def forward(self, taps, causal=False):
            B, P = taps[0].shape[0], cfg.prompt_size
            mask = None
            if causal:  # additive (1, 1, P, P) mask: query i sees queries <= i only
                mask = torch.full((P, P), torch.finfo(torch.float32).min).triu(1)[None, None]
            per_tap = []
            for prompt, h in zip(self.layer_prompts, taps):
                out = self.qformer(prompt.expand(B, -1, -1), attention_mask=mask, encoder_hidden_states=h)
                per_tap.append(out.last_hidden_state)              # (B, P, D)
            per_tap = torch.stack(per_tap, dim=-1)                  # (B, P, D, T)
            w = torch.softmax(self.layer_weights, dim=1)            # (P, T): per query, over taps
            mixed = (per_tap * w[None, :, None, :]).sum(-1)         # (B, P, D)
            return self.proj(mixed)                                 # (B, P, llm_dim)

    return Oracle().eval()


def oracle_for(model, cfg):
    oracle = build_oracle(cfg)
    oracle.load_state_dict(model.state_dict(), strict=True)  # same names, same shapes, or this fails
    return oracle


@torch.no_grad()
def max_err(a, b) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- 1. sizes and names

def test_official_config_defaults():
    cfg = desta.QFormerConfig()
    assert (cfg.encoder_dim, cfg.llm_dim, cfg.num_layers, cfg.num_heads) == (1280, 4096, 6, 20)
    assert (cfg.ffn_dim, cfg.prompt_size, cfg.num_taps) == (3072, 64, 4)
    assert cfg.dropout == 0.1 and cfg.norm_eps == 1e-12


def _official_model():
    try:  # meta tensors: shapes without allocating 0.5 GB
        with torch.device("meta"):
            return desta.QFormerConnector(desta.QFormerConfig())
    except Exception:
        return desta.QFormerConnector(desta.QFormerConfig())


def test_official_parameter_count_and_split():
    model = _official_model()
    assert count_params(model) == OFFICIAL_TRAINABLE
    assert all(p.requires_grad for p in model.parameters())
    split = {"qformer": 0, "layer_prompts": 0, "layer_weights": 0, "proj": 0}
    for name, p in model.named_parameters():
        split[name.split(".")[0]] += p.numel()
    assert split == {"qformer": OFFICIAL_QFORMER, "layer_prompts": OFFICIAL_QUERIES,
                     "layer_weights": OFFICIAL_LAYER_WEIGHTS, "proj": OFFICIAL_PROJECTION}


def test_official_state_dict_keys_and_shapes():
    model = _official_model()
    sd = model.state_dict()
    expected = expected_shapes(desta.QFormerConfig())
    assert len(expected) == OFFICIAL_NUM_TENSORS  # the oracle list itself agrees with SPEC 4
    assert len(sd) == OFFICIAL_NUM_TENSORS
    assert sorted(sd) == sorted(expected), (
        f"missing {sorted(set(expected) - set(sd))[:5]}, unexpected {sorted(set(sd) - set(expected))[:5]}")
    wrong = {k: tuple(v.shape) for k, v in sd.items() if tuple(v.shape) != expected[k]}
    assert not wrong, f"shape mismatches (got): {wrong}"


def test_small_keys_match_transformers_bert_encoder():
    """The qformer.* names are exactly what a transformers BertEncoder writes (the official layout)."""
    cfg, model = small_model()
    oracle = build_oracle(cfg)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in oracle.state_dict().items()}
    assert ours == theirs
    assert ours == expected_shapes(cfg)


# ----------------------------------------------------------------------------- 2. parity

@pytest.mark.parametrize("regime", ["random", "small_last_norm"])
def test_parity_with_transformers_oracle(regime):
    cfg, model = small_model(seed=0)
    if regime == "small_last_norm":
        # Shrink the stack's final LayerNorm so the projection LayerNorm sees variance ~1e-6: there its
        # eps decides the result, so this catches proj.0 built with eps 1e-12 instead of the official
        # nn.LayerNorm default 1e-5.
        sd = model.state_dict()
        last = f"qformer.layer.{cfg.num_layers - 1}.output.LayerNorm"
        sd[f"{last}.weight"] = sd[f"{last}.weight"] * 1e-3
        sd[f"{last}.bias"] = sd[f"{last}.bias"] * 1e-3
        model.load_state_dict(sd)
    oracle = oracle_for(model, cfg)
    taps = make_taps(cfg)
    with torch.no_grad():
        ours, ref = model(taps), oracle(taps)
    assert ours.shape == (BATCH, cfg.prompt_size, cfg.llm_dim)
    assert ours.dtype == torch.float32
    err = max_err(ours, ref)
    print(f"\n[adapter parity {regime}] max abs error vs transformers oracle: {err:.3e} "
          f"(output max abs {ref.abs().max().item():.3f})")
    assert err <= PARITY_TOL


def test_parity_batch_rows_independent():
    """Each clip's output depends on that clip's taps only (no mixing across the batch)."""
    cfg, model = small_model(seed=3)
    taps = make_taps(cfg, batch=3)
    with torch.no_grad():
        full = model(taps)
        single = model([t[1:2] for t in taps])
    assert max_err(full[1:2], single) <= PARITY_TOL


def test_self_attention_is_not_causal():
    cfg, model = small_model(seed=1)
    oracle = oracle_for(model, cfg)
    taps = make_taps(cfg)
    with torch.no_grad():
        ours = model(taps)
        causal = oracle(taps, causal=True)
        bidirectional = oracle(taps)
    gap = max_err(ours, causal)
    print(f"\n[adapter causality] ours vs causal-mask oracle: {gap:.3e}; "
          f"vs bidirectional oracle: {max_err(ours, bidirectional):.3e}")
    assert gap > CAUSAL_GAP
    assert max_err(ours, bidirectional) <= PARITY_TOL

    # Direct check: changing the LAST query moves the FIRST output row (impossible under a causal mask).
    sd = model.state_dict()
    for t in range(cfg.num_taps):
        sd[f"layer_prompts.{t}"][:, -1] += 1.0
    model.load_state_dict(sd)
    with torch.no_grad():
        moved = model(taps)
    assert max_err(moved[:, 0], ours[:, 0]) > CAUSAL_GAP


def test_query_permutation_equivariance():
    """No positions among the queries and bidirectional attention: permuting the queries (and their
    layer_weights rows) permutes the output rows identically. A causal mask breaks this."""
    cfg, model = small_model(seed=2)
    taps = make_taps(cfg)
    perm = torch.randperm(cfg.prompt_size, generator=torch.Generator().manual_seed(7))
    assert not torch.equal(perm, torch.arange(cfg.prompt_size))
    with torch.no_grad():
        out = model(taps)
        sd = model.state_dict()
        for t in range(cfg.num_taps):
            sd[f"layer_prompts.{t}"] = sd[f"layer_prompts.{t}"][:, perm]
        sd["layer_weights"] = sd["layer_weights"][perm]
        model.load_state_dict(sd)
        permuted = model(taps)
    err = max_err(permuted, out[:, perm])
    print(f"\n[adapter permutation] max abs error of permuted output: {err:.3e}")
    assert err <= PARITY_TOL


# ----------------------------------------------------------------------------- 3. per-query mixing

def test_per_query_softmax_over_taps():
    """Make tap (j mod T) dominate for query j: row j must equal the single-tap path of that tap."""
    cfg, model = small_model(seed=4)
    T, P = cfg.num_taps, cfg.prompt_size
    taps = make_taps(cfg)
    dominant = [j % T for j in range(P)]
    sd = model.state_dict()
    lw = torch.zeros(P, T)
    lw[torch.arange(P), dominant] = 60.0  # softmax weight 1 - 3e-26: exactly one tap in fp32
    sd["layer_weights"] = lw
    model.load_state_dict(sd)

    # Single-tap model: same stack and projection, only tap t's queries, one tap (softmax of one = 1).
    _, single = small_model(seed=4, num_taps=1)
    with torch.no_grad():
        mixed = model(taps)
        per_tap = []
        for t in range(T):
            sd1 = {k: v for k, v in sd.items() if not k.startswith(("layer_prompts", "layer_weights"))}
            sd1["layer_prompts.0"] = sd[f"layer_prompts.{t}"]
            sd1["layer_weights"] = torch.zeros(P, 1)
            single.load_state_dict(sd1, strict=True)
            per_tap.append(single([taps[t]]))
    errs = [max_err(mixed[:, j], per_tap[dominant[j]][:, j]) for j in range(P)]
    print(f"\n[adapter mixing] max abs error per-query dominant tap vs single-tap path: {max(errs):.3e}")
    assert max(errs) <= PARITY_TOL
    # ...and the taps really differ, so the check above could fail.
    assert max_err(per_tap[0][:, 0], per_tap[1][:, 0]) > CAUSAL_GAP


def test_uniform_weights_average_the_taps():
    """layer_weights = 0 (the init) gives the plain mean of the per-tap Q-Former outputs."""
    cfg, model = small_model(seed=5)
    sd = model.state_dict()
    sd["layer_weights"] = torch.zeros(cfg.prompt_size, cfg.num_taps)
    model.load_state_dict(sd)
    oracle = oracle_for(model, cfg)
    taps = make_taps(cfg)
    with torch.no_grad():
        err = max_err(model(taps), oracle(taps))
    assert err <= PARITY_TOL


# ----------------------------------------------------------------------------- misc behaviour

def test_dropout_active_only_in_training():
    cfg, model = small_model(seed=6)
    taps = make_taps(cfg)
    with torch.no_grad():
        assert torch.equal(model(taps), model(taps))  # eval: deterministic
        model.train()
        torch.manual_seed(0)
        a = model(taps)
        torch.manual_seed(1)
        b = model(taps)
    assert max_err(a, b) > CAUSAL_GAP  # dropout 0.1 is present (SPEC 4)


def test_gradients_reach_every_parameter():
    cfg, model = small_model(seed=8)
    taps = make_taps(cfg)
    model(taps).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient for {missing}"


def test_wrong_number_of_taps_is_an_error():
    cfg, model = small_model(seed=9)
    taps = make_taps(cfg)
    with pytest.raises((ValueError, AssertionError, RuntimeError, IndexError)):
        model(taps[:-1])


# ----------------------------------------------------------------------------- 4. initialisation

def test_initialisation():
    """Official widths (1280, 64 queries, 4 taps) with one layer and a small LLM dim to stay cheap."""
    torch.manual_seed(0)
    cfg = desta.QFormerConfig(num_layers=1, llm_dim=256)
    model = desta.QFormerConnector(cfg)
    sd = model.state_dict()

    assert torch.equal(sd["layer_weights"], torch.zeros(cfg.prompt_size, cfg.num_taps))

    prompts = torch.cat([sd[f"layer_prompts.{t}"].flatten() for t in range(cfg.num_taps)])
    assert prompts.numel() == OFFICIAL_QUERIES
    assert 0.9 <= prompts.std().item() <= 1.1 and abs(prompts.mean().item()) < 0.05  # N(0, 1)
    assert not torch.equal(sd["layer_prompts.0"], sd["layer_prompts.1"])  # independent draws

    # PyTorch default Linear init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std bound/sqrt(3).
    # BERT's re-init (weight N(0, 0.02), bias 0) fails both the bound and the nonzero bias.
    linear_weights = [k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 2]
    assert len(linear_weights) == 10 * cfg.num_layers + 1  # 8 attention + 2 FFN per layer, + proj.1
    for k in linear_weights:
        w, b = sd[k], sd[k[: -len("weight")] + "bias"]
        bound = w.shape[1] ** -0.5
        assert w.abs().max().item() <= bound + 1e-7, k
        assert abs(w.std().item() / (bound / 3 ** 0.5) - 1) < 0.1, k
        assert b.abs().max().item() <= bound + 1e-7 and b.abs().max().item() > 0.5 * bound, k

    for k, v in sd.items():  # LayerNorms start as identity affine
        if k.endswith("LayerNorm.weight") or k == "proj.0.weight":
            assert torch.equal(v, torch.ones_like(v)), k
        if k.endswith("LayerNorm.bias") or k == "proj.0.bias":
            assert torch.equal(v, torch.zeros_like(v)), k


def test_frame_mask_reads_only_the_clip():
    """mask_audio_padding (tiny preset): frames past a clip's end change nothing, the crop to the longest
    clip equals masking all frames, and each clip alone equals the batch."""
    cfg, model = small_model(seed=5)
    model.eval()
    taps = make_taps(cfg, batch=3)
    mask = torch.arange(SEQ)[None] < torch.tensor([[12], [30], [7]])
    with torch.no_grad():
        out = model(taps, mask)
        noisy = [t.clone() for t in taps]
        for t in noisy:
            t[0, 12:] += 5.0
            t[2, 7:] -= 3.0
        assert max_err(model(noisy, mask), out) <= PARITY_TOL  # padding content is never read
        for i, n in enumerate((12, 30, 7)):
            alone = model([t[i:i + 1, :n] for t in taps])       # the clip's frames only, no mask at all
            assert max_err(out[i:i + 1], alone) <= PARITY_TOL
        assert max_err(model(taps), out) > 1e-3                 # and without the mask it differs


def test_audio_frame_mask_from_log_mel():
    import numpy as np
    import data

    rng = np.random.default_rng(0)
    clips = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000 * 3, 16000 * 30, 0)]
    mel = torch.stack([data.log_mel_spectrogram(torch.as_tensor(data.pad_or_trim(c))) for c in clips])
    used = desta.audio_frame_mask(mel, 1500).sum(1).tolist()
    assert abs(used[0] - 150) <= 1 and used[1] == 1500 and used[2] == 1  # 3 s = 150 frames; silence keeps one
    assert desta.DeSTAConfig().mask_audio_padding is False               # the released model reads everything
