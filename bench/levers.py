"""
Each decode lever of issue #16 on its own: SmolLM2-135M greedy decode tok/s with our engine, one process
per variant (inductor's settings are global), so that what each lever gives can be read off.

    python bench/levers.py fp32 16 eager|fused|compiled|compiled-fused|autotuned [--new 64]

  eager           generate.Engine as it runs uncompiled
  fused           + q/k/v and gate/up as one GEMM each (desta.Llama.fuse_projections)
  compiled        the decode step compiled, weights frozen in as constants (prepacked), projections separate
  compiled-fused  + fused projections
  autotuned       + each GEMM shape timed between oneDNN/MKL and inductor's own CPU kernel: what
                  generate.Engine(compile=True) does on CPU
Prints one line: tok/s, best of 3 runs after a warm-up run (which compiles).
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
from tools import cli  # noqa: E402
from bench import SMOL, chat_prompts  # noqa: E402  (bench/ is on sys.path as the script's folder)

ap = argparse.ArgumentParser()
ap.add_argument("dtype", choices=sorted(cli.DTYPES))
ap.add_argument("batch", type=int)
ap.add_argument("variant", choices=["eager", "fused", "compiled", "compiled-fused", "autotuned"])
ap.add_argument("--new", type=int, default=64)
a = ap.parse_args()

tok = desta.Tokenizer.from_pretrained(SMOL)
llm = desta.Llama.from_pretrained(SMOL, cli.DTYPES[a.dtype])
prompts = chat_prompts(tok, a.batch)
# autotuned is the engine's own compiled step; the other variants take its levers one at a time
eng = generate.Engine(llm, batch_size=a.batch, max_len=max(map(len, prompts)) + a.new, compile=a.variant == "autotuned")
if a.variant in ("fused", "compiled-fused"):
    llm.fuse_projections()
if a.variant.startswith("compiled"):
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    eng.decode_step = torch.compile(eng._decode_step)
run = lambda: eng.run(prompts, generate.Sampling(a.new))
t = time.perf_counter()
run()
first = time.perf_counter() - t
times = []
for _ in range(3):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
print(f"{a.dtype} batch {a.batch} {a.variant}: {a.batch * a.new / min(times):.1f} tok/s "
      f"(best of 3; slowest {a.batch * a.new / max(times):.1f}; first call {first:.0f} s)")
