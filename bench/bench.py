"""
make bench: one speed table from one run on this machine (CPU), tiny preset weights.

    python bench/bench.py [--only gen,selfgen,mel,train] [--quick]

  gen      SmolLM2-135M-Instruct greedy, 16 prompts of ~100 tokens x 128 new tokens, and batch 1: our
           engine (eager, and with its decode step compiled) vs transformers' generate, same weights and
           prompts, for each precision the machine runs well (fp32; bf16 where cli.pick_dtype picks it);
           the outputs compared (identical sequences; share of tokens before the first difference)
  selfgen  self-generation at the picked precision, continuous vs static batching: 256 rows of ~70-token
           prompts with skewed answers, 128 rows of ~400-token prompts with 4-32-token answers, and 256 rows
           at make demo's settings (batch 64, two questions per ~110-token prefix, answers of 6-24 tokens),
           there also with the compiled decode step
  mel      Whisper log-mel of 30 s clips: data.log_mel_spectrogram (batched torch) vs transformers'
           WhisperFeatureExtractor (the reference front end)
  train    tiny-preset training step (Whisper tiny.en + 2-layer Q-Former + SmolLM2), for each precision:
           Whisper every step vs the taps from the feature cache; samples/s, tokens/s, where the time goes
Timings are wall clock, best of a few repeats, after a warm-up. Peak memory is the most the process's
resident memory (RSS) rose above its level just before that measurement (warm-up and repeats included),
or the CUDA allocator's peak where the work allocated on a GPU. A full run writes bench/results.md;
--quick and --only runs only print, so they never overwrite the committed table.
"""
import argparse
import contextlib
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
from tools import cli  # noqa: E402

WEIGHTS = ROOT / "weights"
SMOL = WEIGHTS / "HuggingFaceTB" / "SmolLM2-135M-Instruct"
WHISPER = WEIGHTS / "openai" / "whisper-tiny.en"
ROWS: list[str] = []
PRECISIONS, PICKED, PICKED_DTYPE = [("fp32", torch.float32)], "fp32", torch.float32  # set in main()
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


def chat_prompts(tok, n, words=70, repeat=1):
    """n chat prompts of roughly 30 + 1.0 * words * repeat tokens each, all different."""
    filler = ("the quick brown fox jumps over the lazy dog while the band plays on in the rain " * 40).split()
    return [tok.apply_chat_template([{"role": "user", "content": f"Story {i}: " + " ".join(filler[i:i + words] * repeat)
                                      + " Continue the story."}]) for i in range(n)]


def precisions():
    """-> ([(name, dtype)], picked name, why): fp32 always, and bf16 where it beats fp32 on this machine
    (cli.pick_dtype, the check every script makes); a CPU without fast bf16 would only time its emulation."""
    picked, why = cli.pick_dtype("cpu")
    out = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if picked == torch.bfloat16 else [])
    return out, {dtype: name for name, dtype in cli.DTYPES.items()}[picked], why


def agreement(ours, ref):
    """(sequences identical, mean share of each sequence's tokens before the first difference)."""
    same, prefix = 0, []
    for o, r in zip(ours, ref):
        n = generate.common_prefix(o, r)
        same += n == len(o) == len(r)
        prefix.append(n / max(1, len(r)))
    return same, sum(prefix) / len(prefix)


def memory_bandwidth() -> float:
    """Bytes/s of a large tensor copy (read + write), best of 3: the ceiling of a decode step that reads
    every weight once."""
    a = torch.ones(2**28, dtype=torch.float32)  # 1 GiB, far above any cache
    b = torch.empty_like(a)
    dt, _ = best_of(lambda: b.copy_(a), 3)
    return 2 * a.numel() * a.element_size() / dt


def bench_gen(quick):
    import transformers
    tok = desta.Tokenizer.from_pretrained(SMOL)
    new = 32 if quick else 128
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (1 GiB copy, read + write): {bandwidth / 1e9:.1f} GB/s", flush=True)
    for name, dtype in PRECISIONS:
        llm = desta.Llama.from_pretrained(SMOL, dtype)
        ref = transformers.AutoModelForCausalLM.from_pretrained(SMOL, dtype=dtype).eval()
        # a decode step reads every weight once (the tied embedding as the LM head): at batch 1 that is
        # all the work, so the copy bandwidth bounds tokens/s for ours and transformers alike
        weight_bytes = sum(p.numel() * p.element_size() for p in llm.parameters())
        ceiling = bandwidth / weight_bytes
        for batch in (16, 1):
            prompts = chat_prompts(tok, batch)
            T = max(map(len, prompts))
            ids = torch.tensor([[tok.pad_id] * (T - len(p)) + p for p in prompts])
            mask = (torch.arange(T)[None] >= torch.tensor([T - len(p) for p in prompts])[:, None]).long()
            with torch.no_grad(), PeakMemory() as hf_mem:
                hf_t, hf = best_of(lambda: ref.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                                        min_new_tokens=new, pad_token_id=tok.pad_id))
            hf_rate = batch * new / hf_t
            hf = hf[:, T:].tolist()
            # the compiled engine fuses llm's projections in place, so after batch 16 the eager batch-1 row runs
            # fused too (in eager mode fusing is within noise: bench/levers.py)
            for compiled in (False, True):
                # one engine for the warm-up and the repeats: a new engine's cache is a new tensor, which a
                # compiled decode step (weights frozen in as constants) would be recompiled for
                eng = generate.Engine(llm, batch_size=batch, max_len=T + new, compile=compiled)
                run = lambda: eng.run(prompts, generate.Sampling(new))
                if compiled:  # the first call compiles the decode step: not part of the rate
                    t = time.perf_counter()
                    run()
                    compile_s = time.perf_counter() - t
                with PeakMemory() as ours_mem:
                    ours_t, ours = best_of(run)
                same, prefix = agreement(ours, hf)
                rate = sum(map(len, ours)) / ours_t
                label = "ours, compiled decode step" if compiled else "ours"
                llm.drop_cache()
                report(f"generate {name}, batch {batch}, ~{len(prompts[0])} prompt + {new} new tokens: {label}", rate,
                       "tok/s", f"**{rate / hf_rate:.2f}x** transformers; {same}/{batch} sequences identical, "
                       f"{100 * prefix:.0f}% of tokens before the first difference"
                       + (f"; first call (compiles) {compile_s:.0f} s" if compiled else "")
                       + (f"; {100 * rate / ceiling:.0f}% of the bandwidth ceiling {ceiling:.0f} tok/s "
                          f"({weight_bytes / 2**20:,.0f} MiB of weights a step)" if batch == 1 else ""), ours_mem)
            report(f"generate {name}, batch {batch}: transformers generate", hf_rate, "tok/s",
                   f"{100 * hf_rate / ceiling:.0f}% of the bandwidth ceiling" if batch == 1 else "", hf_mem)
        del llm, ref


def bench_selfgen(quick):
    """Continuous vs static batching at the picked precision, in three regimes: mid-length prompts with
    skewed answers (as the general pools give), the paper's long-prompt / short-answer mix, and make demo's
    settings (batch 64, two questions per shared prefix, short answers; also with the compiled decode step)."""
    import random
    llm, tok = desta.Llama.from_pretrained(SMOL, PICKED_DTYPE), desta.Tokenizer.from_pretrained(SMOL)
    n = 64 if quick else 256
    rng = random.Random(0)
    regimes = [("~70-token prompts, answers 8-128 tokens", chat_prompts(tok, n, words=40),
                [rng.choice([8, 12, 16, 24, 32, 48, 96, 128]) for _ in range(n)]),
               ("~400-token prompts, answers 4-32 tokens", chat_prompts(tok, n // 2, words=70, repeat=5),
                [rng.choice([4, 8, 12, 16, 24, 32]) for _ in range(n // 2)])]
    # make demo's settings: batch 64, two questions per clip after one shared ~110-token prefix (system prompt +
    # seed description; prefilled once, copied), answers of at most 24 tokens
    filler = "the quick brown fox jumps over the lazy dog while the band plays on in the rain".split() * 8
    pairs = [tok.apply_chat_template([{"role": "user", "content": f"Clip {i}: {' '.join(filler[i % 16:i % 16 + 80])}{q}"}])
             for i in range(n // 2) for q in (" Is the speaker a man or a woman?", " Identify the gender of the voice.")]
    regimes.append(("make demo's settings (2 questions per ~110-token prefix, answers 6-24 tokens), batch 64", pairs,
                    [rng.choice([6, 8, 10, 12, 16, 24]) for _ in range(len(pairs))]))
    for what, prompts, caps in regimes:
        # a per-prompt cap stands in for each answer's own stop token, so both schedules do the same work
        batch = 64 if "batch 64" in what else 16
        for continuous, compiled in ((True, False), (False, False), (True, True)):  # compiling fuses the weights: last
            if compiled and batch != 64:
                continue
            eng = generate.Engine(llm, batch_size=batch, max_len=max(map(len, prompts)) + 128, compile=compiled)
            run = lambda: eng.run(prompts, generate.Sampling(128), continuous=continuous, max_new=caps)
            with PeakMemory() as mem:
                first, out = best_of(run, 1)  # compiled: the first call compiles (once per selfgen job)
                dt, out = best_of(run, 1) if compiled else (first, out)
            llm.drop_cache()
            assert sum(map(len, out)) == sum(caps)
            kind = ("continuous" if continuous else "static") + (" batching, compiled decode step" if compiled else " batching")
            report(f"self-generation {PICKED}, {len(prompts)} rows, {what}, {kind}", len(prompts) / dt, "rows/s",
                   f"{sum(caps) / dt:,.0f} new tok/s" + (f"; compiling took {first - dt:.0f} s more on the first call" if compiled else ""), mem)


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
    """The tiny preset's training step (32 queries on taps 1 and 3, the padding masked, Whisper cropped to
    the clip as train.py runs it): Whisper run every step (the paper's streamed recipe) vs the taps read
    from the feature cache (data.FeatureCache), for each precision; bf16 = bf16 backbones under autocast."""
    import numpy as np
    import train
    B = 4 if quick else 8
    noise = np.random.default_rng(0).standard_normal((B, 4 * 16000)).astype(np.float32) * 0.1  # 4 s clips,
    mel = data.log_mel_spectrogram(np.stack([data.pad_or_trim(x) for x in noise]))       # padded to 30 s
    conv = [[{"role": "system", "content": desta.DEFAULT_SYSTEM},
             {"role": "user", "content": f"{desta.framed_audio()}\nDescribe the speaker's voice."}]] * B
    for name, dtype in PRECISIONS:
        cfg = train.model_config(train.parse_config([f"--llm_model_id={SMOL}", f"--encoder_model_id={WHISPER}"]))
        torch.manual_seed(0)
        model = desta.DeSTA.from_config(cfg, dtype=dtype).train()
        opt = torch.optim.AdamW(model.connector.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.01)
        batch = model.build_batch(conv, [["The train leaves at noon."]] * B,
                                  ["The speaker is a woman with a British accent, speaking quickly and brightly."] * B)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == torch.bfloat16 else contextlib.nullcontext()
        with torch.no_grad(), amp:
            cached = model.encoder_features(mel)  # what the feature cache holds for these clips
        for source in ("streamed", "cached"):
            parts = {}

            def step():
                t0 = time.perf_counter()
                with torch.no_grad(), amp:
                    feats = cached if source == "cached" else model.encoder_features(mel)
                t1 = time.perf_counter()
                with amp:
                    loss = model(feats, batch)
                t2 = time.perf_counter()
                loss.backward()
                t3 = time.perf_counter()
                opt.step()
                opt.zero_grad(set_to_none=True)
                t4 = time.perf_counter()
                parts.update({"Whisper": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3})

            with PeakMemory() as mem:  # the warm-up step included: it allocates the AdamW state and the grads
                step()
                dt, _ = best_of(step)
            tokens = int(batch.attn_mask.sum())
            what = "Whisper every step" if source == "streamed" else "taps from the feature cache"
            report(f"train step {name}, tiny preset, batch {B} x {batch.input_ids.shape[1]} tokens, 4 s clips, {what}",
                   B / dt, "samples/s", f"{tokens / dt:,.0f} tokens/s; "
                   + ", ".join(f"{k} {100 * v / dt:.0f}%" for k, v in parts.items() if v > 1e-4), mem)


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
    global PRECISIONS, PICKED, PICKED_DTYPE
    PRECISIONS, PICKED, why = precisions()
    PICKED_DTYPE = dict(PRECISIONS)[PICKED]
    head += f"\n\nprecision the project picks on this machine: **{PICKED}** ({why})"
    print(head + "\n\n" + COLUMNS)
    for name in a.only.split(","):
        globals()[f"bench_{name}"](a.quick)
    if a.quick or a.only != ap.get_default("only"):  # partial tables must not replace the committed one
        print("\n(--quick/--only run: bench/results.md left as it is)")
        return
    (ROOT / "bench" / "results.md").write_text(head + "\n\n" + COLUMNS + "\n" + "\n".join(ROWS) + "\n")


if __name__ == "__main__":
    main()
