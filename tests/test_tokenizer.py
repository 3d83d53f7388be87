"""desta.Tokenizer: the real Llama 3 `tokenizer.model` (from the llama-models wheel) against Meta's own
tiktoken tokenizer in that package, the same vocabulary through the tokenizer.json path against HF
`tokenizers`, and chat rendering token for token (SPEC 7)."""
import json
from pathlib import Path

import pytest

import desta
from tools import tokenizer_files

CORPUS = [
    "Hello world!",
    "  leading spaces, runs    of   spaces\n\n\nand newlines\r\n\tand tabs\t\t",
    "Numbers: 1 12 123 1234 12345 3.14159 1,234,567 2024-07-26 0xFF",
    "Unicode: café naïve Ærøskøbing Straße Ελληνικά русский 日本語のテキスト 한국어 עברית العربية",
    "Emoji 😀🎉👩‍👩‍👧 and symbols ©®™ — “quotes” ‘single’ …",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # code\n\n\n",
    "I'm sure you're right, they'll say WE'VE DONE it; she'd've known. IT'S fine",
    "Special-token text stays text: <|eot_id|> <|begin_of_text|> <|reserved_special_token_87|>",
    "<start_audio><|AUDIO|><end_audio>\nWhat can you hear from the audio?",
    "trailing space ",
    "",
    " ",
    "\n",
    "a" * 300 + " " + "ab" * 100,
]


def llama3_path():
    models = pytest.importorskip("llama_models", reason="the llama-models wheel ships the Llama 3 tokenizer.model")
    path = Path(models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} not in the installed llama-models wheel")
    return path


@pytest.fixture(scope="module")
def llama3():
    return desta.Tokenizer.from_pretrained(llama3_path().parent)


def test_llama3_matches_meta_reference(llama3):
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    ref = MetaTokenizer(llama3_path())
    for text in CORPUS:
        ours = llama3.encode(text)
        theirs = ref.encode(text, bos=False, eos=False, allowed_special=set(), disallowed_special=())
        assert ours == theirs, text
        assert llama3.decode(ours) == text
    assert llama3.encode("hi", bos=True)[0] == 128000


def test_llama3_special_ids(llama3):
    s = llama3.special
    assert len(s) == 256 and min(s.values()) == 128000 and max(s.values()) == 128255
    expected = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
                "<|reserved_special_token_1|>": 128003, "<|finetune_right_pad_id|>": 128004,
                "<|reserved_special_token_2|>": 128005, "<|start_header_id|>": 128006,
                "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
                "<|python_tag|>": 128010, "<|reserved_special_token_3|>": 128011,
                "<|reserved_special_token_87|>": 128095, "<|reserved_special_token_247|>": 128255}
    assert {k: s[k] for k in expected} == expected
    assert llama3.stop_ids == [128001, 128008, 128009] and llama3.eot_id == 128009
    # special tokens are atomic only where the renderer asks for them
    assert llama3.encode("<|eot_id|>", allow_special=True) == [128009]
    assert len(llama3.encode("<|eot_id|>")) > 1


def test_llama31_chat_tokens(llama3):
    enc = llama3.encode
    header = lambda role: [128006] + enc(role) + [128007] + enc("\n\n")
    msgs = [{"role": "system", "content": "Focus on the audio clips and instructions. "},
            {"role": "user", "content": "  What can you hear?\n"},
            {"role": "assistant", "content": "A dog."},
            {"role": "user", "content": "Louder?"}]
    expected = ([128000] + header("system")
                + enc("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                      "Focus on the audio clips and instructions.") + [128009]
                + header("user") + enc("What can you hear?") + [128009]
                + header("assistant") + enc("A dog.") + [128009]
                + header("user") + enc("Louder?") + [128009]
                + header("assistant"))
    assert llama3.apply_chat_template(msgs) == expected
    # the HF 3.1 template writes the date header even without a system message
    no_system = llama3.apply_chat_template(msgs[1:2], add_generation_prompt=False)
    assert no_system == ([128000] + header("system")
                         + enc("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n") + [128009]
                         + header("user") + enc("What can you hear?") + [128009])


def test_tokenizer_json_path_matches_hf(tmp_path, llama3):
    """The same vocabulary as tokenizer.json (Split regex + ByteLevel, as HF ships Llama 3): our
    merge-rank conversion must agree with HF `tokenizers` and with the tiktoken file."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers.convert_slow_tokenizer import TikTokenConverter

    # HF's own tiktoken -> tokenizer.json conversion, with the Llama 3 specials in id order
    hf_json = TikTokenConverter(vocab_file=str(llama3_path()), pattern=tokenizer_files.LLAMA3_PATTERN,
                                extra_special_tokens=tokenizer_files.LLAMA3_SPECIAL).converted()
    hf_json.save(str(tmp_path / "tokenizer.json"))
    ours = desta.Tokenizer.from_pretrained(tmp_path)
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours.chat_format == "llama3"
    for text in CORPUS[:-1]:
        assert ours.encode(text) == llama3.encode(text), text
    for text in CORPUS[:7]:  # HF treats special-token text as special: compare where there is none
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text


def gpt2_style_tokenizer_json(path, pre_tokenizer, chatml_template):
    """A small, real byte-level BPE trained by HF `tokenizers` on our corpus, with ChatML specials."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers, decoders

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(pre_tokenizers)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": chatml_template}))
    return tok


SMOL_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                 "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


@pytest.mark.parametrize("kind", ["digits+bytelevel", "bytelevel"])
def test_byte_level_bpe_matches_hf(tmp_path, kind):
    if kind == "bytelevel":
        pre = lambda p: p.ByteLevel(add_prefix_space=False, use_regex=True)
    else:  # SmolLM2's pre-tokenizer
        pre = lambda p: p.Sequence([p.Digits(individual_digits=True), p.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf = gpt2_style_tokenizer_json(tmp_path, pre, SMOL_TEMPLATE)
    ours = desta.Tokenizer.from_pretrained(tmp_path)
    extra = ["x  1", "a 1  2   3", "ab12cd  34 ", "  9", "\n\n1\n", "1.5e-3  ", "Ünïcödé 42x"]
    for text in CORPUS[:7] + CORPUS[9:] + extra:
        assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ours.encode(text)) == text


def test_chatml_rendering_matches_jinja(tmp_path):
    jinja2 = pytest.importorskip("jinja2")
    pre = lambda p: p.ByteLevel(add_prefix_space=False, use_regex=True)
    hf = gpt2_style_tokenizer_json(tmp_path, pre, SMOL_TEMPLATE)
    ours = desta.Tokenizer.from_pretrained(tmp_path)
    assert ours.chat_format == "chatml" and ours.default_system().startswith("You are a helpful AI assistant named SmolLM")
    template = jinja2.Environment().from_string(SMOL_TEMPLATE)
    for msgs in ([{"role": "user", "content": "Hello 123"}],
                 [{"role": "system", "content": "Focus on the audio clips and instructions."},
                  {"role": "user", "content": " spaced \n"}, {"role": "assistant", "content": "ok"}]):
        for gen in (True, False):
            text = template.render(messages=msgs, add_generation_prompt=gen)
            assert ours.render_chat(msgs, gen) == text
            assert ours.apply_chat_template(msgs, gen) == hf.encode(text, add_special_tokens=False).ids
    assert ours.stop_ids == sorted({ours.special["<|im_end|>"], ours.special["<|endoftext|>"]})


def test_tokenizer_errors(tmp_path):
    with pytest.raises(desta.CheckpointError, match="no tokenizer.json or tokenizer.model"):
        desta.Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.model").write_text("not base64 and no rank\n")
    with pytest.raises(desta.CheckpointError, match="tokenizer.model: line 1"):
        desta.Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram"}}))
    with pytest.raises(desta.CheckpointError, match="tokenizer.json: model.type='Unigram'"):
        desta.Tokenizer.from_pretrained(tmp_path)
