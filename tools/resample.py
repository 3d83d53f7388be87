"""
Band-limited resampling, for audio files whose rate is not Whisper's 16 kHz (data.load_audio) and for
synthesized speech (corpus/synthetic.py): a Kaiser-windowed sinc low-pass, applied polyphase as one
strided conv1d; ratios whose filter bank would be huge evaluate the sinc directly.
"""
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

# Resampler: Kaiser-windowed sinc low-pass, applied polyphase. Measured on sines: passband error < 1e-4
# up to 0.85 x the lower Nyquist, >100 dB rejection of tones above the new Nyquist.
RESAMPLE_ZEROS = 48                       # sinc zero crossings on each side of the centre tap
RESAMPLE_ROLLOFF = 0.94                   # cutoff as a fraction of the lower of the two Nyquists
RESAMPLE_BETA = 12.0                      # Kaiser window shape (~110 dB stopband)
RESAMPLE_MAX_TAPS = 1 << 24               # bigger polyphase banks (odd ratios) use the direct method


def _kaiser_sinc(d: torch.Tensor, cutoff: float, half_width: float) -> torch.Tensor:
    # ideal low-pass impulse response at distance d (in input samples) from the output instant, with
    # `cutoff` in cycles per input sample, tapered by a Kaiser window that reaches 0 at |d| = half_width
    x = (d / half_width).clamp(-1, 1)
    window = torch.special.i0(RESAMPLE_BETA * torch.sqrt(1 - x * x)) / float(np.i0(RESAMPLE_BETA))
    window = torch.where(d.abs() <= half_width, window, torch.zeros_like(window))
    return 2 * cutoff * torch.sinc(2 * cutoff * d) * window


def _resample_plan(sr_in: int, sr_out: int):
    # the ratio in lowest terms: every `down` input samples give exactly `up` output samples
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g
    cutoff = 0.5 * RESAMPLE_ROLLOFF * min(1.0, up / down)  # cycles per input sample
    half_width = RESAMPLE_ZEROS / (2 * cutoff)             # window half-length in input samples
    return up, down, cutoff, half_width


@functools.lru_cache(maxsize=16)
def _polyphase_bank(sr_in: int, sr_out: int) -> torch.Tensor:
    # output sample m*up + p sits at input time m*down + p*down/up; phase p's filter is the windowed sinc
    # sampled at the input taps m*down + k, k in [-pad, down + pad) -> one conv1d with stride `down`
    up, down, cutoff, half_width = _resample_plan(sr_in, sr_out)
    pad = math.ceil(half_width)
    k = torch.arange(-pad, down + pad, dtype=torch.float64)         # (K,)
    t = torch.arange(up, dtype=torch.float64)[:, None] * down / up  # (up, 1)
    return _kaiser_sinc(t - k, cutoff, half_width).float()          # (up, K)


def resample(audio, sr_in: int, sr_out: int):
    """Band-limited resampling along the last axis; numpy in -> numpy out, torch in -> torch out.

    Output length is ceil(n * sr_out / sr_in) and output sample j sits at input time j * sr_in / sr_out.
    """
    sr_in, sr_out = int(sr_in), int(sr_out)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if sr_in == sr_out:
        return audio
    is_numpy = not isinstance(audio, torch.Tensor)
    x = torch.from_numpy(np.asarray(audio, dtype=np.float32)) if is_numpy else audio.float()
    shape, n = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, n)  # (N, n)
    up, down, cutoff, half_width = _resample_plan(sr_in, sr_out)
    n_out = -(-n * up // down)  # ceil
    pad = math.ceil(half_width)
    if up * (down + 2 * pad) <= RESAMPLE_MAX_TAPS:
        bank = _polyphase_bank(sr_in, sr_out).to(x.device)                    # (up, K)
        n_blocks = -(-n_out // up)
        right = (n_blocks - 1) * down + bank.shape[1] - (pad + n)           # zeros past the end
        xp = F.pad(x[:, None], (pad, max(right, 0)))                         # (N, 1, pad + n + right)
        y = F.conv1d(xp, bank[:, None], stride=down)[..., :n_blocks]        # (N, up, n_blocks)
        y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, :n_out]           # interleave the phases
    else:
        y = _resample_direct(x, sr_in, sr_out, n_out)
    y = y.reshape(*shape, n_out)
    return y.numpy() if is_numpy else y


def _resample_direct(x: torch.Tensor, sr_in: int, sr_out: int, n_out: int, chunk: int = 4096):
    # for ratios whose polyphase bank would be huge (e.g. 44099 -> 16000): evaluate the windowed sinc
    # afresh for each output sample, a chunk of outputs at a time
    _, _, cutoff, half_width = _resample_plan(sr_in, sr_out)
    pad = math.ceil(half_width) + 1
    xp = F.pad(x, (pad, pad)).double()                                   # (N, n + 2 pad)
    taps = torch.arange(-pad + 1, pad + 1)                                # (2 pad,)
    out = []
    for j0 in range(0, n_out, chunk):
        t = torch.arange(j0, min(j0 + chunk, n_out), dtype=torch.float64) * sr_in / sr_out  # (c,)
        idx = t.floor().long()[:, None] + taps                           # (c, 2 pad) input indices
        h = _kaiser_sinc(t[:, None] - idx, cutoff, half_width)           # (c, 2 pad)
        out.append((xp[:, idx + pad] * h).sum(-1))                       # (N, c)
    return torch.cat(out, dim=1).float()
