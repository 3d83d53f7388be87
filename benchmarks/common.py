"""
What several benchmarks share: rows of a Hugging Face table export, and the OpenAI-compatible LLM judge.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from data import read_jsonl


# Environment variables that configure the LLM judge (an OpenAI-compatible /chat/completions endpoint).
JUDGE_ENV_BASE_URL = "EVAL_JUDGE_BASE_URL"  # e.g. https://api.openai.com/v1
JUDGE_ENV_API_KEY = "EVAL_JUDGE_API_KEY"
JUDGE_ENV_MODEL = "EVAL_JUDGE_MODEL"
JUDGE_DEFAULT_MODEL = "gpt-4o-2024-11-20"  # what SAKURA and Speech-IFEval used


def load_table_export(folder, audio_cache=None):
    """Rows of one split exported from a Hugging Face dataset, in either layout:
      - parquet files (as on the hub, e.g. data/test-*.parquet); audio columns are structs
        {bytes, path}, written once to `audio_cache` (default <folder>/.audio) so a path can be given
        to the model. Needs pyarrow (optional; imported only here).
      - jsonl files whose audio columns hold paths relative to the jsonl file (our wav export).
    Returns a list of dicts; audio columns ('audio', 'audio2') become absolute paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    parquets = sorted(folder.rglob("*.parquet"))
    jsonls = sorted(folder.rglob("*.jsonl"))
    rows = []
    if parquets:
        try:
            import pyarrow.parquet as pq  # optional dependency, only for the hub's parquet layout
        except ImportError:
            raise ImportError(f"{folder}: reading parquet needs pyarrow (pip install pyarrow), "
                              "or export the split as jsonl + wav") from None
        cache = Path(audio_cache or folder / ".audio")
        for p in parquets:
            for n, row in enumerate(pq.read_table(p).to_pylist()):
                for col in ("audio", "audio2"):
                    if isinstance(row.get(col), dict):
                        row[col] = _materialize_audio(row[col], cache / p.stem, f"{n:06d}_{col}", p)
                rows.append(row)
    elif jsonls:
        for p in jsonls:
            for n, row in enumerate(read_jsonl(p)):
                for col in ("audio", "audio2"):
                    if isinstance(row.get(col), str) and row[col]:
                        audio = Path(row[col])
                        row[col] = str(audio if audio.is_absolute() else p.parent / audio)
                rows.append(row)
    else:
        raise FileNotFoundError(f"{folder}: no *.parquet or *.jsonl files")
    return rows


def _materialize_audio(cell, cache, stem, source):
    if cell.get("bytes") is None:
        if cell.get("path") and Path(cell["path"]).exists():
            return cell["path"]
        raise ValueError(f"{source}: audio cell {stem} has neither bytes nor an existing path")
    suffix = Path(cell.get("path") or "").suffix or ".wav"
    out = cache / f"{stem}{suffix}"
    if not out.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_bytes(cell["bytes"])
        tmp.rename(out)
    return str(out)


@dataclass
class JudgeConfig:
    base_url: str
    api_key: str = None
    model: str = JUDGE_DEFAULT_MODEL
    timeout: float = 120.0
    retries: int = 3

    @classmethod
    def from_env(cls):
        """The judge configured by EVAL_JUDGE_BASE_URL (+ _API_KEY, _MODEL), or None."""
        base = os.environ.get(JUDGE_ENV_BASE_URL)
        if not base:
            return None
        return cls(base, os.environ.get(JUDGE_ENV_API_KEY), os.environ.get(JUDGE_ENV_MODEL) or JUDGE_DEFAULT_MODEL)


def judge_chat(judge, messages, **params):
    """One chat completion from an OpenAI-compatible endpoint -> the reply text. `params` are passed
    through (temperature, top_p), so each benchmark sends exactly its official settings."""
    url = judge.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {judge.api_key}"} if judge.api_key else {}
    body = {"model": judge.model, "messages": messages, **params}
    for attempt in range(judge.retries):
        try:
            r = requests.post(url, json=body, headers=headers, timeout=judge.timeout)
        except requests.RequestException as e:
            err = f"{url}: {e}"
        else:
            if r.status_code == 200:
                try:
                    return r.json()["choices"][0]["message"]["content"] or ""
                except (ValueError, KeyError, IndexError, TypeError):
                    raise RuntimeError(f"{url}: unexpected reply {r.text[:300]!r}") from None
            err = f"{url}: HTTP {r.status_code} {r.text[:300]!r}"
            if r.status_code < 500 and r.status_code != 429:
                break  # a client error will not get better by retrying
        time.sleep(2 ** attempt)
    raise RuntimeError(f"judge request failed: {err}")
