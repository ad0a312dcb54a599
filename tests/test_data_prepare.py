"""`minimind data prepare` and the knowledge bank: streaming, bad lines, caches, memory."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import decoders, pre_tokenizers

from corpus import jsonstream, knowledge, prepare
from corpus.fastencode import batch_encoder, memo_is_exact
from corpus.knowledge import load_bank, prepare_knowledge
from corpus.prepare import TokenCache, prepare_pretrain
from corpus.tokenizer import BOS_ID, EOS_ID, encode, load_tokenizer, train_tokenizer
from minimind.errors import MinimindError

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the capital of France is Paris and Lyon lies on the Rhône while Osaka is in Japan "
         "people speak French Japanese and Spanish 1,200 inhabitants about million").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    train_tokenizer(sentences(500), vocab_size=600).save(str(path))
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_path):
    return load_tokenizer(tokenizer_path)


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good(text: str) -> str:
    return json.dumps({"text": text}, ensure_ascii=False)


# ---------------------------------------------------------------- prepare_pretrain


def test_documents_are_bos_text_eos(tmp_path, tokenizer_path, tok):
    texts = sentences(300, seed=1) + ["Ünïcödé  with\ttabs and 北京 🙂", "  leading and trailing  "]
    source = write_jsonl(tmp_path / "data.jsonl", [good(t) for t in texts])
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False, chunk_bytes=4096)
    assert cache.num_docs == len(texts) and cache.bad_lines == []
    for i, text in enumerate(texts):
        doc = cache.doc(i)
        assert doc.dtype == np.uint16
        assert doc.tolist() == [BOS_ID, *encode(tok, text), EOS_ID]
    assert cache.num_tokens == int(cache.offsets[-1]) == len(cache.tokens)
    assert cache.meta["num_docs"] == len(texts) and cache.meta["vocab_size"] == tok.get_vocab_size()
    assert cache.meta["source"] == str(source.resolve())
    with pytest.raises(IndexError):
        cache.doc(len(texts))


def test_last_line_without_newline_and_crlf_are_read(tmp_path, tokenizer_path):
    source = tmp_path / "data.jsonl"
    source.write_bytes(b'{"text": "one"}\r\n{"text": "two"}\r\n{"text": "three"}')
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)
    assert cache.num_docs == 3 and cache.bad_lines == []


def test_a_few_bad_lines_are_reported_by_line_number(tmp_path, tokenizer_path):
    lines = [good(t) for t in sentences(300, seed=2)]
    lines[56] = '{"text": "unterminated'
    source = write_jsonl(tmp_path / "data.jsonl", lines)
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False, chunk_bytes=1024)
    assert cache.bad_lines == [57]  # 1-based line numbers
    assert cache.num_docs == 299
    assert cache.meta["bad_reasons"] == {"invalid JSON": 1}


def test_too_many_bad_lines_fail_naming_them_and_leave_no_cache(tmp_path, tokenizer_path):
    lines = [good(t) for t in sentences(100, seed=3)]
    lines[2] = json.dumps({"text": ""})
    lines[8] = json.dumps({"content": "no text key"})
    lines[9] = json.dumps({"text": 42})
    lines[40] = "not json at all"
    lines[41] = "{}"
    source = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(MinimindError) as err:
        prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)
    message = str(err.value)
    assert "\n" not in message and str(source) in message
    assert "5 of 100 lines" in message and "lines 3, 9, 10, 41, 42" in message
    assert not [p for p in (tmp_path / "cache").iterdir()]  # nothing half-built is left to train on
    # The same file passes when the user allows more bad lines.
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", max_bad_share=0.1, progress=False)
    assert cache.bad_lines == [3, 9, 10, 41, 42] and cache.num_docs == 95


def test_blank_lines_are_skipped_and_counted_apart_from_bad_ones(tmp_path, tokenizer_path):
    """20 blank or whitespace-only lines in 60 would be 33% malformed; they are layout, not damage."""
    lines = []
    for i, text in enumerate(sentences(40, seed=4)):
        lines.append(good(text))
        if i % 2:
            lines.append(" \t" if i % 4 == 1 else "")
    lines[0] = "{broken"  # one real bad line: 1 of 40 non-blank lines
    source = write_jsonl(tmp_path / "data.jsonl", lines)
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", max_bad_share=0.05, progress=False)
    assert cache.bad_lines == [1] and cache.meta["blank_lines"] == 20 and cache.num_docs == 39
    assert cache.meta["num_lines"] == 60
    with pytest.raises(MinimindError, match="1 of 40 lines are malformed"):
        prepare_pretrain(source, tokenizer_path, tmp_path / "cache2", max_bad_share=0.01, progress=False)
    only_blank = write_jsonl(tmp_path / "blank.jsonl", ["", "   "])
    with pytest.raises(MinimindError, match="all 2 lines are blank"):
        prepare_pretrain(only_blank, tokenizer_path, tmp_path / "cache", progress=False)


def test_many_bad_lines_name_only_the_first_twenty(tmp_path, tokenizer_path):
    source = write_jsonl(tmp_path / "data.jsonl", ["{bad"] * 50 + [good("fine")] * 50)
    with pytest.raises(MinimindError, match=r"lines 1, 2, .*, 20, \.\.\.$"):
        prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)


def test_empty_or_all_bad_file_is_an_error(tmp_path, tokenizer_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(MinimindError, match="empty"):
        prepare_pretrain(empty, tokenizer_path, tmp_path / "cache", progress=False)
    all_bad = write_jsonl(tmp_path / "bad.jsonl", ["[1, 2]", '{"text": "  "}'])
    with pytest.raises(MinimindError, match="no usable documents: all 2 non-blank lines are malformed"):
        prepare_pretrain(all_bad, tokenizer_path, tmp_path / "cache", max_bad_share=1.0, progress=False)
    with pytest.raises(MinimindError, match="not found"):
        prepare_pretrain(tmp_path / "missing.jsonl", tokenizer_path, tmp_path / "cache", progress=False)


def test_cache_is_reused_and_keyed_by_content(tmp_path, tokenizer_path, monkeypatch):
    source = write_jsonl(tmp_path / "data.jsonl", [good(t) for t in sentences(200, seed=4)])
    first = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(prepare, "_tokenise_file", no_tokenising)
    second = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)
    assert second.path == first.path and second.num_tokens == first.num_tokens
    monkeypatch.undo()

    write_jsonl(source, [good(t) for t in sentences(200, seed=5)])  # same path, new content
    changed = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)
    assert changed.path != first.path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.path.name, changed.path.name])


def test_truncated_cache_is_detected(tmp_path, tokenizer_path):
    source = write_jsonl(tmp_path / "data.jsonl", [good(t) for t in sentences(50, seed=6)])
    cache = prepare_pretrain(source, tokenizer_path, tmp_path / "cache", progress=False)
    tokens = cache.path / "tokens.bin"
    data = tokens.read_bytes()
    del cache
    tokens.write_bytes(data[: len(data) // 2])
    with pytest.raises(MinimindError, match="truncated"):
        TokenCache(tokens.parent)


PEAK_RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, sys.argv[4])
from corpus.prepare import prepare_pretrain
cache = prepare_pretrain(sys.argv[1], sys.argv[2], sys.argv[3], progress=False, chunk_bytes=1 << 16)
print(cache.num_docs, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kb(source: Path, tokenizer_path: Path, cache: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, str(source), str(tokenizer_path), str(cache), str(ROOT)],
                         capture_output=True, text=True, check=True, env={"TOKENIZERS_PARALLELISM": "false"})
    docs, rss = out.stdout.split()
    return int(docs), int(rss)


def test_peak_memory_does_not_grow_with_the_file(tmp_path, tokenizer_path):
    lines = [good(t) for t in sentences(400, seed=7)]
    block = "".join(line + "\n" for line in lines).encode("utf-8")
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_bytes(block * 10)
    big.write_bytes(block * 450)  # 15 MB: holding the file, or its lines, would add more than 15 MB
    small_docs, small_rss = _peak_rss_kb(small, tokenizer_path, tmp_path / "cache")
    big_docs, big_rss = _peak_rss_kb(big, tokenizer_path, tmp_path / "cache")
    assert (small_docs, big_docs) == (4000, 180000)
    assert big_rss - small_rss < 8 * 1024, (small_rss, big_rss)


# ---------------------------------------------------------------- exact memoised encoding


def test_memoised_encoding_matches_the_tokenizer_exactly(tok):
    rng = random.Random(11)
    alphabet = list("abc XYZ 0189 .,!?'\"-") + [" ", " ", "  ", "\t", "\n", "\r\n", "\xa0", "\u3000", "\x1c",
                                                 "'s", "'ll", "北京", "é", "🙂", "<s>", "</s>", "\u2028"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += [" a", "a ", "  a", "a  ", " ", "", "\n a", "a \n b", "\n \nb", "a\n  b", "x\xa0 y", "don't  stop"]
    encode_batch = batch_encoder(tok)
    assert memo_is_exact(tok)
    for start in range(0, len(texts), 500):  # several calls, so the memo is exercised warm
        batch = texts[start:start + 500]
        flat, lengths = encode_batch(batch)
        expected = [e.ids for e in tok.encode_batch(batch, add_special_tokens=False)]
        assert lengths.tolist() == [len(ids) for ids in expected]
        assert flat.tolist() == [i for ids in expected for i in ids]


def test_other_tokenizers_are_encoded_directly(tokenizer_path):
    tok = load_tokenizer(tokenizer_path)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    assert not memo_is_exact(tok)
    flat, lengths = batch_encoder(tok)(["Paris is big", "Lyon"])
    assert flat.tolist() == tok.encode("Paris is big").ids + tok.encode("Lyon").ids
    assert lengths.tolist() == [len(tok.encode("Paris is big").ids), len(tok.encode("Lyon").ids)]


# ---------------------------------------------------------------- knowledge bank


def trex(sentence: str, **extra) -> dict:
    return {"target": [{"sentence": sentence, "uuid": "u", "subject": "s", "predicate": "p", "object": "o"}], **extra}


def write_json(path: Path, obj, indent=2) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=indent), encoding="utf-8")
    return path


def test_json_array_is_streamed_in_small_chunks(tmp_path, monkeypatch):
    elements = [trex(f'tricky "quotes", ] brackets, {{braces}} and 北京 #{i}') for i in range(40)]
    elements += [{"target": []}, 12345, 1.5e3, None, "string ] with , commas", [1, [2, 3]]]
    path = write_json(tmp_path / "k.json", elements, indent=4)
    monkeypatch.setattr(jsonstream, "CHUNK_CHARS", 7)  # forces elements and UTF-8 characters across chunks
    monkeypatch.setattr(json, "load", lambda *a, **k: pytest.fail("json.load of the whole file"))
    assert [e for _, e in jsonstream.iter_json_array(path)] == elements
    compact = write_json(tmp_path / "c.json", elements, indent=None)
    assert [e for _, e in jsonstream.iter_json_array(compact)] == elements


@pytest.mark.parametrize("text, message", [
    ('{"target": []}', "expected a JSON array"),
    ("", "an empty file"),
    ('[{"target": 1}, {"target": 2] ', "element 1 is not valid JSON"),
    ('[{"target": 1} {"target": 2}]', "expected ',' or ']' after element 0"),
    ('[{"target": 1},', "ends inside the array, at element 1"),
    ('[1, 2] [3]', "after the end of the JSON array"),
])
def test_broken_json_arrays_name_the_element(tmp_path, text, message):
    path = tmp_path / "k.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MinimindError, match=message.replace("[", r"\[").replace("]", r"\]")):
        list(jsonstream.iter_json_array(path))


def test_bank_rows_are_padded_truncated_and_cycled(tmp_path, tokenizer_path, tok):
    texts = ["Paris.", "The capital of France is Paris and Lyon lies on the Rhône while Osaka is in Japan.",
             "Osaka is in Japan.", "People speak French."]
    elements = [trex(texts[0]), trex(texts[1]), {"target": [
        {"sentence": texts[2], "uuid": "a", "subject": "s", "predicate": "p", "object": "o"},
        {"sentence": texts[3], "uuid": "b", "subject": "s", "predicate": "p", "object": "o"}]}]
    path = write_json(tmp_path / "k.json", elements)
    bank, importance = load_bank(path, tokenizer_path, 10, 8, tmp_path / "cache", progress=False)
    assert bank.shape == (10, 8) and bank.dtype == np.int16  # vocab 600 fits int16
    assert importance.shape == (10,) and importance.dtype == np.float32
    for row in range(10):
        ids = encode(tok, texts[row % 4])[:8]
        assert bank[row].tolist() == ids + [0] * (8 - len(ids)), row
    assert len(encode(tok, texts[1])) > 8  # row 1 really was truncated
    assert np.all(np.diff(importance) < 0) and importance[0] == 1.0  # file order: earlier = more important


def test_bank_stops_reading_once_full(tmp_path, tokenizer_path):
    path = write_json(tmp_path / "k.json", [trex(t) for t in sentences(50, seed=8)])
    bank, _ = load_bank(path, tokenizer_path, 7, 16, tmp_path / "cache", progress=False)
    assert bank.shape == (7, 16)
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["sentences"] == 7 and meta["elements_read"] == 7 and meta["cycled_rows"] == 0


def test_importance_comes_from_scores_when_every_sentence_has_one(tmp_path, tokenizer_path):
    path = write_json(tmp_path / "k.json", [trex("Paris.", score=0.5), trex("Lyon.", score=2),
                                            {"target": [{"sentence": "Osaka.", "score": 1.25}]}])
    _, importance = load_bank(path, tokenizer_path, 5, 4, tmp_path / "cache", progress=False)
    assert importance.tolist() == [0.5, 2.0, 1.25, 0.5, 2.0]


def test_malformed_elements_are_reported_by_index(tmp_path, tokenizer_path):
    elements = [trex("Paris."), {"target": "not a list"}, trex("Lyon."), {"no": "target"}, trex("   ")]
    path = write_json(tmp_path / "k.json", elements)
    with pytest.raises(MinimindError, match=r"3 of 5 elements are malformed .*elements 1, 3, 4$"):
        load_bank(path, tokenizer_path, 4, 4, tmp_path / "cache", progress=False)
    folder = prepare_knowledge(path, tokenizer_path, 4, 4, tmp_path / "cache", progress=False, max_bad_share=0.9)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["bad_elements"] == [1, 3, 4] and meta["sentences"] == 2
    empty = write_json(tmp_path / "empty.json", [])
    with pytest.raises(MinimindError, match="no usable knowledge sentences"):
        load_bank(empty, tokenizer_path, 4, 4, tmp_path / "cache", progress=False)


def test_knowledge_cache_is_keyed_and_at_least_ten_times_faster(tmp_path, tokenizer_path, monkeypatch):
    path = write_json(tmp_path / "k.json", [trex(t) for t in sentences(20000, seed=9)], indent=None)
    started = time.perf_counter()
    first, first_importance = load_bank(path, tokenizer_path, 65536, 32, tmp_path / "cache", progress=False)
    cold = time.perf_counter() - started

    monkeypatch.setattr(knowledge, "_fill_bank", lambda *a, **k: pytest.fail("parsed again"))
    timings = []
    for _ in range(3):  # best of three: the machine is shared
        started = time.perf_counter()
        again, again_importance = load_bank(path, tokenizer_path, 65536, 32, tmp_path / "cache", progress=False)
        timings.append(time.perf_counter() - started)
    assert np.array_equal(first, again) and np.array_equal(first_importance, again_importance)
    assert cold / min(timings) >= 10, (cold, timings)
    monkeypatch.undo()

    other, _ = load_bank(path, tokenizer_path, 1024, 32, tmp_path / "cache", progress=False)
    assert np.array_equal(other, first[:1024])
    assert len(list((tmp_path / "cache").iterdir())) == 2  # knowledge_num is part of the key


def test_knowledge_arguments_are_checked(tmp_path, tokenizer_path):
    path = write_json(tmp_path / "k.json", [trex("Paris.")])
    with pytest.raises(MinimindError, match="knowledge_num must be a positive integer"):
        load_bank(path, tokenizer_path, 0, 4, tmp_path / "cache", progress=False)
    with pytest.raises(MinimindError, match="knowledge file not found"):
        load_bank(tmp_path / "nope.json", tokenizer_path, 4, 4, tmp_path / "cache", progress=False)
