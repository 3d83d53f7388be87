"""`make data` end to end on a miniature tiny preset (a dozen clips, a random LLM): it leaves a
training manifest in the DeSTA-AQA5M layout, and a second run does no work."""
import os
import shutil
import subprocess
import time

import pytest

import data
from conftest import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_data_twice_does_no_work_the_second_time(random_backbones, tiny_weights, tmp_path):
    pytest.importorskip("espeakng_loader", reason="the tiny corpus needs the espeakng-loader wheel")
    out = tmp_path / "data"
    cmd = ["make", "data", f"DATA={out}", f"LLM={random_backbones / 'llm'}",
           "CORPUS=--n-speech 8 --n-sound 3 --n-music 3 --workers 1",
           "SELFGEN=--k 1 --max-new-tokens 6 --batch-size 4", "VALGEN="]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    seeds = data.read_jsonl(out / "seed_manifest.jsonl")
    rows = data.read_jsonl(out / "train.jsonl", required=("id", "dataset", "seed_description", "prompt",
                                                          "response", "messages"))
    assert len(rows) == sum(r["split"] == "train" for r in seeds) > 0
    assert "| **all** |" in first.stdout  # the summary table
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix == ".wav"}
    manifests = {p: p.read_bytes() for p in (out / "train.jsonl", out / "validation.jsonl")}
    t = time.time()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    log = second.stdout + second.stderr
    assert "0 to render" in log and log.count("nothing to do") == 2 and "built in" not in log
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no clip rewritten
    assert {p: p.read_bytes() for p in manifests} == manifests
    print(f"second make data: {time.time() - t:.1f} s")
