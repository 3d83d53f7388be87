"""
IFEval instruction checkers: Google's (as VoiceBench ships them) and Speech-IFEval's variants.
"""

import json
import re
from collections import Counter

# -----------------------------------------------------------------------------------------------------
# 4. IFEval instruction checkers
#
# Google's IFEval checkers (as VoiceBench ships them) and the variants Speech-IFEval
# (kehanlu/Speech-IFEval instruction_following_eval/instructions.py) changed:
#   - bullets: lines starting with '*', '-', '•' or a digit; a literal '\n' counts as a newline
#   - paragraphs: split on '***' or on newlines; an empty middle paragraph fails
#   - english_capital / english_lowercase: str.isupper() / str.islower() only (no language check)
#   - repeat_prompt: the response (quotes stripped) *starts with* the prompt to repeat
# Each checker is check(response, **kwargs) -> bool; kwargs are the row's, by their official names.
# A checker that needs a package we do not have raises MissingDependency; the scorer counts those.

class MissingDependency(Exception):
    pass


_RELATIONS = ("less than", "at least")


def _compare(count, threshold, relation):
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")


def count_words(text):
    return len(re.findall(r"\w+", text))  # nltk RegexpTokenizer(r"\w+"), as IFEval counts


# Punkt (what IFEval uses) treats these as abbreviations, not sentence ends.
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "u.s",
                  "a.m", "p.m", "inc", "ltd", "co", "corp", "no", "fig", "approx", "dept", "est", "vol"}


# After an ellipsis, punkt's orthographic heuristic starts a new sentence at a lower-case word that its
# English model has seen capitalised (or never seen lower-case at a sentence start): the closed-class
# words and sentence adverbs that open sentences ("...again", "...and"), not content words ("a...
# meeting"). This list stands in for that table (nltk's punkt data is a download).
_PUNKT_LOWER_STARTERS = set("""
a an the and but or nor so yet then again also still now well oh ah just maybe perhaps anyway however
instead meanwhile finally suddenly even only though although because while after before if when where
what who whom whose which why how there here this that these those it its i you he she we they me him
her us them my your his our their mine yours some any all no not yes one each every both either neither
in on at for with to of as by from into about over under like unlike do does did is are was were be
""".split())


def count_sentences(text):
    """Number of sentences. IFEval uses nltk's punkt model; with nltk and its punkt data installed we
    use it, else this approximation of punkt on English: a sentence ends at '.', '!' or '?' (closing
    quotes/brackets may follow) before whitespace or the end, unless the word ending in '.' is an
    abbreviation, an initial or a list marker ('1.' opening a line), or an ellipsis '...' is followed by
    a lower-case word other than a sentence opener (_PUNKT_LOWER_STARTERS: "invited... again." is two
    sentences, "at a... meeting, and" one, as the authors' scorer counts on Speech-IFEval). '…' is no
    sentence end for punkt (only . ! ? are)."""
    try:
        import nltk  # optional: the reference tokenizer
        return len(nltk.tokenize.sent_tokenize(text))
    except (ImportError, LookupError):
        pass
    n, start = 0, 0
    for m in re.finditer(r"[.!?]+[\"'”’)\]]*(?=\s|$)", text):
        mark = m.group().rstrip("\"'”’)]")
        if mark == ".":
            before = text[start:m.start()]
            word = re.findall(r"[\w.]+$", before)
            word = word[0].lower() if word else ""
            line_start = not before[:len(before) - len(word)].split("\n")[-1].strip()
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or (word.isdigit() and line_start):
                continue
        elif mark.startswith(".."):
            following = re.match(r"\s*([\w']+)", text[m.end():])
            if following and following.group(1)[0].islower() and following.group(1).lower() not in _PUNKT_LOWER_STARTERS:
                continue
        if text[start:m.end()].strip(" \n\t.!?…\"'”’)]"):
            n += 1
        start = m.end()
    return n + bool(text[start:].strip())


def _capital_words(text):
    # nltk.word_tokenize approximation: hyphenated words stay one token, punctuation is separate.
    return [w for w in re.findall(r"\w+(?:[-']\w+)*|[^\w\s]", text) if w.isupper()]


def _english(text):
    try:
        import langdetect  # optional, as in IFEval
    except ImportError:
        raise MissingDependency("langdetect") from None
    try:
        return langdetect.detect(text) == "en"
    except langdetect.LangDetectException:
        return True  # IFEval counts an undetectable language as followed


def check_keywords(response, *, keywords):
    return all(re.search(k, response, flags=re.IGNORECASE) for k in keywords)


def check_keyword_frequency(response, *, keyword, frequency, relation):
    return _compare(len(re.findall(keyword.strip(), response, flags=re.IGNORECASE)), frequency, relation)


def check_forbidden_words(response, *, forbidden_words):
    return not any(re.search(r"\b" + w + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words)


def check_letter_frequency(response, *, letter, let_frequency, let_relation):
    if len(letter) != 1 or not letter.isalpha():
        raise ValueError(f"letter must be one ASCII letter, got {letter!r}")
    return _compare(Counter(response.lower())[letter.lower()], let_frequency, let_relation)


def check_response_language(response, *, language):
    try:
        import langdetect
    except ImportError:
        raise MissingDependency("langdetect") from None
    try:
        return langdetect.detect(response) == language
    except langdetect.LangDetectException:
        return True


def check_number_sentences(response, *, num_sentences, relation):
    return _compare(count_sentences(response), num_sentences, relation)


def _paragraphs_ok(paragraphs, num_paragraphs):
    # Empty pieces at either end do not count; an empty piece in the middle fails the check.
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1
            else:
                return False
    return count == num_paragraphs


def check_paragraphs_google(response, *, num_paragraphs):
    return _paragraphs_ok(re.split(r"\s?\*\*\*\s?", response), num_paragraphs)


def check_paragraphs_speech_ifeval(response, *, num_paragraphs):
    return _paragraphs_ok(re.split(r"\s*\*\*\*\s*|\n+", response.strip()), num_paragraphs)


def check_number_words(response, *, num_words, relation):
    return _compare(count_words(response), num_words, relation)


def check_nth_paragraph_first_word(response, *, num_paragraphs, nth_paragraph, first_word):
    paragraphs = re.split(r"\n\n", response)
    count = sum(bool(p.strip()) for p in paragraphs)
    if not 1 <= nth_paragraph <= count:
        return False
    paragraph = paragraphs[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    word = re.split(r"[.,?!'\"]", word, maxsplit=1)[0].lower()
    return count == num_paragraphs and word == first_word.lower()


def check_placeholders(response, *, num_placeholders):
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def check_postscript(response, *, postscript_marker):
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, response.lower(), flags=re.MULTILINE))


def check_bullets_google(response, *, num_bullets):
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def check_bullets_speech_ifeval(response, *, num_bullets):
    text = response.replace("\\n", "\n")
    count = sum(len(re.findall(p, text, flags=re.MULTILINE))
                for p in (r"^\s*\*[^\*].*$", r"^\s*-.*$", r"^\s*•.*$", r"^\s*\d.*$"))
    return count == num_bullets


CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def check_constrained_response(response):
    return any(option in response.strip() for option in CONSTRAINED_RESPONSES)


def check_highlights(response, *, num_highlights):
    single = [h for h in re.findall(r"\*[^\n\*]*\*", response) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", response) if h[2:-2].strip()]
    return len(single) + len(double) >= num_highlights


def check_sections(response, *, section_spliter, num_sections):
    sections = re.split(r"\s?" + section_spliter.strip() + r"\s?\d+\s?", response)
    return len(sections) - 1 >= num_sections


def check_json(response):
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        text = text.removeprefix(fence)
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def check_title(response):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def check_two_responses(response):
    valid = []
    parts = response.split("******")
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part)
        elif i not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def check_repeat_prompt_google(response, *, prompt_to_repeat):
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def check_repeat_prompt_speech_ifeval(response, *, prompt_to_repeat):
    return response.strip().lower().strip("\"'").startswith(prompt_to_repeat.strip().lower())


def check_end_phrase(response, *, end_phrase):
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def check_capital_word_frequency(response, *, capital_frequency, capital_relation):
    return _compare(len(_capital_words(response)), capital_frequency, capital_relation)


def check_capital_google(response):
    return response.isupper() and _english(response)


def check_lowercase_google(response):
    return response.islower() and _english(response)


def check_capital_speech_ifeval(response):
    return response.isupper()


def check_lowercase_speech_ifeval(response):
    return response.islower()


def check_no_comma(response):
    return "," not in response


def check_quotation(response):
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


GOOGLE_IFEVAL_CHECKERS = {
    "keywords:existence": check_keywords,
    "keywords:frequency": check_keyword_frequency,
    "keywords:forbidden_words": check_forbidden_words,
    "keywords:letter_frequency": check_letter_frequency,
    "language:response_language": check_response_language,
    "length_constraints:number_sentences": check_number_sentences,
    "length_constraints:number_paragraphs": check_paragraphs_google,
    "length_constraints:number_words": check_number_words,
    "length_constraints:nth_paragraph_first_word": check_nth_paragraph_first_word,
    "detectable_content:number_placeholders": check_placeholders,
    "detectable_content:postscript": check_postscript,
    "detectable_format:number_bullet_lists": check_bullets_google,
    "detectable_format:constrained_response": check_constrained_response,
    "detectable_format:number_highlighted_sections": check_highlights,
    "detectable_format:multiple_sections": check_sections,
    "detectable_format:json_format": check_json,
    "detectable_format:title": check_title,
    "combination:two_responses": check_two_responses,
    "combination:repeat_prompt": check_repeat_prompt_google,
    "startend:end_checker": check_end_phrase,
    "change_case:capital_word_frequency": check_capital_word_frequency,
    "change_case:english_capital": check_capital_google,
    "change_case:english_lowercase": check_lowercase_google,
    "punctuation:no_comma": check_no_comma,
    "startend:quotation": check_quotation,
}
SPEECH_IFEVAL_CHECKERS = {
    **GOOGLE_IFEVAL_CHECKERS,
    "detectable_format:number_bullet_lists": check_bullets_speech_ifeval,
    "length_constraints:number_paragraphs": check_paragraphs_speech_ifeval,
    "change_case:english_capital": check_capital_speech_ifeval,
    "change_case:english_lowercase": check_lowercase_speech_ifeval,
    "combination:repeat_prompt": check_repeat_prompt_speech_ifeval,
}
# Checks whose reference implementation needs nltk (tokenizers); ours approximates them without it.
APPROXIMATE_WITHOUT_NLTK = ("length_constraints:number_sentences", "change_case:capital_word_frequency")
# Google checkers that need langdetect (Speech-IFEval's case checks dropped that part).
NEEDS_LANGDETECT = ("language:response_language", "change_case:english_capital", "change_case:english_lowercase")


def _has_module(name):
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def follows_instruction(checkers, instruction_id, response, kwargs, where=""):
    """Strict IFEval: an empty response follows nothing; otherwise the checker decides."""
    if instruction_id not in checkers:
        raise ValueError(f"{where}: unknown instruction id {instruction_id!r}")
    if not response.strip():
        return False
    try:
        return bool(checkers[instruction_id](response, **kwargs))
    except TypeError as e:  # wrong or missing kwargs: name the row, not a stack frame
        raise ValueError(f"{where}: bad kwargs {kwargs} for {instruction_id}: {e}") from None


def loose_variants(response):
    """IFEval's 'loose' mode: the response, without its first and/or last line, with '*' removed."""
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *[c.replace("*", "") for c in cut]]
