"""
train.py: adapter training under torchrun DDP (`torchrun --standalone --nproc_per_node=N train.py
[--preset=tiny|desta25] [--key=value ...]`): frozen Whisper and LLM, the Q-Former adapter trained on
self-generated targets, AdamW + cosine schedule, bf16 autocast, exact resume.

Not implemented yet: see the open issue "train.py: adapter training under torchrun DDP".
"""
