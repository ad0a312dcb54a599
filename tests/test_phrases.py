"""The phrasebook (minimind/phrases.yaml): every phrase in both languages, no English in zh."""

import re
import string

from minimind import phrases

# A run of four English words outside a code span and a {field}: a sentence, not a name.
ENGLISH_RUN = re.compile(r"[A-Za-z]+(?:[ ,;]+[A-Za-z]+){3,}")


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_phrase_has_both_languages_and_valid_fields():
    assert len(phrases.keys()) > 250
    for key in phrases.keys():
        assert sorted(phrases.languages(key)) == sorted(phrases.LANGS), key
        for lang in phrases.LANGS:
            text = phrases.text(key, lang)
            assert isinstance(text, str), (key, lang)
            # raises on an unbalanced brace; `key` and `lang` are phrase()'s own arguments, never a field
            assert not _fields(text) & {"key", "lang"}, (key, lang, text)


def test_no_zh_phrase_holds_an_english_sentence():
    found = []
    for key in phrases.keys():
        zh = re.sub(r"`[^`]*`|\{[^}]*\}", "", phrases.text(key, "zh"))
        found += [(key, run) for run in ENGLISH_RUN.findall(zh)]
    assert found == [], found


def test_a_phrase_is_filled_and_an_unknown_language_is_english():
    assert phrases.phrase("offline.title", "zh", v="0.1.1", goal="g") == "实验 0.1.1:g"
    assert phrases.phrase("offline.title", "fr", v="0.1.1", goal="g") == phrases.phrase("offline.title", "en", v="0.1.1", goal="g")
    assert phrases.group("verdict", "zh")["meets"] == "达到"
