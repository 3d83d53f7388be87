"""
The speech-recognition step of DeSTA2.5's inference, as the authors' `generate` runs it: the VAD decides
whether a clip has speech; a clip with speech is transcribed by Whisper (the checkpoint whose encoder feeds
the adapter, so one copy of the encoder serves both); the text follows the audio vectors in the context.
generate.py (inference on files) and evaluate.py (benchmarks) call it.
"""
from __future__ import annotations

from pathlib import Path

import torch

import data
import desta
from asr.vad import SileroVAD
from asr.whisper import Whisper


def load_asr(folder, dtype=torch.float32, device="cpu", model: desta.DeSTA | None = None):
    """Whisper ASR from an HF-layout folder (None: no ASR) and the Silero VAD -> (asr or None, vad).
    When `model` reads its encoder from the same folder, it takes the ASR's encoder: one copy serves both."""
    asr = None
    if folder is not None:
        asr = Whisper.from_pretrained(folder, dtype, device)
        if model is not None and Path(folder) == desta.resolve_weights(model.cfg.encoder_model_id):
            model.whisper = asr.encoder
    return asr, SileroVAD.from_pretrained()


@torch.no_grad()
def transcribe_if_speech(waves: list, mel: torch.Tensor, vad: SileroVAD | None, asr: Whisper | None,
                         given: list | None = None, vad_with_given: bool = True, language: str | None = None,
                         max_new_tokens: int = 128) -> list[str]:
    """The authors' inference (modeling_desta25.generate): the VAD runs on every clip, and a clip
    without speech gets " " even when a transcription is given; a clip with speech keeps its given
    text (given[i] not None) or gets Whisper's (<= 128 tokens, language detected unless forced),
    which stays "" when Whisper decodes nothing (no token, as the authors' code). The VAD listens to
    the first 30 s only, the window Whisper transcribes (mel): speech after it would otherwise send
    Whisper 30 s of silence to transcribe.
    vad_with_given=False: a given text is used as it is, without asking the VAD."""
    given = list(given) if given is not None else [None] * len(waves)
    texts, todo = list(given), []
    for i, (w, g) in enumerate(zip(waves, given)):
        if g is not None and not vad_with_given:
            continue
        if not vad.has_speech(w[:data.N_SAMPLES]):
            texts[i] = " "
        elif g is None:
            todo.append(i)
    if todo:
        for i, t in zip(todo, asr.transcribe(mel[todo], max_new_tokens=max_new_tokens, language=language)):
            texts[i] = t
    return texts
