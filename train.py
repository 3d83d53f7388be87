"""
train.py: train the DeSTA2.5-Audio adapter on self-generated targets.

    torchrun --standalone --nproc_per_node=8 train.py --preset=desta25          # the paper's recipe
    python train.py                                                              # tiny preset, one CPU process
    python train.py --preset=tiny --max_steps=200 --lr=3e-4                      # any field: --key=value

Only the Q-Former adapter trains (SPEC 8). Whisper runs under no_grad; the LLM is frozen but
differentiable with respect to its inputs (the audio vectors), never to its own weights. DDP averages
the adapter's gradients (NCCL on GPU, gloo on CPU). A restart with the same command resumes from the
latest complete checkpoint in out_dir: model, optimizer, schedule, every rank's RNG, data position.
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import data
import desta
import generate

# -----------------------------------------------------------------------------------------------
# Config
# -----------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    # data and backbones (ids resolve to weights/<id>; see desta.resolve_weights); the model's fields carry the
    # names of the official config.json (desta.DeSTAConfig)
    llm_model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    encoder_model_id: str = "openai/whisper-tiny.en"
    train_manifest: str = "data_tiny/train.jsonl"
    val_manifest: str = "data_tiny/validation.jsonl"
    data_root: str = "data_tiny"
    out_dir: str = "runs/tiny"
    # adapter (SPEC 4)
    qformer_num_hidden_layers: int = 2
    qformer_ffn_dim: int = 3072
    prompt_size: int = 64
    target_layer_ids: str = ""    # the taps: encoder layers the Q-Former reads, e.g. "1,3"; "" = every quarter
    mask_audio_padding: bool = False  # Q-Former reads only the clip's frames, not the 30 s padding (DeSTAConfig)
    crop_encoder_input: bool = False  # Whisper too reads only the clip, rounded up to whole seconds (DeSTAConfig)
    feature_cache: str = ""       # cached encoder taps (data.FeatureCache), relative to data_root; "" = stream audio
    # optimisation (SPEC 8)
    lr: float = 1e-4
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.01
    proj_lr_scale: float = 1.0    # the adapter's projection into the LLM learns at lr x this (bench/exp4_tiny.md)
    warmup_steps: int = 5000
    min_lr: float = 0.0
    max_steps: int = 0            # 0: derive from epochs
    epochs: int = 5
    grad_clip: float = 1.0
    batch_size: int = 12          # per rank, per micro-step
    global_batch: int = 96        # micro-steps are accumulated up to this many samples
    max_seq_len: int = 300        # training rows are cut here (SPEC 5)
    val_max_seq_len: int = 512
    seed: int = 42
    # machinery
    dtype: str = "auto"           # backbones: auto = bf16 on a GPU or a CPU with fast bf16 matmul, else fp32 (tools/cli.py)
    autocast: str = "auto"        # auto = bf16 autocast when the backbones are bf16; "none" or "bf16" to force
    num_workers: int = 2
    compile: bool = False
    checkpoint_layers: bool = False
    loss_chunk: int = 1024
    use_lora: bool = False        # the paper's ablation C1/C2: LoRA on the LLM's q/k/v as well
    # visibility and safety
    log_every: int = 10
    eval_every: int = 500
    eval_batches: int = 20
    eval_samples: int = 3
    eval_max_new_tokens: int = 192
    save_every: int = 1000
    keep_last: int = 3
    max_skip_rate: float = 0.05   # stop when more than this fraction of clips is unreadable ...
    skip_check_after: int = 100   # ... once this many have been seen
    check_sync: bool = False      # all-gather an adapter checksum every step and stop if ranks differ
    wandb: str = ""               # a project name enables wandb logging, if installed
    peak_tflops: float = 0.0      # the GPU's dense bf16 peak for MFU; 0 = from the device name (H100/H200/A100)
    allow_changes: bool = False   # resume even where the settings differ from the checkpoint's (see RESUME_FREE)
    init_adapter: str = ""        # start from this adapter folder (official layout: a released DeSTA2.5 model or
                                  # an earlier run's ckpt-*) instead of a fresh one; a fresh optimizer and schedule


# settings a resumed run may change: they decide what is logged, evaluated and kept, and how fast it
# runs, not which numbers it computes. Any other difference (data, batch, schedule, model) would make
# the resumed run a different one that silently continues the old one's checkpoint.
RESUME_FREE = {"out_dir", "val_manifest", "num_workers", "compile", "checkpoint_layers", "log_every", "eval_every",
               "eval_batches", "eval_samples", "eval_max_new_tokens", "save_every", "keep_last", "max_skip_rate",
               "skip_check_after", "check_sync", "wandb", "peak_tflops", "allow_changes", "loss_chunk"}


def resume_changes(saved: dict, cfg: TrainConfig, saved_rows: int | None, rows: int) -> list[str]:
    """What differs between a checkpoint's training settings (and manifest size) and this run's."""
    now, saved = asdict(cfg), {RENAMED.get(k, k): v for k, v in saved.items()}  # older checkpoints: older names
    changes = [f"{k}={saved[k]!r} (now {now[k]!r})" for k in now
               if k in saved and k not in RESUME_FREE and saved[k] != now[k]]
    if saved_rows is not None and saved_rows != rows:
        changes.append(f"{saved_rows} manifest rows (now {rows})")
    return changes


PRESETS = {
    # small model, small data, one CPU: a short warmup and a higher learning rate; 32 queries on 2 taps
    # (1.56x the samples/s of 64 on all 4); Whisper and the Q-Former read only the clip's frames
    # (DeSTAConfig.crop_encoder_input), and the taps come from the feature cache (computed once)
    "tiny": dict(lr=1e-3, warmup_steps=10, epochs=1, batch_size=8, global_batch=16, num_workers=1,
                 prompt_size=32, target_layer_ids="1,3", mask_audio_padding=True, crop_encoder_input=True,
                 feature_cache=data.FEATURES_DIR,
                 eval_every=100, eval_max_new_tokens=48, save_every=100),
    "desta25": dict(llm_model_id="DeSTA-ntu/Llama-3.1-8B-Instruct", encoder_model_id="openai/whisper-large-v3",
                    train_manifest="data/train.jsonl", val_manifest="data/validation.jsonl", data_root="data",
                    out_dir="runs/desta25", qformer_num_hidden_layers=6, num_workers=6, eval_every=5000, save_every=5000),
}


# earlier names of fields, still read on the command line
RENAMED = {"qformer_layers": "qformer_num_hidden_layers", "taps": "target_layer_ids", "lora": "use_lora",
           "llm": "llm_model_id", "encoder": "encoder_model_id"}
# the smallest value each field may take (more would be a silent 0-step run or a division by zero)
MINIMUM = dict(batch_size=1, global_batch=1, epochs=1, max_steps=0, warmup_steps=0, num_workers=0, log_every=1,
               eval_every=1, eval_batches=0, eval_samples=0, eval_max_new_tokens=1, save_every=1, keep_last=1,
               max_seq_len=1, val_max_seq_len=1, loss_chunk=1, qformer_num_hidden_layers=1, qformer_ffn_dim=1,
               prompt_size=1, skip_check_after=0)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Values no run can use are errors, before any model loads."""
    for key, low in MINIMUM.items():
        if getattr(cfg, key) < low:
            raise SystemExit(f"--{key}={getattr(cfg, key)}: must be at least {low}")
    if not cfg.lr > 0:
        raise SystemExit(f"--lr={cfg.lr}: must be positive")
    if not cfg.proj_lr_scale >= 0:
        raise SystemExit(f"--proj_lr_scale={cfg.proj_lr_scale}: must be 0 (a frozen projection) or more")
    if cfg.target_layer_ids and not all(t.strip().isdigit() for t in cfg.target_layer_ids.split(",")):
        raise SystemExit(f"--target_layer_ids={cfg.target_layer_ids}: expected encoder layer numbers, e.g. 1,3")
    if not all(0 <= b < 1 for b in cfg.betas):
        raise SystemExit(f"--betas={','.join(map(str, cfg.betas))}: each must be in [0, 1)")
    return cfg


def parse_config(argv: list[str]) -> TrainConfig:
    """--preset=NAME (default tiny), then --key=value overrides with each field's type (tools/cli.py)."""
    from tools.cli import parse_overrides
    return check_config(TrainConfig(**parse_overrides(TrainConfig, argv, PRESETS, "tiny", RENAMED)))


def model_config(cfg: TrainConfig) -> desta.DeSTAConfig:
    """The DeSTA model a training config builds (backbones + adapter shape)."""
    return desta.DeSTAConfig(llm_model_id=cfg.llm_model_id, encoder_model_id=cfg.encoder_model_id,
                             qformer_num_hidden_layers=cfg.qformer_num_hidden_layers, prompt_size=cfg.prompt_size,
                             qformer_ffn_dim=cfg.qformer_ffn_dim, use_lora=cfg.use_lora,
                             mask_audio_padding=cfg.mask_audio_padding or cfg.crop_encoder_input,
                             crop_encoder_input=cfg.crop_encoder_input,
                             target_layer_ids=[int(t) for t in cfg.target_layer_ids.split(",")] if cfg.target_layer_ids else None)


def check_init_adapter(folder: Path, model: desta.DeSTA) -> None:
    """--init_adapter must hold an adapter that computes what this run's does: same taps, queries, depth
    and padding mode (a tensor's shape alone cannot tell taps 1,3 from 0,2)."""
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--init_adapter={folder}: no config.json (expected an adapter folder, e.g. a run's ckpt-*)")
    saved = desta.DeSTAConfig.from_json(folder / "config.json")
    ours = model.cfg
    differ = [f"{k}={getattr(saved, k)!r} (this run {getattr(ours, k)!r})"
              for k in ("qformer_num_hidden_layers", "prompt_size", "mask_audio_padding", "use_lora")
              if getattr(saved, k) != getattr(ours, k)]
    saved_taps = saved.taps(model.whisper.cfg.encoder_layers)
    if list(saved_taps or []) != list(model.taps):
        differ.append(f"target_layer_ids={saved_taps} (this run {model.taps})")
    if differ:
        raise SystemExit(f"--init_adapter={folder}: another adapter shape: {'; '.join(differ)}")


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warmup, then cosine decay to min_lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# -----------------------------------------------------------------------------------------------
# Evaluation during training
# -----------------------------------------------------------------------------------------------


def other_clips(clips: list[str]) -> list[int] | None:
    """A cyclic shift that gives every audio of a batch another clip's audio, or None when none does
    (validation rows come K prompts per clip in a row, so the shift is at least K)."""
    n = len(clips)
    for s in range(1, n):
        if all(clips[i] != clips[(i + s) % n] for i in range(n)):
            return [(i + s) % n for i in range(n)]
    return None


def permute_audio(audio, perm: list[int]):
    """Log-mel (A, n_mels, T) or cached features, with audio i replaced by audio perm[i]."""
    if isinstance(audio, desta.EncodedAudio):
        return desta.EncodedAudio([t[perm] for t in audio.taps], None if audio.frame_mask is None else audio.frame_mask[perm])
    return audio[perm]


@torch.no_grad()
def validate(model, rows, cfg, device, amp, n_mels, features=None) -> dict:
    """Mean validation loss over a few batches, and greedy answers for a few clips.

    Also the loss on the same batches with each row given another clip's audio: a model that uses the
    audio for these targets scores worse on it. Equal losses mean it does not (yet): every run first
    passes a constant soft prompt (bench/exp4_tiny.md). It measures only the validation rows' targets: a
    run that learnt gender from its own prompt kept a gap of -0.0009 on the demo's validation rows."""
    model.eval()
    ds = data.AudioTextDataset(rows, cfg.data_root, n_mels, features)
    losses, pairs = [], []
    for b in range(min(cfg.eval_batches, math.ceil(len(rows) / cfg.batch_size))):
        batch = data.collate([ds[i] for i in range(b * cfg.batch_size, min(len(rows), (b + 1) * cfg.batch_size))])
        if not batch["rows"]:
            continue
        inputs = model_inputs(model, batch, cfg.val_max_seq_len, device)
        audio = batch_audio(batch, device)
        with amp:
            losses.append(model(audio, inputs, cfg.loss_chunk).item())
            perm = other_clips([a["audio"] for r in batch["rows"] for a in data.row_audios(r)])
            if perm is not None:
                pairs.append((losses[-1], model(permute_audio(audio, perm), inputs, cfg.loss_chunk).item()))
    samples = []
    items = [ds[i] for i in range(min(cfg.eval_samples, len(rows)))]
    items = [it for it in items if "error" not in it]
    if items:
        audio = batch_audio(data.collate(items), device)
        texts = [data.row_audios(it["row"])[0].get("text") or " " for it in items]
        with amp:
            answers = generate.answer(model, audio, [it["row"]["prompt"] for it in items], texts,
                                      generate.Sampling(cfg.eval_max_new_tokens))
        samples = [{"id": it["row"]["id"], "prompt": it["row"]["prompt"], "answer": a, "target": it["row"]["response"]}
                   for it, a in zip(items, answers)]
    model.train()
    gap = sum(o - l for l, o in pairs) / len(pairs) if pairs else None
    return {"val_loss": sum(losses) / max(1, len(losses)), "other_audio_gap": gap, "samples": samples}


def batch_audio(batch: dict, device):
    """A collated batch's audio for the model: log-mel, or cached encoder features."""
    if batch["audio"] is not None:
        return batch["audio"].to(device)
    return batch["mel"].to(device, non_blocking=True)


def feature_cache(cfg: TrainConfig, model, rows: list[dict], rank: int, world: int, log) -> data.FeatureCache | None:
    """With cfg.feature_cache: make sure every clip of `rows` has its encoder taps cached (each rank
    computes its share; a second run computes nothing), then train from the cache."""
    if not cfg.feature_cache:
        return None
    from tools import cli
    m = model.cfg
    cache = data.FeatureCache(Path(cfg.data_root) / cfg.feature_cache, cfg.data_root,
                              desta.resolve_weights(cfg.encoder_model_id), model.taps, m.mask_audio_padding,
                              m.crop_encoder_input, next(model.whisper.parameters()).dtype)
    clips = list(dict.fromkeys(a["audio"] for r in rows for a in data.row_audios(r)))
    cache.build(model.whisper, clips[rank::world], log=log)
    cli.barrier(world)
    return cache


def model_inputs(model, batch, max_len, device) -> desta.DeSTABatch:
    """Tokenize a collated batch: chat context with audio spans, transcriptions capped (SPEC 5)."""
    rows = batch["rows"]
    texts = [[a.get("text") or " " for a in data.row_audios(r)] for r in rows]
    return model.build_batch([r["messages"] for r in rows], texts, [r["response"] for r in rows],
                             cap_transcription=True, max_len=max_len,
                             finished=[r.get("finished", True) for r in rows]).to(device)


# -----------------------------------------------------------------------------------------------
# Training
# -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    from tools import cli, resume
    cfg = parse_config(sys.argv[1:] if argv is None else argv)
    rank, world = cli.dist_setup()  # torchrun's ranks: NCCL on GPU, gloo on CPU
    cuda = torch.cuda.is_available()
    device = cli.device_for(rank)
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    master = rank == 0
    out_dir = Path(cfg.out_dir)
    log = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)

    # ---- manifests first: a bad row is reported before minutes of model loading
    rows = data.read_jsonl(cfg.train_manifest, check=data.training_row_problem)  # names a bad row's file and line
    val_rows = data.read_jsonl(cfg.val_manifest, check=data.training_row_problem) \
        if cfg.val_manifest and Path(cfg.val_manifest).is_file() else []
    if not rows:
        raise SystemExit(f"{cfg.train_manifest}: no rows to train on")

    # ---- model: frozen backbones, fresh adapter (PyTorch default init), seeded identically everywhere
    torch.manual_seed(cfg.seed)
    dtype, why = cli.pick_dtype(device, cfg.dtype)
    model = desta.DeSTA.from_config(model_config(cfg), dtype=dtype, device=device)
    model.llm.checkpoint_layers = cfg.checkpoint_layers
    if cfg.compile:
        for block in [*model.llm.layers, *model.whisper.layers, *model.connector.qformer["layer"]]:
            block.compile()
    connector = DDP(model.connector) if world > 1 else model.connector
    amp_dtype = {"auto": torch.bfloat16 if dtype == torch.bfloat16 else None, "bf16": torch.bfloat16,
                 "none": None}[cfg.autocast]
    amp = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=amp_dtype) if amp_dtype else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]  # the adapter (+ LoRA factors)
    lora_params = [p for n, p in model.llm.named_parameters() if p.requires_grad]
    # The projection (LayerNorm + Linear into the LLM) may learn slower than the rest: on the tiny preset
    # it first grows the direction all clips share until the audio vectors are a constant prompt
    # (bench/exp4_tiny.md). Each group's lr is the schedule's times its lr_scale. At scale 1 there is one
    # group, the paper's optimizer, so checkpoints written before this option resume unchanged.
    groups = [dict(params=params, lr_scale=1.0)]
    if cfg.proj_lr_scale != 1.0:
        proj_ids = {id(p) for p in model.connector.proj.parameters()}
        groups = [dict(params=[p for p in params if id(p) not in proj_ids], lr_scale=1.0),
                  dict(params=[p for p in params if id(p) in proj_ids], lr_scale=cfg.proj_lr_scale)]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            fused=cuda)
    log(f"adapter: {desta.count_parameters(model):,} trainable parameters; taps {model.taps}; "
        f"backbones {str(dtype).removeprefix('torch.')} ({why}), autocast {amp_dtype}; world {world}; device {device}")

    # ---- data
    accum = max(1, cfg.global_batch // (cfg.batch_size * world))
    lengths = [data.row_length(r) for r in rows]
    n_batches = len(data.length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, 0)) // world
    if n_batches == 0:
        raise SystemExit(f"{cfg.train_manifest}: {len(rows)} rows cannot give each of {world} ranks a batch")
    if n_batches < accum:  # a small manifest: train on what there is rather than wait for a full step
        log(f"note: {n_batches} micro-batches per rank and epoch, fewer than the {accum} accumulation steps "
            f"global_batch={cfg.global_batch} asks for; accumulating {n_batches}")
        accum = n_batches
    steps_per_epoch = n_batches // accum
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    features = feature_cache(cfg, model, rows + val_rows, rank, world, log)
    dataset = data.AudioTextDataset(rows, cfg.data_root, model.whisper.cfg.n_mels, features)
    log(f"data: {len(rows)} rows, micro-batch {cfg.batch_size} x {accum} accumulation x {world} ranks "
        f"= {cfg.batch_size * accum * world} per step; {steps_per_epoch} steps/epoch; {total} steps")

    # ---- resume, or start from a given adapter
    step, epoch, batch_in_epoch = 0, 0, 0
    ckpt = resume.latest_checkpoint(out_dir, world, warn=master)
    if cfg.init_adapter and ckpt is None:
        check_init_adapter(Path(cfg.init_adapter), model)
        model.load_adapter(cfg.init_adapter)
        log(f"adapter initialised from {cfg.init_adapter}")
    if ckpt is not None:
        state = resume.load_state(ckpt / "train_state.pt")
        if state["world"] != world:
            raise SystemExit(f"{ckpt} was written by {state['world']} ranks; resume with the same world size")
        changes = resume_changes(state["config"], cfg, state.get("rows"), len(rows))
        if changes and not cfg.allow_changes:
            raise SystemExit(f"{ckpt} was trained with other settings: {'; '.join(changes)}. Resume with the "
                             f"same settings, train into a new --out_dir, or pass --allow_changes=true")
        if changes:
            log(f"note: resuming {ckpt} with changed settings: {'; '.join(changes)}")
        model.load_adapter(ckpt)
        if len(state["optimizer"]["param_groups"]) != len(opt.param_groups):  # --proj_lr_scale 1 <-> other
            raise SystemExit(f"{ckpt}: its optimizer has {len(state['optimizer']['param_groups'])} parameter "
                             f"group(s), this run's {len(opt.param_groups)} (--proj_lr_scale); train into a new --out_dir")
        opt.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        resume.set_rng_state(resume.load_state(ckpt / f"rng-{rank}.pt"))
        log(f"resumed from {ckpt} at step {step}")
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    logf = open(out_dir / "log.jsonl", "a") if master else None
    wandb = None
    if cfg.wandb and master:
        try:
            import wandb
            wandb.init(project=cfg.wandb, config=asdict(cfg), resume="allow")
        except ImportError:
            log("wandb not installed: logging to log.jsonl only")

    def emit(rec):
        if master:
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            if wandb:
                wandb.log(rec, step=rec["step"])

    # ---- loop
    model.train()
    seen = skipped = tokens = samples = 0
    first_error = None
    # model FLOPs per step (SPEC 11): frozen LLM forward + input-gradient backward ~ 4 x params x tokens,
    # plus the Whisper forward, 2 x params x 1500 frames per clip; the adapter is small next to them
    n_llm, n_whisper = desta.count_parameters(model.llm, False), desta.count_parameters(model.whisper, False)
    peak = cli.peak_flops(cfg.peak_tflops)
    t_last = time.time()
    frozen_before = frozen_checksum(model)
    while step < total:
        batches = data.length_bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch)
        batches = batches[: len(batches) // world * world][rank::world]  # equal count on every rank
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches[batch_in_epoch:], collate_fn=data.collate,
                                             num_workers=cfg.num_workers, worker_init_fn=worker_init,
                                             pin_memory=cuda,
                                             # its own generator: making an iterator must not draw from
                                             # the global RNG, or a resumed run's dropout would diverge
                                             generator=torch.Generator().manual_seed(cfg.seed + epoch))
        it = iter(loader)
        while step < total and batch_in_epoch + accum <= len(batches):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg, total) * g.get("lr_scale", 1.0)  # older checkpoints: no lr_scale
            loss_sum, ids = 0.0, []
            for micro in range(accum):
                batch = next(it)
                batch_in_epoch += 1
                seen += len(batch["indices"]) + len(batch["errors"])
                skipped += len(batch["errors"])
                first_error = first_error or next(iter(batch["errors"]), None)
                for e in batch["errors"]:
                    print(f"rank {rank}: skipped unreadable clip: {e}", file=sys.stderr, flush=True)
                if seen >= cfg.skip_check_after and skipped / seen > cfg.max_skip_rate:
                    raise SystemExit(f"stopping: {skipped} of {seen} clips unreadable (> max_skip_rate "
                                     f"{cfg.max_skip_rate}); fix the data or raise the threshold")
                if not batch["rows"]:
                    continue
                inputs = model_inputs(model, batch, cfg.max_seq_len, device)
                ids += [r["id"] for r in batch["rows"]]
                sync = micro == accum - 1
                with (connector.no_sync() if world > 1 and not sync else nullcontext()), amp:
                    loss = model(batch_audio(batch, device), inputs, cfg.loss_chunk, connector)
                if not torch.isfinite(loss):
                    raise SystemExit(f"stopping: loss is {loss.item()} at step {step} (rank {rank}), batch ids {ids}")
                (loss / accum).backward()
                loss_sum += loss.item() / accum
                tokens += int(inputs.attn_mask.sum())
                samples += len(batch["rows"])
            used = len(ids)
            if world > 1:  # every rank must agree on whether this step happens
                used_t = torch.tensor(used, device=device)
                dist.all_reduce(used_t)
                used = int(used_t)
            if used == 0:
                continue  # no readable clip in the whole step: nothing learned, so the schedule does not move
            if world > 1 and lora_params:  # DDP wraps the connector only: average the LoRA gradients here
                for p in lora_params:
                    dist.all_reduce(p.grad)
                    p.grad /= world
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "loss": loss_sum, "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm}
            if cfg.check_sync:
                rec["adapter_checksum"] = cli.check_ranks_agree(adapter_checksum(model), world, step)
            if step % cfg.log_every == 0 or step == total:
                dt = time.time() - t_last
                rec.update(samples_per_s=samples * world / dt, tokens_per_s=tokens * world / dt, skipped=skipped)
                if cuda:
                    rec["mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    if peak:
                        flops = 4 * n_llm * tokens + 2 * n_whisper * desta.N_AUDIO_CTX * samples
                        rec["mfu"] = flops / dt / peak
                log(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()))
                t_last, tokens, samples = time.time(), 0, 0
            emit(rec)
            if val_rows and master and (step % cfg.eval_every == 0 or step == total):
                v = validate(model, val_rows, cfg, device, amp, model.whisper.cfg.n_mels, features)
                emit({"step": step, "val_loss": v["val_loss"], "other_audio_gap": v["other_audio_gap"],
                      "samples": v["samples"]})
                gap = "" if v["other_audio_gap"] is None else \
                    f" | with other clips' audio {v['other_audio_gap']:+.4f} (> 0 once the answers use the audio)"
                log(f"step {step} | val_loss {v['val_loss']:.4f}{gap}")
                for s in v["samples"]:
                    log(f"  [{s['id']}] {s['prompt']}\n    -> {s['answer'][:200]!r}")
            if step % cfg.save_every == 0 or step == total:
                resume.save_checkpoint(model, opt, step, epoch, batch_in_epoch, cfg, rank, world, out_dir, len(rows))
        if seen and skipped == seen:  # else a manifest whose audio is all unreadable would loop forever
            raise SystemExit(f"stopping: all {seen} clips read so far were unreadable (e.g. {first_error}); "
                             f"check data_root={cfg.data_root} and the manifest's audio paths")
        if step < total:
            epoch, batch_in_epoch = epoch + 1, 0
    assert frozen_checksum(model) == frozen_before, "frozen backbone weights changed during training"
    result = {"step": step, "adapter_checksum": adapter_checksum(model), "frozen_checksum": frozen_before}
    emit({"step": step, "final": result})
    if logf:
        logf.close()
    if world > 1:
        dist.destroy_process_group()
    return result


def worker_init(_):
    torch.set_num_threads(1)  # the workers decode audio and compute log-mel; keep them off the main cores


@torch.no_grad()
def frozen_checksum(model) -> float:
    frozen = [p for p in (*model.whisper.parameters(), *model.llm.parameters()) if not p.requires_grad]
    return float(sum(p.double().sum() for p in frozen))


@torch.no_grad()
def adapter_checksum(model) -> float:
    return float(sum(p.double().abs().sum() for p in model.parameters() if p.requires_grad))


if __name__ == "__main__":
    try:
        main()
    except (data.ManifestError, desta.CheckpointError) as e:
        sys.exit(f"error: {e}")  # bad input: the message names the file; no traceback needed
