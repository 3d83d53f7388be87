"""
generate.py: the KV-cached batched generation engine (static cache, batched prefill from token ids or
embeddings, greedy / temperature / top-p sampling, stop ids, continuous batching), self-generation of
training targets (`python generate.py selfgen ...`, what `make data` calls), and inference on audio
files (`python generate.py --audio x.wav --prompt "..."`).

Not implemented yet: see the open issue "generate.py: a fast KV-cached batched generation engine".
"""
