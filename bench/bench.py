"""
make bench: one speed table from one run on this machine (CPU), tiny preset weights.

    python bench/bench.py [--only gen,selfgen,mel,train] [--quick]

  gen      SmolLM2-135M-Instruct fp32 greedy, 16 prompts of ~100 tokens x 128 new tokens, and batch 1:
           our engine vs transformers' generate (same weights, same prompts, same outputs checked)
  selfgen  256 self-generation rows with skewed answer lengths: continuous vs static batching
  mel      Whisper log-mel of 30 s clips: data.log_mel_spectrogram (batched torch) vs transformers'
           WhisperFeatureExtractor (the reference front end)
  train    tiny-preset training step (Whisper tiny.en + 2-layer Q-Former + SmolLM2): samples/s,
           tokens/s and where the time goes (Whisper, adapter, LLM forward, backward, optimizer)
Timings are wall clock, best of a few repeats, after a warm-up. Peak memory is the most the process's
resident memory (RSS) rose above its level just before that measurement (warm-up and repeats included),
or the CUDA allocator's peak where the work allocated on a GPU. A full run writes bench/results.md;
--quick and --only runs only print, so they never overwrite the committed table.
"""
import argparse
import datetime
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import desta  # noqa: E402
import generate  # noqa: E402

WEIGHTS = ROOT / "weights"
SMOL = WEIGHTS / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
WHISPER = WEIGHTS / "openai" / "whisper-tiny.en"
ROWS: list[str] = []
STATM = Path("/proc/self/statm")
COLUMNS = "| what | speed | peak memory | notes |\n|---|---:|---:|---|"


def rss():
    """Resident bytes now: statm's second field is resident pages."""
    return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """with PeakMemory() as m: ... ; m.text = peak increase over the level at entry, e.g. "123 MiB".
    ru_maxrss is a lifetime high-water mark and can't isolate one block, so a daemon thread samples RSS
    every 5 ms instead (torch ops release the GIL, so it keeps sampling while they run)."""

    def __enter__(self):
        self.text, self.cuda_base = "-", 0
        # only a CUDA context that exists already: creating one here would itself add to the RSS measured
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
        if STATM.exists():
            self.base = self.peak = rss()
            self.done = threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        if STATM.exists():
            self.done.set()
            self.thread.join()
            self.peak = max(self.peak, rss())
            self.text = f"{(self.peak - self.base) / 2**20:,.0f} MiB"
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # the GPU figure where the block used one
            torch.cuda.synchronize()
            gpu = torch.cuda.max_memory_allocated() - self.cuda_base
            if gpu > 0:
                self.text = f"{gpu / 2**20:,.0f} MiB CUDA"


def report(name, value, unit, note="", mem=None):
    line = f"| {name} | {value:,.1f} {unit} | {mem.text if mem else '-'} | {note} |"
    ROWS.append(line)
    print(line, flush=True)


def best_of(fn, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def chat_prompts(tok, n, words=70):
    """n chat prompts of roughly 100 tokens each, all different."""
    filler = ("the quick brown fox jumps over the lazy dog while the band plays on in the rain " * 8).split()
    return [tok.apply_chat_template([{"role": "user", "content": f"Story {i}: " + " ".join(filler[i:i + words])
                                      + " Continue the story."}]) for i in range(n)]


def bench_gen(quick):
    import transformers
    llm, tok = desta.Llama.from_pretrained(SMOL), desta.Tokenizer.from_pretrained(SMOL)
    ref = transformers.AutoModelForCausalLM.from_pretrained(SMOL, dtype=torch.float32).eval()
    new = 32 if quick else 128
    for batch in (16, 1):
        prompts = chat_prompts(tok, batch)
        with PeakMemory() as ours_mem:
            ours_t, ours = best_of(lambda: generate.generate(llm, prompts, max_new_tokens=new, batch_size=batch))
        T = max(map(len, prompts))
        ids = torch.tensor([[tok.pad_id] * (T - len(p)) + p for p in prompts])
        mask = (torch.arange(T)[None] >= torch.tensor([T - len(p) for p in prompts])[:, None]).long()
        with torch.no_grad(), PeakMemory() as hf_mem:
            hf_t, hf = best_of(lambda: ref.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                                    min_new_tokens=new, pad_token_id=tok.pad_id))
        n_ours = sum(map(len, ours))
        same = sum(o == h[:len(o)] for o, h in zip(ours, hf[:, T:].tolist()))
        report(f"generate, batch {batch}, ~{len(prompts[0])} prompt + {new} new tokens: ours", n_ours / ours_t, "tok/s",
               f"{same}/{batch} sequences identical to transformers", ours_mem)
        report(f"generate, batch {batch}: transformers generate", batch * new / hf_t, "tok/s",
               f"ours is {n_ours / ours_t / (batch * new / hf_t):.2f}x", hf_mem)


def bench_selfgen(quick):
    import random
    llm, tok = desta.Llama.from_pretrained(SMOL), desta.Tokenizer.from_pretrained(SMOL)
    n = 64 if quick else 256
    rng = random.Random(0)
    prompts = chat_prompts(tok, n, words=40)
    # skewed answer lengths, as self-generation has: most short, a few long. A per-prompt cap stands in
    # for each answer's own stop token, so both schedules do exactly the same useful work.
    caps = [rng.choice([8, 12, 16, 24, 32, 48, 96, 128]) for _ in range(n)]
    for continuous in (True, False):
        eng = generate.Engine(llm, batch_size=16, max_len=max(map(len, prompts)) + 128)
        with PeakMemory() as mem:
            dt, out = best_of(lambda: eng.run(prompts, generate.Sampling(128), continuous=continuous, max_new=caps), 1)
        llm.drop_cache()
        assert sum(map(len, out)) == sum(caps)
        report(f"self-generation {n} rows, skewed lengths, {'continuous' if continuous else 'static'} batching",
               sum(caps) / dt, "tok/s", f"{n / dt:.2f} rows/s", mem)


def bench_mel(quick):
    import numpy as np
    import transformers
    n = 8 if quick else 32
    audio = np.random.default_rng(0).standard_normal((n, 480000)).astype(np.float32) * 0.1
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    with PeakMemory() as ours_mem:
        ours_t, ours = best_of(lambda: data.log_mel_spectrogram(audio, 80))
    with PeakMemory() as ref_mem:
        ref_t, ref = best_of(lambda: fe(list(audio), sampling_rate=16000, return_tensors="np")["input_features"])
    err = float(np.abs(ours.numpy() - ref).max())
    report(f"log-mel, {n} x 30 s: data.log_mel_spectrogram", n * 30 / ours_t, "s audio / s", f"max abs diff {err:.1e}", ours_mem)
    report(f"log-mel, {n} x 30 s: transformers WhisperFeatureExtractor", n * 30 / ref_t, "s audio / s",
           f"ours is {ref_t / ours_t:.1f}x", ref_mem)


def bench_train(quick):
    import numpy as np
    import train  # the tiny preset's adapter: 32 queries on taps 1 and 3, the padding masked
    cfg = train.model_config(train.parse_config([f"--llm={SMOL}", f"--encoder={WHISPER}"]))
    model = desta.DeSTA.from_config(cfg).train()
    opt = torch.optim.AdamW(model.connector.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)
    B = 4 if quick else 8
    noise = np.random.default_rng(0).standard_normal((B, 4 * 16000)).astype(np.float32) * 0.1  # 4 s clips,
    mel = data.log_mel_spectrogram(np.stack([data.pad_or_trim(x) for x in noise]))       # padded to 30 s
    conv = [[{"role": "system", "content": desta.DEFAULT_SYSTEM},
             {"role": "user", "content": "<start_audio><|AUDIO|><end_audio>\nDescribe the speaker's voice."}]] * B
    batch = model.build_batch(conv, [["The train leaves at noon."]] * B,
                              ["The speaker is a woman with a British accent, speaking quickly and brightly."] * B)
    parts = {}

    def step():
        t0 = time.perf_counter()
        with torch.no_grad():
            _, taps = model.whisper(mel, taps=model.taps)
        t1 = time.perf_counter()
        audio = model.connector([t.float() for t in taps], desta.audio_frame_mask(mel, taps[0].shape[1]))
        t2 = time.perf_counter()
        h = model.llm.hidden(embeds=model.embed(batch, audio), attn_mask=batch.attn_mask)
        loss = desta.chunked_cross_entropy(model.llm.lm_head, h[:, :-1], batch.labels[:, 1:])
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        for k, v in zip(("Whisper forward", "adapter forward", "LLM forward + loss", "backward", "optimizer"),
                        (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            parts[k] = v

    with PeakMemory() as mem:  # the warm-up step included: it allocates the AdamW state and the grads
        step()
        dt, _ = best_of(step)
    tokens = int(batch.attn_mask.sum())
    report(f"train step, tiny preset, batch {B} x {batch.input_ids.shape[1]} tokens, 4 s clips", B / dt, "samples/s",
           f"{tokens / dt:,.0f} tokens/s; " + ", ".join(f"{k} {100 * v / dt:.0f}%" for k, v in parts.items()), mem)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="gen,selfgen,mel,train")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if not SMOL.is_dir():
        sys.exit("run `python data.py weights --preset tiny` first (make bench does)")
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    cpu = ", ".join([f"{os.cpu_count()} cores", "avx512" if "avx512f" in flags else "no avx512",
                     "AMX" if "amx_tile" in flags else "no AMX"])
    cmd = " ".join(["python bench/bench.py"] + sys.argv[1:])
    head = (f"machine: {platform.processor() or platform.machine()} ({cpu}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; `{cmd}`, {datetime.date.today()}")
    print(head + "\n\n" + COLUMNS)
    for name in a.only.split(","):
        globals()[f"bench_{name}"](a.quick)
    if a.quick or a.only != ap.get_default("only"):  # partial tables must not replace the committed one
        print("\n(--quick/--only run: bench/results.md left as it is)")
        return
    (ROOT / "bench" / "results.md").write_text(head + "\n\n" + COLUMNS + "\n" + "\n".join(ROWS) + "\n")


if __name__ == "__main__":
    main()
