"""Silero VAD (16 kHz), plain PyTorch: decides "is there speech?" before the ASR step (SPEC 5)."""
from __future__ import annotations

import collections
import importlib.util
import io
import math
import os
import pickle
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Silero VAD (16 kHz), plain PyTorch: decides "is there speech?" before the ASR step.
#
# DeSTA2.5's inference code runs Silero VAD on every clip (`get_speech_timestamps` with its default
# settings); a clip with no speech segment gets the transcription " " instead of Whisper's output.
#
# The network, per 512-sample window (32 ms) with the last 64 samples of the previous window in front:
#     576 samples -> reflect-pad 64 on the right -> STFT as a conv (fixed basis, n_fft 256, hop 128)
#     -> magnitude (129 bins x 4 frames) -> 4 x (conv k3 + ReLU), strides 1,2,2,1 -> 128 x 1
#     -> LSTM cell (128, state carried across windows) -> ReLU -> 1x1 conv -> sigmoid -> P(speech).
#
# Weights. The silero-vad wheel ships two different 16 kHz checkpoints:
#   - `silero_vad.jit` (and the .onnx files, same weights): what `load_silero_vad()` / torch.hub give,
#     hence what DeSTA2.5 used. We read only its tensors, with a restricted unpickler (not torch.jit,
#     which torch 2.13 deprecates; none of its code is run). This is the default.
#   - `silero_vad_16k.safetensors` (keys conv1..conv4, lstm_cell, final_conv, stft_conv): a different
#     training run (same STFT basis, other weights; probabilities differ by up to ~0.35 on jfk.flac,
#     speech/no-speech decisions agree on the fixtures). Loadable with `from_pretrained(path)`.

VAD_SAMPLE_RATE = 16000
VAD_WINDOW = 512         # samples per decision (32 ms)
VAD_CONTEXT = 64         # samples of the previous window prepended to each window
VAD_N_FFT = 256
VAD_HOP = 128
VAD_N_BINS = VAD_N_FFT // 2 + 1  # 129
VAD_HIDDEN = 128         # LSTM state size
VAD_STRIDES = (1, 2, 2, 1)
VAD_CHANNELS = (VAD_N_BINS, 128, 64, 64, 128)

# Defaults of silero's get_speech_timestamps (what DeSTA2.5 calls with no arguments).
VAD_THRESHOLD = 0.5
VAD_NEG_OFFSET = 0.15    # leave speech only below threshold - 0.15 (hysteresis)
VAD_MIN_SPEECH_MS = 250
VAD_MIN_SILENCE_MS = 100
VAD_SPEECH_PAD_MS = 30

# The wheel the weights are read from, pinned (requirements-models.txt): silero releases retrain the model,
# and the authors' code took whatever torch.hub's snakers4/silero-vad master held on the day it ran.
# The version is recorded with every output that used the VAD (SileroVAD.source).
SILERO_VAD_VERSION = "6.2.3"
SILERO_PIP_HINT = f"pip install --no-deps silero-vad=={SILERO_VAD_VERSION}"
SILERO_JIT_FILE = "silero_vad.jit"
SILERO_SAFETENSORS_FILE = "silero_vad_16k.safetensors"
SILERO_DEFAULT_FILE = SILERO_JIT_FILE

# TorchScript parameter name (16 kHz submodule `_model`) -> our name (= the safetensors key).
_JIT_TO_OURS = {
    "stft.forward_basis_buffer": "stft_conv.weight",
    **{f"encoder.{i}.reparam_conv.{p}": f"conv{i + 1}.{p}" for i in range(4) for p in ("weight", "bias")},
    **{f"decoder.rnn.{p}": f"lstm_cell.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "decoder.decoder.2.weight": "final_conv.weight",
    "decoder.decoder.2.bias": "final_conv.bias",
}


def silero_data_file(name: str = SILERO_DEFAULT_FILE) -> str:
    """Path of a file in the installed silero-vad wheel's data folder (the package is not imported:
    its import calls torch.set_num_threads(1))."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"Silero VAD weights need the silero-vad wheel: `{SILERO_PIP_HINT}`")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; reinstall the silero-vad wheel: `{SILERO_PIP_HINT}`")
    return path


def silero_wheel_version() -> str | None:
    """The installed silero-vad wheel's version (from its metadata; the package is not imported)."""
    import importlib.metadata
    try:
        return importlib.metadata.version("silero-vad")
    except importlib.metadata.PackageNotFoundError:
        return None


class _ScriptModule:
    """Inert stand-in for a pickled TorchScript module: the unpickler just fills its __dict__."""


_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
                   "LongStorage": torch.int64, "IntStorage": torch.int32, "BoolStorage": torch.bool}


def _rebuild_tensor(storage, offset, size, stride, *_):  # requires_grad, hooks: irrelevant here
    return torch.as_strided(storage, size, stride, offset).clone()


class _ScriptWeightsUnpickler(pickle.Unpickler):
    """Reads the module tree + tensors of a TorchScript archive's data.pkl without torch.jit (deprecated)
    and without running any of its code: `__torch__.*` classes become inert _ScriptModule objects, and
    only the few torch helpers a module pickle needs are allowed."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _ScriptModule
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):  # build_intlist etc.: identity
            return lambda x: x
        raise pickle.UnpicklingError(f"{self.path}: unexpected {module}.{name} in a Silero VAD TorchScript file")

    def persistent_load(self, pid):  # ('storage', dtype, key, location, numel)
        _, dtype, key, _, numel = pid
        raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        return torch.frombuffer(raw, dtype=dtype)[:numel] if numel else torch.zeros(0, dtype=dtype)


def _read_jit_weights(path: str) -> dict:
    # Only the 16 kHz submodule's tensors are read; the 8 kHz model (`_model_8k`) is ignored.
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a TorchScript archive (expected a zip; or pass a .safetensors file)")
    with zipfile.ZipFile(path) as archive:
        pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise ValueError(f"{path}: not a TorchScript archive (no <name>/data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        root = _ScriptWeightsUnpickler(io.BytesIO(archive.read(pkl[0])), archive, prefix, path).load()
    if not hasattr(root, "_model"):
        raise ValueError(f"{path}: TorchScript file has no `_model` (16 kHz) submodule; not a Silero VAD model")
    out = {}
    for jit_key, ours in _JIT_TO_OURS.items():
        obj = root._model
        for part in jit_key.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.Tensor):
            out[ours] = obj
    return out


def _read_safetensors_weights(path: str) -> dict:
    from safetensors.torch import load_file
    return load_file(path)


class SileroVAD(nn.Module):
    def __init__(self):
        super().__init__()
        # rows 0..128: windowed cos basis (real part), rows 129..257: windowed -sin basis (imag part)
        self.stft_conv = nn.Conv1d(1, 2 * VAD_N_BINS, VAD_N_FFT, stride=VAD_HOP, bias=False)
        c = VAD_CHANNELS
        self.conv1 = nn.Conv1d(c[0], c[1], 3, stride=VAD_STRIDES[0], padding=1)
        self.conv2 = nn.Conv1d(c[1], c[2], 3, stride=VAD_STRIDES[1], padding=1)
        self.conv3 = nn.Conv1d(c[2], c[3], 3, stride=VAD_STRIDES[2], padding=1)
        self.conv4 = nn.Conv1d(c[3], c[4], 3, stride=VAD_STRIDES[3], padding=1)
        self.lstm_cell = nn.LSTMCell(VAD_HIDDEN, VAD_HIDDEN)
        self.final_conv = nn.Conv1d(VAD_HIDDEN, 1, 1)

    @classmethod
    def from_pretrained(cls, path: str | None = None) -> "SileroVAD":
        """path: a silero `.jit` (TorchScript, weights only are read) or `.safetensors` file;
        None = the silero-vad wheel's `silero_vad.jit` (the weights silero's own API runs)."""
        source = path
        if path is None:
            path, version = silero_data_file(), silero_wheel_version()
            if version != SILERO_VAD_VERSION:  # other weights: speech/no-speech decisions may differ
                import warnings
                warnings.warn(f"silero-vad {version} is installed; the pinned weights are {SILERO_VAD_VERSION} "
                              f"(`{SILERO_PIP_HINT}`)")
            source = f"silero-vad {version} {os.path.basename(path)}"
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Silero VAD weights file not found: {path}")
        tensors = _read_safetensors_weights(path) if path.endswith(".safetensors") else _read_jit_weights(path)
        model = cls()
        expected = model.state_dict()
        for key, ref in expected.items():
            if key not in tensors:
                raise KeyError(f"{path}: missing tensor '{key}' (expected shape {tuple(ref.shape)})")
            if tuple(tensors[key].shape) != tuple(ref.shape):
                raise ValueError(f"{path}: tensor '{key}' has shape {tuple(tensors[key].shape)}, "
                                 f"expected {tuple(ref.shape)}")
        model.load_state_dict({k: tensors[k].float() for k in expected})
        model.source = source  # what outputs record: "silero-vad 6.2.3 silero_vad.jit", or the file given
        return model.eval().requires_grad_(False)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (N, 576) = 64 context + 512 new samples -> (N, 128) features. Stateless, so every
        window of every clip goes through in one batch."""
        x = F.pad(frames, (0, VAD_CONTEXT), mode="reflect").unsqueeze(1)  # (N, 1, 640)
        x = self.stft_conv(x)                                            # (N, 258, 4)
        x = torch.sqrt(x[:, :VAD_N_BINS] ** 2 + x[:, VAD_N_BINS:] ** 2)  # (N, 129, 4) magnitude
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))                                          # ... -> (N, 128, 1)
        return x.squeeze(-1)

    def decode(self, feats: torch.Tensor, state: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """feats (B, N, 128), windows in time order; state (2, B, 128) = (h, c) or None (zeros).
        -> probs (B, N), new state (2, B, 128). The LSTM cell is the only part that runs window by window."""
        B, N, _ = feats.shape
        if state is None:
            state = feats.new_zeros(2, B, VAD_HIDDEN)
        h, c = state[0], state[1]
        hs = []
        for n in range(N):
            h, c = self.lstm_cell(feats[:, n], (h, c))
            hs.append(h)
        if not hs:
            return feats.new_zeros(B, 0), torch.stack([h, c])
        hs = torch.stack(hs, dim=1)                                     # (B, N, 128)
        logits = self.final_conv(F.relu(hs).reshape(B * N, VAD_HIDDEN, 1))  # (B*N, 1, 1)
        return torch.sigmoid(logits).view(B, N), torch.stack([h, c])

    def forward(self, frames: torch.Tensor, state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Streaming step(s): frames (B, N, 576) -> probs (B, N), state (2, B, 128)."""
        B, N, L = frames.shape
        if L != VAD_CONTEXT + VAD_WINDOW:
            raise ValueError(f"frames: last dim must be {VAD_CONTEXT + VAD_WINDOW} (64 context + 512 new), got {L}")
        feats = self.encode(frames.reshape(B * N, L)).view(B, N, VAD_HIDDEN)
        return self.decode(feats, state)

    @torch.inference_mode()
    def speech_probs(self, audio_16k: np.ndarray | torch.Tensor) -> torch.Tensor:
        """audio_16k: (T,) or (B, T) float waveform at 16 kHz. -> (N,) or (B, N) speech probabilities,
        one per 512-sample window, N = ceil(T / 512) (the last window is zero-padded, as silero does);
        the state starts at zero and is carried across the windows of each clip."""
        x = _as_waveform(audio_16k).to(self.stft_conv.weight.device)
        squeeze = x.dim() == 1
        x = x[None] if squeeze else x                                   # (B, T)
        B, T = x.shape
        N = math.ceil(T / VAD_WINDOW)
        if N == 0:
            return x.new_zeros(0) if squeeze else x.new_zeros(B, 0)
        # context of window 0 = zeros; tail zero-padded to whole windows
        x = F.pad(x, (VAD_CONTEXT, N * VAD_WINDOW - T))                 # (B, 64 + N*512)
        frames = x.unfold(1, VAD_CONTEXT + VAD_WINDOW, VAD_WINDOW)      # (B, N, 576)
        probs, _ = self(frames)
        return probs[0] if squeeze else probs

    def speech_segments(self, audio_16k, threshold: float = VAD_THRESHOLD,
                        min_speech_ms: int = VAD_MIN_SPEECH_MS, min_silence_ms: int = VAD_MIN_SILENCE_MS,
                        speech_pad_ms: int = VAD_SPEECH_PAD_MS) -> list[tuple[float, float]]:
        """One clip (T,) at 16 kHz -> [(start_s, end_s), ...] speech segments (silero's post-processing)."""
        x = _as_waveform(audio_16k)
        if x.dim() != 1:
            raise ValueError(f"speech_segments takes one mono clip (T,), got shape {tuple(x.shape)}")
        probs = self.speech_probs(x).tolist()
        segs = segments_from_probs(probs, x.shape[0], threshold, min_speech_ms, min_silence_ms, speech_pad_ms)
        return [(s / VAD_SAMPLE_RATE, e / VAD_SAMPLE_RATE) for s, e in segs]

    def has_speech(self, audio_16k, threshold: float = VAD_THRESHOLD, min_speech_ms: int = VAD_MIN_SPEECH_MS) -> bool:
        """True iff silero's post-processing finds at least one speech segment (DeSTA2.5's test)."""
        return len(self.speech_segments(audio_16k, threshold, min_speech_ms)) > 0


def _as_waveform(audio) -> torch.Tensor:
    x = torch.as_tensor(audio)
    if not x.is_floating_point():
        raise TypeError(f"audio must be a float waveform in [-1, 1] at 16 kHz, got dtype {x.dtype}")
    if x.dim() not in (1, 2):
        raise ValueError(f"audio must be (T,) or (B, T) mono at 16 kHz, got shape {tuple(x.shape)}")
    return x.float()


def segments_from_probs(probs: list[float], num_samples: int, threshold: float = VAD_THRESHOLD,
                        min_speech_ms: int = VAD_MIN_SPEECH_MS, min_silence_ms: int = VAD_MIN_SILENCE_MS,
                        speech_pad_ms: int = VAD_SPEECH_PAD_MS) -> list[tuple[int, int]]:
    """Per-window probabilities -> [(start, end)] in samples, as silero's get_speech_timestamps with
    no max segment length: enter speech at p >= threshold, leave after p < threshold - 0.15 has lasted
    min_silence_ms, drop segments not longer than min_speech_ms, then pad each side by speech_pad_ms
    (splitting gaps shorter than two pads between neighbours)."""
    sr = VAD_SAMPLE_RATE
    neg_threshold = max(threshold - VAD_NEG_OFFSET, 0.01)
    min_speech, min_silence, pad = sr * min_speech_ms / 1000, sr * min_silence_ms / 1000, sr * speech_pad_ms / 1000
    segs: list[list[int]] = []
    start: int | None = None  # start sample of the open segment (None = not in speech)
    silence_from = 0             # where the current low-probability run began (0 = none)
    for i, p in enumerate(probs):
        t = i * VAD_WINDOW
        if p >= threshold:
            silence_from = 0     # speech again: forget the tentative end
            if start is None:
                start = t
                continue
        if start is not None and p < neg_threshold:
            silence_from = silence_from or t
            if t - silence_from >= min_silence:
                if silence_from - start > min_speech:
                    segs.append([start, silence_from])
                start, silence_from = None, 0
    if start is not None and num_samples - start > min_speech:
        segs.append([start, num_samples])
    # pad; a gap narrower than two pads is shared half and half
    for k, seg in enumerate(segs):
        if k == 0:
            seg[0] = int(max(0, seg[0] - pad))
        if k < len(segs) - 1:
            gap = segs[k + 1][0] - seg[1]
            if gap < 2 * pad:
                seg[1] += int(gap // 2)
                segs[k + 1][0] = int(max(0, segs[k + 1][0] - gap // 2))
            else:
                seg[1] = int(min(num_samples, seg[1] + pad))
                segs[k + 1][0] = int(max(0, segs[k + 1][0] - pad))
        else:
            seg[1] = int(min(num_samples, seg[1] + pad))
    return [(s, e) for s, e in segs]

