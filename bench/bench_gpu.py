"""
make bench-gpu: the one prepared script for a lent GPU (H100/H200), under 8 minutes, no downloads.

Random weights in the paper's shapes (Llama-3.1-8B, Whisper-large-v3, the official 6-layer adapter):
  1. memory bandwidth (device copy) and bf16 matmul peak, measured, as the yardsticks
  2. decode, batch 1, bf16, decode step torch.compile'd (CUDA graphs): tokens/s and the fraction of the
     roofline (bytes read per token = all weights + the KV cache; roofline = measured bandwidth)
  3. decode, batch 64: tokens/s
  4. one training step of the desta25 recipe, batch 12 x ~300 tokens: samples/s, MFU counting
     4 x LLM params x tokens + 2 x Whisper params x 1500 frames per clip, peak memory

    python3 bench/bench_gpu.py            # on the GPU machine
    python bench/bench_gpu.py --small     # CPU smoke test of this script with tiny shapes

Needs desta.py, data.py, generate.py and weights/llama3-tokenizer (the Llama 3 tokenizer.model, built by
`python data.py weights --preset tiny`). data.py imports soundfile: where the GPU image lacks it,
carry its wheel (and cffi's, pycparser's) as the device tool's notes describe.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import desta  # noqa: E402
import generate  # noqa: E402


def timed(fn, sync):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def random_init(module, std=0.02):
    """Weights drawn on the device (fast): N(0, std) matrices, ones for norms, zeros for biases."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, std)
            elif "norm" in name or "layer_norm" in name or name.endswith("LayerNorm.weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="tiny shapes on CPU: checks the script itself")
    a = ap.parse_args()
    cuda = torch.cuda.is_available() and not a.small
    dev = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dt = torch.bfloat16 if cuda else torch.float32
    rows = []

    def report(what, value, note=""):
        rows.append(f"| {what} | {value} | {note} |")
        print(rows[-1], flush=True)

    name = torch.cuda.get_device_name() if cuda else "cpu (smoke test)"
    print(f"device: {name}, torch {torch.__version__}\n\n| what | value | notes |\n|---|---:|---|")

    # 1. yardsticks
    n = (1 << 30) if cuda else (1 << 22)
    x = torch.empty(n, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    t, _ = timed(lambda: [y.copy_(x) for _ in range(10)], sync)
    bandwidth = 2 * n * 10 / t
    report("device copy bandwidth (read + write)", f"{bandwidth / 1e12:.2f} TB/s")
    del x, y
    m = 8192 if cuda else 512
    A, B = torch.randn(m, m, dtype=dt, device=dev), torch.randn(m, m, dtype=dt, device=dev)
    A @ B
    t, _ = timed(lambda: [A @ B for _ in range(10)], sync)
    peak = 2 * m ** 3 * 10 / t
    report(f"{str(dt).split('.')[-1]} matmul {m}^3", f"{peak / 1e12:.0f} TFLOP/s", "measured peak for MFU")
    del A, B

    # 2-3. decode
    lcfg = desta.LlamaConfig() if cuda else desta.LlamaConfig(dim=256, n_layers=2, n_heads=4, n_kv_heads=2,
                                                              head_dim=64, ffn_dim=512, vocab_size=128256)
    with torch.device("meta"):
        llm = desta.Llama(lcfg)
    llm = llm.to(dt).to_empty(device=dev).eval()
    random_init(llm)
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
    report("LLM", f"{sum(p.numel() for p in llm.parameters()) / 1e9:.2f} B params", f"{weight_bytes / 1e9:.1f} GB")
    g = torch.Generator().manual_seed(0)
    prompt_len, new = 128, (256 if cuda else 16)
    for batch, compiled in ((1, cuda), (1, False), (64, cuda)):
        prompts = [torch.randint(0, 128000, (prompt_len,), generator=g).tolist() for _ in range(batch)]
        eng = generate.Engine(llm, batch_size=batch, max_len=prompt_len + new, compile=compiled)
        eng.run(prompts, generate.Sampling(max_new_tokens=8))  # warm-up (compiles the decode step)
        t, out = timed(lambda: eng.run(prompts, generate.Sampling(max_new_tokens=new)), sync)
        llm.drop_cache()
        toks = sum(map(len, out))
        # the prefill is inside t: subtract a measured prefill to get decode alone
        eng = generate.Engine(llm, batch_size=batch, max_len=prompt_len + new)
        tp, _ = timed(lambda: eng.run(prompts, generate.Sampling(max_new_tokens=1)), sync)
        llm.drop_cache()
        decode_tps = (toks - batch) / max(t - tp, 1e-9)
        kv_bytes = 2 * lcfg.n_layers * lcfg.n_kv_heads * lcfg.head_dim * dt.itemsize * (prompt_len + new / 2) * batch
        note = f"{'compiled' if compiled else 'eager'}"
        if batch == 1:
            roof = bandwidth / (weight_bytes + kv_bytes)
            note += f"; roofline {roof:.0f} tok/s -> {100 * decode_tps / roof:.0f}% of it"
        report(f"decode, batch {batch}, {prompt_len} prompt + {new} new", f"{decode_tps:,.0f} tok/s", note)

    # 4. training step, desta25 shapes
    wcfg = desta.WhisperConfig(n_mels=128, d_model=1280, encoder_layers=32, encoder_heads=20, encoder_ffn_dim=5120,
                               decoder_layers=0, vocab_size=51866) if cuda else \
        desta.WhisperConfig(n_mels=128, d_model=64, encoder_layers=4, encoder_heads=2, encoder_ffn_dim=128,
                            decoder_layers=0, vocab_size=51866)
    with torch.device("meta"):
        whisper = desta.WhisperEncoder(wcfg)
    whisper = whisper.to(dt).to_empty(device=dev).eval()
    random_init(whisper)
    tok = desta.Tokenizer.from_pretrained(ROOT / "weights" / "llama3-tokenizer")
    cfg = desta.DeSTAConfig(encoder_model_id="openai/whisper-large-v3",
                            qformer_num_hidden_layers=6 if cuda else 1, qformer_ffn_dim=3072 if cuda else 64)
    model = desta.DeSTA(cfg, whisper, llm, tok).train()
    report("adapter", f"{desta.count_parameters(model.connector):,} params", "official: 131,540,224" if cuda else "")
    opt = torch.optim.AdamW(model.connector.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01, fused=cuda)
    B = 12
    conv = [[{"role": "system", "content": desta.DEFAULT_SYSTEM},
             {"role": "user", "content": f"{desta.framed_audio()}\nDescribe the audio in detail."}]] * B
    response = " ".join(["The speaker sounds calm and speaks clearly in a quiet room."] * 15)
    batch = model.build_batch(conv, [["Hello there, this is a test recording of a single speaker."]] * B,
                              [response] * B, cap_transcription=True, max_len=300)
    batch = batch.to(dev)
    mel = torch.randn(B, 128, 3000, device=dev)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step():
        with amp:
            loss = model(mel, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    steps = 5 if cuda else 1
    t, _ = timed(lambda: [step() for _ in range(steps)], sync)
    tokens = int(batch.attn_mask.sum())
    n_llm = sum(p.numel() for p in llm.parameters())
    n_whisper = sum(p.numel() for p in whisper.parameters())
    flops = (4 * n_llm * tokens + 2 * n_whisper * desta.N_AUDIO_CTX * B) * steps
    report(f"train step, batch {B} x {batch.input_ids.shape[1]} tokens", f"{B * steps / t:.2f} samples/s",
           f"MFU {100 * flops / t / peak:.0f}% of measured peak"
           + (f", {100 * flops / t / 989e12:.0f}% of 989 TFLOP/s; peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""))
    (ROOT / "bench" / ("results_gpu.md" if cuda else "results_gpu_smoke.md")).write_text(
        f"device: {name}, torch {torch.__version__}\n\n| what | value | notes |\n|---|---:|---|\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
