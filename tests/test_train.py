"""train.py on a tiny random config, CPU: the loss falls, frozen weights stay frozen, DDP keeps the
ranks identical, a killed run resumes to exactly the same weights and losses, and a saved adapter
loads back through DeSTA.from_pretrained."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import desta
import train
from tools import resume
from conftest import ROOT, write_tiny_training_set


def args(backbones, manifest, out, **kw):
    cfg = dict(llm_model_id=backbones / "llm", encoder_model_id=backbones / "whisper", train_manifest=manifest,
               val_manifest="", data_root=manifest.parent, out_dir=out, qformer_num_hidden_layers=1,
               qformer_ffn_dim=48, prompt_size=4, lr=3e-3, warmup_steps=2, batch_size=2, global_batch=4, num_workers=0, log_every=1,
               save_every=1000, max_steps=8)
    cfg.update(kw)
    return [f"--{k}={v}" for k, v in cfg.items()]


def read_log(out):
    return [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]


def losses(out):
    return {r["step"]: r["loss"] for r in read_log(out) if "loss" in r}


def test_single_process_learns_and_saves_official_layout(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data")
    out = tmp_path / "run"
    result = train.main(args(random_backbones, manifest, out, max_steps=24, lr=1e-2))  # asserts frozen unchanged
    curve = losses(out)
    first, last = sum(curve[s] for s in (1, 2, 3)) / 3, sum(curve[s] for s in (22, 23, 24)) / 3
    print(f"single process loss: first 3 steps {first:.3f} -> last 3 steps {last:.3f}")
    assert last < 0.8 * first
    ckpt = out / "ckpt-00000024"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "train_state.pt").is_file()
    model = desta.DeSTA.from_pretrained(ckpt).eval()
    assert abs(train.adapter_checksum(model) - result["adapter_checksum"]) < 1e-6 * result["adapter_checksum"]


def test_init_adapter_starts_from_a_saved_adapter(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data")
    first = train.main(args(random_backbones, manifest, tmp_path / "a", max_steps=3, save_every=3))
    ckpt = tmp_path / "a" / "ckpt-00000003"
    # one step at a vanishing lr: the adapter is still the one it started from
    tiny_lr = dict(max_steps=1, lr=1e-12, warmup_steps=0)
    started = train.main(args(random_backbones, manifest, tmp_path / "b", init_adapter=ckpt, save_every=1, **tiny_lr))
    train.main(args(random_backbones, manifest, tmp_path / "c", save_every=1, **tiny_lr))
    assert started["adapter_checksum"] == pytest.approx(first["adapter_checksum"], rel=1e-6)
    # compare the weights themselves: a sum of |w| barely moves in 3 steps, so it cannot tell fresh from trained
    saved = load_file(ckpt / "model.safetensors")

    def gap(run):  # largest weight difference from the saved adapter
        other = load_file(tmp_path / run / "ckpt-00000001" / "model.safetensors")
        assert other.keys() == saved.keys()
        return max((other[k].double() - saved[k].double()).abs().max().item() for k in saved)
    assert gap("b") < 1e-6
    assert gap("c") > 1e-4
    with pytest.raises(SystemExit, match="another adapter shape: qformer_num_hidden_layers=1 \\(this run 2\\)"):
        train.main(args(random_backbones, manifest, tmp_path / "d", init_adapter=ckpt, qformer_num_hidden_layers=2))
    with pytest.raises(SystemExit, match="no config.json"):
        train.main(args(random_backbones, manifest, tmp_path / "e", init_adapter=tmp_path / "nowhere"))


def test_bad_config_keys_are_errors():
    with pytest.raises(SystemExit, match="unknown config key --learning_rate"):
        train.parse_config(["--learning_rate=1"])
    with pytest.raises(SystemExit, match="unknown preset"):
        train.parse_config(["--preset=huge"])
    cfg = train.parse_config(["--preset=desta25", "--lr=2e-4", "--betas=0.9,0.95", "--compile=true"])
    assert cfg.qformer_num_hidden_layers == 6 and cfg.lr == 2e-4 and cfg.betas == (0.9, 0.95) and cfg.compile


@pytest.mark.parametrize("flag, message", [
    ("--use_lora=maybe", "--use_lora=maybe: expected a boolean"), ("--lora=maybe", "--lora=maybe: expected a boolean"),
    ("--target_layer_ids=1,x", "--target_layer_ids=1,x: expected encoder layer numbers"), ("--compile=maybe", "--compile=maybe: expected a boolean"),
    ("--lr", "--lr needs a value"), ("--lr=abc", "--lr=abc: expected a number"),
    ("--betas=0.9", "--betas=0.9: expected 2 comma-separated numbers"), ("--batch_size=0", "--batch_size=0: must be at least 1"),
    ("--max_steps=-5", "--max_steps=-5: must be at least 0"), ("--epochs=0", "--epochs=0: must be at least 1"),
    ("--batch_size=2.5", "--batch_size=2.5: expected an integer"), ("--save_every=0", "--save_every=0: must be"),
])
def test_bad_config_values_name_the_flag(flag, message):
    with pytest.raises(SystemExit, match="^" + message.replace(".", r"\.")) as e:
        train.parse_config([flag])
    assert "\n" not in str(e.value)


def test_boolean_flags_accept_the_usual_spellings():
    for word, value in [("on", True), ("off", False), ("yes", True), ("No", False), ("1", True), ("0", False),
                        ("TRUE", True), ("false", False)]:
        cfg = train.parse_config([f"--use_lora={word}", f"--mask_audio_padding={word}"])
        assert cfg.use_lora is value and cfg.mask_audio_padding is value, word
    assert train.parse_config(["--compile"]).compile is True  # a bare boolean flag means true


def test_earlier_field_names_still_work_on_the_command_line():
    cfg = train.parse_config(["--qformer_layers=3", "--taps=0,2", "--lora=true", "--llm=L", "--encoder=W"])
    assert (cfg.qformer_num_hidden_layers, cfg.target_layer_ids, cfg.use_lora) == (3, "0,2", True)
    assert (cfg.llm_model_id, cfg.encoder_model_id) == ("L", "W")
    m = train.model_config(cfg)  # the same names as the official config.json
    assert (m.qformer_num_hidden_layers, m.target_layer_ids, m.use_lora) == (3, [0, 2], True)
    assert (m.llm_model_id, m.encoder_model_id) == ("L", "W")
    # a checkpoint written under the earlier names is compared field by field all the same
    assert train.resume_changes({"llm": "L", "qformer_layers": 3}, cfg, None, 0) == []
    assert train.resume_changes({"llm": "M"}, cfg, None, 0) == ["llm_model_id='M' (now 'L')"]


def test_warmup_cosine_schedule():
    cfg = train.TrainConfig(lr=1e-3, warmup_steps=10, min_lr=1e-5)
    assert train.lr_at(0, cfg, 110) == pytest.approx(1e-4)
    assert train.lr_at(9, cfg, 110) == pytest.approx(1e-3)
    assert train.lr_at(60, cfg, 110) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert train.lr_at(110, cfg, 110) == pytest.approx(1e-5)


def run_train(argv, nproc=1, env=None):
    cmd = [sys.executable, "train.py", *argv] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume_is_exact(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    p = run_train(args(random_backbones, manifest, straight, max_steps=10, save_every=5))
    assert p.wait(timeout=300) == 0, p.stdout.read()
    p = run_train(args(random_backbones, manifest, resumed, max_steps=10, save_every=5))
    deadline = time.time() + 300
    while not (resumed / "ckpt-00000005").is_dir():  # appears atomically, once complete
        assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (resumed / "ckpt-00000010").exists(), "run finished before it could be interrupted"
    p = run_train(args(random_backbones, manifest, resumed, max_steps=10, save_every=5))
    out = p.stdout.read()
    assert p.wait(timeout=300) == 0, out
    assert "resumed from" in out
    a = desta.DeSTA.from_pretrained(straight / "ckpt-00000010").connector.state_dict()
    b = desta.DeSTA.from_pretrained(resumed / "ckpt-00000010").connector.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "adapter weights differ after resume"
    la, lb = losses(straight), losses(resumed)
    assert all(la[s] == lb[s] for s in range(1, 11)), (la, lb)


def test_two_ranks_ddp_gloo(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data", n=8)
    out = tmp_path / "ddp"
    p = run_train(args(random_backbones, manifest, out, max_steps=10, batch_size=1, global_batch=4,
                       check_sync="true"), nproc=2)
    text = p.stdout.read()
    assert p.wait(timeout=300) == 0, text
    assert "world 2" in text
    log = read_log(out)
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 10 and all("adapter_checksum" in r for r in steps)  # ranks agreed every step
    first, last = sum(r["loss"] for r in steps[:3]) / 3, sum(r["loss"] for r in steps[-3:]) / 3
    print(f"2 ranks: loss {first:.3f} -> {last:.3f}")
    assert last < first
    final = log[-1]["final"]
    assert final["step"] == 10  # and train.main asserted the frozen weights were untouched on each rank


def test_unreadable_clips_are_named_counted_and_bounded(random_backbones, tmp_path, capsys):
    manifest = write_tiny_training_set(tmp_path / "data", n=8)
    (tmp_path / "data" / "audio" / "3.wav").write_bytes(b"RIFF....not audio at all")
    (tmp_path / "data" / "audio" / "5.wav").unlink()
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=4, max_skip_rate=0.5))
    err = capsys.readouterr().err
    assert "3.wav" in err and "5.wav" in err
    skipped = [r["skipped"] for r in read_log(out) if "skipped" in r]
    assert skipped[-1] >= 2
    # past the threshold the run stops with a clear message instead of training on what is left
    with pytest.raises(SystemExit, match="unreadable"):
        train.main(args(random_backbones, manifest, tmp_path / "run2", max_steps=20, max_skip_rate=0.1,
                        skip_check_after=8))


def test_lora_ablation_trains(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data")
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=3, use_lora="true"))  # frozen base weights asserted
    model = desta.DeSTA.from_pretrained(out / "ckpt-00000003")
    lora_b = [p for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B left zero = LoRA never trained


def test_projection_learns_at_its_own_rate(random_backbones, tmp_path):
    """--proj_lr_scale=0 freezes the LayerNorm + Linear into the LLM (weight decay included: AdamW's decay
    is scaled by the group's lr) while the Q-Former and its queries still learn; a negative scale is refused."""
    manifest = write_tiny_training_set(tmp_path / "data")
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=4, save_every=2, proj_lr_scale=0))
    a, b = (desta.DeSTA.from_pretrained(out / f"ckpt-0000000{s}").connector for s in (2, 4))
    assert all(torch.equal(p, q) for p, q in zip(a.proj.parameters(), b.proj.parameters()))
    assert not torch.equal(a.layer_prompts[0], b.layer_prompts[0])
    assert not all(torch.equal(p, q) for p, q in zip(a.qformer.parameters(), b.qformer.parameters()))
    with pytest.raises(SystemExit, match="^--proj_lr_scale=-1.0: must be 0"):
        train.parse_config(["--proj_lr_scale=-1"])
    with pytest.raises(SystemExit, match="ckpt-00000004: its optimizer has 2 parameter group"):  # 0 -> 1
        train.main(args(random_backbones, manifest, out, max_steps=6, save_every=2, allow_changes="true"))

def test_small_or_empty_manifest_trains_or_stops(random_backbones, tmp_path):
    """8 rows in 4 micro-batches with 8 accumulation steps asked for once hung (no step ever filled):
    it trains, accumulating what there is; an empty manifest is an error. Subprocesses, so a hang fails."""
    manifest = write_tiny_training_set(tmp_path / "data", n=8)
    p = run_train(args(random_backbones, manifest, tmp_path / "small", max_steps=0, epochs=2, global_batch=16))
    try:
        out, _ = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode == 0, out
    assert "accumulating 4" in out
    assert [r["step"] for r in read_log(tmp_path / "small") if "loss" in r] == [1, 2]  # one step per epoch
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    p = run_train(args(random_backbones, empty, tmp_path / "none"))
    try:
        out, _ = p.communicate(timeout=240)
    finally:
        p.kill()
    assert p.returncode != 0 and "empty.jsonl: no rows to train on" in out, out
    assert not list((tmp_path / "none").glob("ckpt-*"))


def test_steps_without_a_readable_clip_do_not_count(random_backbones, tmp_path):
    """A step whose every clip is unreadable does not advance the schedule (it used to log loss 0,
    grad_norm 0 and count), and a manifest whose audio is all unreadable is an error, not a checkpoint."""
    import data
    manifest = write_tiny_training_set(tmp_path / "data", n=8)
    rows = data.read_jsonl(manifest)
    first = data.length_bucketed_batches([data.row_length(r) for r in rows], 2, 42, 0)[0]  # seed 42: the default
    for i in first:
        (tmp_path / "data" / rows[i]["id"]).write_bytes(b"not audio")
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=3, global_batch=2, max_skip_rate=1.0))
    steps = [r for r in read_log(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in steps), steps
    for r in rows:
        (tmp_path / "data" / r["id"]).write_bytes(b"not audio")
    with pytest.raises(SystemExit, match="all 8 clips read so far were unreadable"):
        train.main(args(random_backbones, manifest, tmp_path / "bad", max_steps=4, max_skip_rate=1.0))
    assert not list((tmp_path / "bad").glob("ckpt-*"))


def test_broken_checkpoints_are_skipped_and_not_kept(random_backbones, tmp_path, capsys):
    """A ckpt folder that lost a file (train_state.pt, rng-0.pt) is named and skipped, not loaded; saving
    that step again replaces it (os.replace onto it used to fail: 'Directory not empty', on every rerun);
    a leftover .tmp-ckpt-N is no obstacle; and broken folders do not count as kept ones (keep_last)."""
    manifest = write_tiny_training_set(tmp_path / "data")
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=4, save_every=2, keep_last=2))
    (out / "ckpt-00000004" / "rng-0.pt").unlink()
    (out / "ckpt-00000005").mkdir()
    (out / "ckpt-00000005" / "config.json").write_text("{}")
    (out / ".tmp-ckpt-00000004" / "sub").mkdir(parents=True)
    (out / ".tmp-ckpt-00000004" / "sub" / "junk").write_text("left by a kill")
    capsys.readouterr()
    train.main(args(random_backbones, manifest, out, max_steps=6, save_every=2, keep_last=2, allow_changes="true"))
    captured = capsys.readouterr()
    assert "skipping broken checkpoint" in captured.err and "ckpt-00000004 (missing rng-0.pt)" in captured.err
    assert "ckpt-00000005 (missing model.safetensors, train_state.pt, rng-0.pt)" in captured.err
    assert f"resumed from {out / 'ckpt-00000002'} at step 2" in captured.out
    assert [p.name for p in resume.complete_checkpoints(out, 1)] == ["ckpt-00000004", "ckpt-00000006"]
    (out / "ckpt-00000006" / "train_state.pt").unlink()
    assert resume.latest_checkpoint(out) == out / "ckpt-00000004"


def test_resume_with_other_settings_is_refused(random_backbones, tmp_path):
    """A rerun into the same out_dir with another batch size, learning rate or manifest used to continue
    the old checkpoint silently (and overwrite config.json): refused with the reason, unless asked for."""
    manifest = write_tiny_training_set(tmp_path / "data")
    other = write_tiny_training_set(tmp_path / "other", n=6)
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=2, save_every=2))
    config = (out / "config.json").read_text()
    with pytest.raises(SystemExit, match=r"other settings: batch_size=2 \(now 4\); global_batch=4 \(now 8\)"):
        train.main(args(random_backbones, manifest, out, max_steps=2, batch_size=4, global_batch=8))
    with pytest.raises(SystemExit, match=r"lr=0.003 \(now 0.01\)"):
        train.main(args(random_backbones, manifest, out, max_steps=2, lr=0.01))
    with pytest.raises(SystemExit, match=r"train_manifest=.*data_root=.*8 manifest rows \(now 6\)"):
        train.main(args(random_backbones, other, out, max_steps=2))
    assert (out / "config.json").read_text() == config
    # what only changes logging, evaluation or speed is free; anything else with --allow_changes=true
    assert train.main(args(random_backbones, manifest, out, max_steps=2, log_every=5, num_workers=1))["step"] == 2
    with pytest.raises(SystemExit, match=r"max_steps=2 \(now 3\)"):  # a longer run is another schedule
        train.main(args(random_backbones, manifest, out, max_steps=3))
    assert train.main(args(random_backbones, manifest, out, max_steps=3, lr=0.01, allow_changes="true"))["step"] == 3


def test_truncated_checkpoint_on_resume_names_the_file(random_backbones, tmp_path):
    manifest = write_tiny_training_set(tmp_path / "data")
    out = tmp_path / "run"
    train.main(args(random_backbones, manifest, out, max_steps=2, save_every=2))
    weights = out / "ckpt-00000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(desta.CheckpointError, match=f"{weights}: not a readable safetensors file"):
        train.main(args(random_backbones, manifest, out, max_steps=4, save_every=2, allow_changes="true"))
    state = out / "ckpt-00000002" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(desta.CheckpointError, match=f"{state}: cannot be read"):
        train.main(args(random_backbones, manifest, out, max_steps=4, save_every=2, allow_changes="true"))


@pytest.mark.parametrize("change, why", [
    (lambda r: r.update(response=None), "field 'response' must be a string, got NoneType"),
    (lambda r: r.update(messages="<|AUDIO|> hello"), "field 'messages' must be a non-empty list"),
    (lambda r: r["messages"][1].update(content="no marker here"), r"0 <\|AUDIO\|> marker\(s\) in the messages but 1 audio"),
])
def test_bad_training_rows_are_named_when_read(random_backbones, tmp_path, change, why):
    """A null response, a string for messages or a user turn without <|AUDIO|> used to fail deep in a
    batch; the manifest reader names file, line and id."""
    import data
    manifest = write_tiny_training_set(tmp_path / "data")
    rows = data.read_jsonl(manifest)
    change(rows[2])
    data.write_jsonl(manifest, rows)
    with pytest.raises(data.ManifestError, match=f"train.jsonl:3: row 'audio/2.wav': {why}"):
        train.main(args(random_backbones, manifest, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_other_clips_gives_every_audio_another_clip():
    assert train.other_clips(["a", "a", "a", "b", "b", "b"]) == [3, 4, 5, 0, 1, 2]  # K=3 prompts per clip
    assert train.other_clips(["a", "b", "c"]) == [1, 2, 0]
    assert train.other_clips(["a", "a"]) is None and train.other_clips(["a"]) is None


def test_validation_measures_whether_the_audio_is_used(random_backbones, tmp_path):
    """The other-audio gap is nonzero for an adapter that reads the clip and exactly zero for one that
    passes a constant soft prompt (the collapsed phase of a run)."""
    from contextlib import nullcontext

    import data
    manifest = write_tiny_training_set(tmp_path / "data")
    cfg = train.parse_config(args(random_backbones, manifest, tmp_path / "run", eval_batches=2, eval_samples=0,
                                  batch_size=4))
    torch.manual_seed(0)
    model = desta.DeSTA.from_config(train.model_config(cfg))
    rows = data.read_jsonl(manifest)
    v = train.validate(model, rows, cfg, "cpu", nullcontext(), model.whisper.cfg.n_mels)
    assert v["other_audio_gap"] is not None and abs(v["other_audio_gap"]) > 1e-4, v
    const = torch.randn(1, model.cfg.prompt_size, model.llm.cfg.dim)
    model.connector.forward = lambda taps, mask=None: const.expand(taps[0].shape[0], -1, -1)
    v = train.validate(model, rows, cfg, "cpu", nullcontext(), model.whisper.cfg.n_mels)
    assert v["other_audio_gap"] == pytest.approx(0.0, abs=1e-6), v
    one_clip = [dict(r, messages=rows[0]["messages"]) for r in rows]  # every row the same clip: no gap to measure
    assert train.validate(model, one_clip, cfg, "cpu", nullcontext(), model.whisper.cfg.n_mels)["other_audio_gap"] is None
