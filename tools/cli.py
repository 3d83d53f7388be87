"""
What the scripts' command lines share, none of it the method:

  * the precision this machine runs best: bf16 on a GPU or on a CPU whose bf16 matmul beats fp32 (AMX,
    AVX-512 bf16), else fp32, decided at run time and said once (pick_dtype);
  * torchrun's rank, world size and device (dist_setup, device_for);
  * argparse types that name the range a number must lie in, and `--key=value` overrides of a dataclass
    config in the manner of nanoGPT's configurator (train.py's only command-line parser).

The scripts import this module inside their command-line functions, never at module level (DESIGN.md).
"""
import argparse
import os
import sys
import time
from dataclasses import fields

import torch

# -----------------------------------------------------------------------------------------------
# The machine: the precision picked at run time, the GPU's peak
# -----------------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BF16_MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much on the CPU to be worth its rounding


def bf16_matmul_speedup(n: int = 1024, budget_s: float = 0.5) -> float:
    """fp32 time / bf16 time of an n x n matmul on this CPU (best of a few, bounded: a CPU that emulates
    bf16 is 10x+ slower and is stopped after one product)."""
    def best(dtype):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        times, t_end = [], time.perf_counter() + budget_s / 2
        while len(times) < 5 and (not times or time.perf_counter() < t_end):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)
    return best(torch.float32) / best(torch.bfloat16)


def pick_dtype(device, choice: str = "auto", say: str | None = None) -> tuple[torch.dtype, str]:
    """The backbones' precision: `choice` if given; auto = bf16 on a GPU, and on a CPU whose bf16 matmul
    beats fp32 (measured 3.8-6x with AMX, 4.1x with AVX-512 bf16 alone), fp32 elsewhere (without bf16
    instructions it is emulated, many times slower). -> (dtype, why).
    say: print the choice to stderr under this label."""
    cap = torch.backends.cpu.get_cpu_capability()
    if choice != "auto":
        if choice not in DTYPES:
            raise ValueError(f"dtype {choice!r}: one of auto, {', '.join(DTYPES)}")
        dtype, why = DTYPES[choice], "requested"
    elif str(device).startswith("cuda"):
        dtype, why = torch.bfloat16, "GPU"
    elif "AVX512" not in cap and "AMX" not in cap:  # no bf16 instructions at all: emulated, many times slower
        dtype, why = torch.float32, f"CPU has {cap}, no bf16 matmul instructions"
    else:
        r = bf16_matmul_speedup()
        dtype = torch.bfloat16 if r >= BF16_MIN_SPEEDUP else torch.float32
        why = f"bf16 matmul {r:.2f}x fp32 on this CPU ({cap}; bf16 needs >= {BF16_MIN_SPEEDUP}x)"
    if say:
        print(f"{say}: {str(dtype).removeprefix('torch.')} ({why})", file=sys.stderr)
    return dtype, why


def precision_arguments(ap: argparse.ArgumentParser, encoder: bool = True) -> None:
    """--dtype (the LLM's precision, or auto: pick_dtype) and --encoder-dtype (Whisper's and the adapter's)."""
    ap.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                    help="the LLM's precision; auto: bf16 on a GPU or a CPU whose bf16 matmul beats fp32 (e.g. AMX), "
                    "else fp32")
    if encoder:
        ap.add_argument("--encoder-dtype", choices=sorted(DTYPES), default="fp32",
                        help="Whisper's precision (encoder and ASR); the authors run it in fp32, the LLM in bf16")


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, for MFU (SPEC 11)


def peak_flops(tflops: float = 0.0) -> float:
    """The GPU's dense bf16 peak in FLOP/s: `tflops` if given, else from the device name (0: unknown)."""
    if tflops:
        return tflops * 1e12
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((v * 1e12 for k, v in PEAK_BF16_TFLOPS.items() if k in name), 0.0)


# -----------------------------------------------------------------------------------------------
# torchrun
# -----------------------------------------------------------------------------------------------


def dist_setup() -> tuple[int, int]:
    """(rank, world) under torchrun; (0, 1) for a plain `python generate.py`."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world


def device_for(rank: int) -> str:
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    return "cpu"


def barrier(world: int) -> None:
    """Every rank waits here for the others (nothing to wait for in a single process)."""
    if world > 1:
        torch.distributed.barrier()


def check_ranks_agree(value: float, world: int, step: int) -> float:
    """train.py --check_sync: every rank holds the same adapter checksum after a step, or the run stops."""
    if world > 1:
        got = [None] * world
        torch.distributed.all_gather_object(got, value)
        if len(set(got)) != 1:
            raise SystemExit(f"adapter weights differ across ranks after step {step}: {got}")
    return value


# -----------------------------------------------------------------------------------------------
# Arguments
# -----------------------------------------------------------------------------------------------


def bounded(kind, low, high=None):
    """argparse type: a number of `kind` in [low, high]. Counts of 0 would do nothing or crash (batch size,
    new tokens), 0 prompts of a pool means none (--k), top-p is a probability, a temperature below 0 means
    nothing. The error names the range; a non-number gets argparse's "invalid int value"."""
    def parse(text):
        v = kind(text)
        if v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}" if high is None else
                                             f"must be in [{low}, {high}], got {v}")
        return v
    parse.__name__ = kind.__name__
    return parse


at_least_one, at_least_zero = bounded(int, 1), bounded(int, 0)
probability, non_negative = bounded(float, 0, 1), bounded(float, 0)  # --top-p; --temperature (0: greedy)


def stop_text(text: str) -> str:
    """argparse type for --stop: a shell passes '\\n' as two characters. An empty stop would cut every answer
    to nothing."""
    stop = text.replace("\\n", "\n").replace("\\t", "\t")
    if not stop:
        raise argparse.ArgumentTypeError("must not be empty")
    return stop


BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def parse_value(key: str, value: str | None, default):
    """One --key=value as the type of the field's default; a value that does not parse is an error
    naming the flag (a bare --key is only a boolean's way to say true)."""
    if isinstance(default, bool):
        if value is None:
            return True
        if value.lower() not in BOOLEANS:
            raise SystemExit(f"--{key}={value}: expected a boolean (true/false, 1/0, yes/no, on/off)")
        return BOOLEANS[value.lower()]
    if value is None:
        raise SystemExit(f"--{key} needs a value: --{key}=VALUE")
    try:
        if isinstance(default, tuple):
            parsed = tuple(float(x) for x in value.split(","))
            if len(parsed) != len(default):
                raise ValueError
            return parsed
        return type(default)(value)
    except ValueError:
        if isinstance(default, tuple):
            want, example = f"{len(default)} comma-separated numbers", ",".join(map(str, default))
        else:
            want, example = {int: "an integer", float: "a number"}.get(type(default), type(default).__name__), default
        raise SystemExit(f"--{key}={value}: expected {want}, e.g. --{key}={example}") from None


def parse_overrides(cls, argv: list[str], presets: dict[str, dict], default_preset: str,
                    renamed: dict[str, str] | None = None) -> dict:
    """--preset=NAME first, then --key=value overrides, each parsed as the type of the field's default in the
    dataclass `cls`; unknown keys are errors. renamed: earlier names still read. -> the fields' values."""
    bad = [a for a in argv if not a.startswith("--")]
    if bad:
        raise SystemExit(f"arguments must look like --key=value, got {bad}")
    args = dict(a[2:].split("=", 1) if "=" in a else (a[2:], None) for a in argv)
    preset = args.pop("preset", default_preset)
    if preset not in presets:
        raise SystemExit(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    values = dict(presets[preset])
    known = {f.name for f in fields(cls)}
    for k, v in args.items():
        name = (renamed or {}).get(k, k)
        if name not in known:
            raise SystemExit(f"unknown config key --{k} (known: {', '.join(sorted(known))})")
        values[name] = parse_value(k, v, getattr(cls, name))  # the error names the flag as typed
    return values
