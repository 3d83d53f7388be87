"""asr/: the speech-recognition step of DeSTA2.5's inference (SPEC 5), beside the model.

Before the model hears a clip, the official pipeline decides whether the clip has speech (Silero VAD)
and, if it does, transcribes it with Whisper (the same checkpoint whose encoder feeds the adapter).
The transcription goes into the chat context after the audio vectors. Neither step is trained, so
they live here rather than in desta.py:

    pipeline.py  the step itself: VAD, then Whisper on the clips with speech (transcribe_if_speech), and
                 loading both so that DeSTA and the ASR share one encoder (load_asr)
    vad.py       Silero VAD in plain PyTorch, weights read from the pinned silero-vad wheel
    whisper.py   Whisper's text decoder and greedy, batched, KV-cached transcription
"""
