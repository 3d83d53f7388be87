"""
What long jobs keep on disk so that the same command, run again, goes on where it stopped, and refuses to
mix runs:

  * train.py's checkpoints: ckpt-<step>/ holds the adapter in the official layout, the optimizer, the
    schedule's position and every rank's RNG state; a folder exists only once complete (written under a
    temporary name, then renamed), and a broken one is named and skipped;
  * the settings a self-generated manifest was written with (<out>.settings.json), so a rerun with other
    settings cannot append a second kind of row.
"""
import json
import os
import pickle
import random
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import data
import desta
from tools import cli

# -----------------------------------------------------------------------------------------------
# Training checkpoints
# -----------------------------------------------------------------------------------------------


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def checkpoint_problem(ckpt: Path, world: int) -> str | None:
    """Why a ckpt-* folder cannot be resumed from (a file lost after the atomic rename), or None."""
    need = ("config.json", "model.safetensors", "train_state.pt", *(f"rng-{r}.pt" for r in range(world)))
    missing = [f for f in need if not (ckpt / f).is_file()]
    return f"missing {', '.join(missing)}" if missing else None


def complete_checkpoints(out_dir: Path, world: int, warn: bool = False) -> list[Path]:
    """The ckpt-* folders a run can resume from, oldest first; broken ones are named (warn) and left out."""
    done = []
    for p in sorted(out_dir.glob("ckpt-*")):
        why = checkpoint_problem(p, world)
        if why is None:
            done.append(p)
        elif warn:
            print(f"skipping broken checkpoint {p} ({why})", file=sys.stderr, flush=True)
    return done


def load_state(path: Path):
    """torch.load of a checkpoint's own pickles, naming the file when it is truncated or corrupt."""
    try:
        return torch.load(path, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise desta.CheckpointError(f"{path}: cannot be read ({e}); delete {path.parent} to resume from the "
                                    f"checkpoint before it") from None


def latest_checkpoint(out_dir: Path, world: int = 1, warn: bool = True) -> Path | None:
    done = complete_checkpoints(out_dir, world, warn)
    return done[-1] if done else None


def save_checkpoint(model, opt, step, epoch, batch_in_epoch, cfg, rank, world, out_dir: Path,
                    rows: int | None = None) -> None:
    """Every rank writes its RNG state into a temp folder; rank 0 writes the rest and renames it.
    rows: the training manifest's row count, checked on resume."""
    tmp, final = out_dir / f".tmp-ckpt-{step:08d}", out_dir / f"ckpt-{step:08d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    cli.barrier(world)
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    cli.barrier(world)
    if rank == 0:
        model.save_pretrained(tmp)
        torch.save({"optimizer": opt.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                    "world": world, "config": asdict(cfg), "rows": rows}, tmp / "train_state.pt")
        # a ckpt folder of this step can only be a broken one (a complete one would have been resumed
        # from): os.replace cannot overwrite a non-empty folder, so it goes first
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # a checkpoint folder exists only once complete
        for old in complete_checkpoints(out_dir, world)[:-cfg.keep_last]:  # broken ones are not kept ones
            shutil.rmtree(old)
    cli.barrier(world)


# -----------------------------------------------------------------------------------------------
# Self-generation settings
# -----------------------------------------------------------------------------------------------


def check_selfgen_settings(out: Path, settings: dict, write: bool) -> None:
    """Rows in one output come from one set of generation settings: a rerun with others (another
    --max-new-tokens, --temperature, LLM...) would append a second kind of row to the first, or call a
    file written with other settings complete. The first run records them in <out>.settings.json."""
    path = out.with_name(out.name + ".settings.json")
    have_rows = out.is_file() or any(out.parent.glob(f"{out.name}.part*"))
    if path.is_file() and have_rows:  # settings of a run that wrote nothing bind nobody
        saved = json.loads(path.read_text(encoding="utf-8"))
        diff = [f"{k}={saved[k]!r} (now {v!r})" for k, v in settings.items() if k in saved and saved[k] != v]
        if diff:
            raise data.ManifestError(f"{out} was generated with other settings: {'; '.join(diff)} (from {path}). "
                                     f"Rerun with those settings, or write to another --out")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2), encoding="utf-8")
        os.replace(tmp, path)
