"""Checks that the agent's prose agrees with the numbers code computed.

Two kinds of claim are checked in every text field of an analysis or a commit draft,
whichever backend wrote it:

- a verdict: "the hypothesis is supported", "✅ hypothesis supported", "假设成立", ... must
  name the computed verdict (a "not supported" claim only contradicts `supported`);
- a metric value: a number quoted after a metric's name ("inference loss 0.01") must be a
  value of that metric somewhere in the data the agent was given, within the rounding of
  the quoted digits (2.14 matches 2.1389; 27.3% matches 0.2733).

A plan (written before training) is checked the same way with no verdict to claim: any
verdict claim outside a conditional sentence, and any ✅/❌, is refused.

`problems` lists every contradiction; the claude backend sends them back for one repair,
and `enforce` replaces what still contradicts by the computed text (the offline
backend's sentence for that field) and says so. What the record says of a refused field
(`refusal_note`) names the field and the reason, never the refused text.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterable, Optional

from minimind import phrases

# --- refusals ------------------------------------------------------------------------------

class Refusal(str):
    """A problem with a field: its full text goes back to the model in the repair round
    (it may quote what was wrong), its `note` is what the record keeps (the field and the
    reason, never the refused text)."""

    note: str

    def __new__(cls, text: str, note: str) -> "Refusal":
        obj = super().__new__(cls, text)
        obj.note = note
        return obj

    def __reduce__(self):  # copies and pickles keep the note
        return (Refusal, (str(self), self.note))


_SAFE_FIELD = re.compile(r"[A-Za-z_][\w.\[\]]{0,80}")
_GOT = re.compile(r"[,;]?\s*got\b.*$", re.S)
_QUOTED = re.compile(r"['\"“”‘’`✅❌]")


def refusal_note(problem: str) -> str:
    """What the record says of a refused field: its name and the reason, without quoting
    what was refused. A `Refusal` says it itself; for a plain problem the part after "got"
    (the refused value) is cut, and a reason that still quotes anything, or a field name
    the model made up, is reduced to the field (or "a field") and "does not validate"."""
    if isinstance(problem, Refusal):
        return problem.note
    field, _, reason = problem.partition(": ")
    if not _SAFE_FIELD.fullmatch(field):
        field = "a field"
    reason = _GOT.sub("", reason).strip()
    if not reason or _QUOTED.search(reason) or verdict_claims(reason):
        reason = "does not validate"
    return f"{field}: {reason}"


# --- verdict claims -----------------------------------------------------------------------

_SUBJECT = r"(?:hypothesis|hypotheses|假设)"
_CLAIMS = [
    ("not_supported", re.compile(rf"{_SUBJECT}[^.;。；\n]{{0,30}}?\b(?:is |was |are )?(?:not|never|un)[ -]?(?:supported|confirmed)", re.I)),
    ("not_supported", re.compile(r"假设[^。；\n]{0,12}?(?:不成立|未得到支持|没有得到支持|不被支持|未被支持)")),
    ("supported", re.compile(rf"{_SUBJECT}[^.;。；\n]{{0,30}}?\b(?<!not )(?<!un)(?:supported|confirmed|holds|validated|verified)\b", re.I)),
    ("supported", re.compile(rf"(?:supports?|confirms?|validates?|verif(?:y|ies))\s+(?:the\s+)?{_SUBJECT}", re.I)),
    ("supported", re.compile(r"假设[^。；\n]{0,12}?(?<!不)(?<!未)(?:成立|得到支持|得到验证|被证实|支持)")),
    ("refuted", re.compile(rf"{_SUBJECT}[^.;。；\n]{{0,30}}?\b(?:refuted|rejected|falsified|disproved|disproven)\b", re.I)),
    ("refuted", re.compile(rf"(?:refutes?|rejects?|falsif(?:y|ies)|disproves?)\s+(?:the\s+)?{_SUBJECT}", re.I)),
    ("refuted", re.compile(r"假设[^。；\n]{0,12}?(?:被否定|否定|被推翻|证伪)")),
    ("inconclusive", re.compile(rf"{_SUBJECT}[^.;。；\n]{{0,30}}?\b(?:inconclusive|undecided|unresolved)\b", re.I)),
    ("inconclusive", re.compile(r"(?:inconclusive|无法判定|不确定)")),
]
_CONFLICTS = {
    "supported": lambda v: v != "supported",
    "refuted": lambda v: v != "refuted",
    "inconclusive": lambda v: v != "inconclusive",
    "not_supported": lambda v: v == "supported",
}


# A sentence that states a condition ("if the hypothesis holds, ...") asserts no verdict.
_CONDITIONAL = re.compile(r"\b(?:if|whether|unless|would|should|could|expect\w*)\b|如果|若|是否|假如|预计", re.I)
_SENTENCE = re.compile(r"[^.;!?。；！？\n]+[.;!?。；！？\n]?")


def verdict_claims(text: str, conditional_ok: bool = False) -> set[str]:
    """The verdicts a text asserts (supported / refuted / inconclusive / not_supported).
    `conditional_ok`: sentences with a condition or an expectation assert nothing (a plan's
    "if the hypothesis holds" is not a claim)."""
    if conditional_ok:
        return set().union(*(verdict_claims(m.group()) for m in _SENTENCE.finditer(text)
                             if not _CONDITIONAL.search(m.group())))
    found: set[str] = set()
    spans: list[tuple[int, int]] = []
    for kind, pattern in _CLAIMS:
        for m in pattern.finditer(text):
            # "not supported" must not also count as "supported"
            if any(m.start() < e and s < m.end() for s, e in spans) and kind == "supported":
                continue
            found.add(kind)
            spans.append((m.start(), m.end()))
    return found


# --- metric values --------------------------------------------------------------------------

# (words in the text, substrings of data paths holding that metric's values). Longest first.
_FAMILIES: list[tuple[str, tuple[str, ...]]] = [
    (r"inference[ _-]loss|推理\s*(?:损失|loss)", ("inference_loss",)),
    (r"val(?:idation)?[ _-]loss|验证\s*(?:损失|loss)", ("val_loss",)),
    (r"train(?:ing)?[ _-]loss|训练\s*(?:损失|loss)", ("train_loss", "loss")),
    (r"train[/_ ]inference[ _-]ratio|ratio|比值|比率|(?:训练/)?推理比|推理/训练损失比", ("ratio",)),
    (r"repetition(?:[ _]rate)?|seq-rep-4|重复率?", ("repetition",)),
    (r"distinct[-_ ]?2?", ("distinct",)),
    (r"entropy|熵", ("entropy",)),
    (r"coverage|覆盖率?", ("coverage",)),
    (r"dead", ("dead",)),
    (r"hit@1|hit@c|hit_at", ("hit_at", "retrieval")),
    (r"p@1|p_at_1|precision|recall|召回|mrr", ("recall", "p_at_1", "mrr")),
    (r"\bloss\b|损失", ("loss",)),
]
_FAMILY_RE = re.compile("|".join(f"({words})" for words, _ in _FAMILIES), re.I)
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+\.\d+%?|(?<![\w.])[-+−]?\d+%")
_DELTA_WORDS = re.compile(r"\b(by|change[sd]?|differ\w*|delta|interval|CI|rose|fell|drop\w*|gain\w*)\b|Δ|±|差|变化|区间|下降|上升", re.I)
_DELTA_PATH = re.compile(r"\.(delta|rel|low|high)$|\.ci\.|_ci$|_ci\.")
_LEVEL_AFTER = re.compile(r"\s*(?:CI\b|confidence|interval|置信区间|区间)", re.I)
WINDOW = 28  # characters between a metric's name and the number quoted for it
# eval.json keys that are not facts to quote: per-item raw data would let any number match.
NOT_FACTS = ("per_item", "model_config", "time", "checkpoint")


def known_values(data: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(path, value) for every finite number in `data`; comparison-like rows are keyed by
    their metric so "inference_loss" finds a row's base, new, delta and interval."""
    out: list[tuple[str, float]] = []
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dataclasses.asdict(data)
    if isinstance(data, dict):
        label = prefix
        if isinstance(data.get("metric"), str):
            label = f"{prefix}.{data['metric']}"
        elif isinstance(data.get("name"), str):
            label = f"{prefix}.{data['name']}"
        for key, value in data.items():
            out += known_values(value, f"{label}.{key}")
    elif isinstance(data, (list, tuple)):
        for value in data:
            out += known_values(value, prefix)
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out.append((prefix.lower(), float(data)))
    return out


def _matches(quoted: str, candidates: Iterable[float]) -> bool:
    text = quoted.replace("−", "-").lstrip("+")
    percent = text.endswith("%")
    if percent:
        text = text[:-1]
    decimals = len(text.split(".")[1]) if "." in text else 0
    value = float(text)
    options = [(value, 0.5 * 10 ** -decimals)]
    if percent:
        options.append((value / 100, 0.5 * 10 ** -(decimals + 2)))
    for x in candidates:
        for v, tol in options:
            if abs(abs(x) - abs(v)) <= tol * (1 + 1e-9) + 1e-12:
                return True
            # a value quoted to fewer significant digits than it has decimals ("3.1e-05" style is not prose)
            if x != 0 and v != 0 and abs(x - v) / abs(x) < 5e-4:
                return True
    return False


def unknown_numbers(text: str, values: list[tuple[str, float]], by_family: bool = True) -> list[str]:
    """Metric values quoted in `text` that are not in `values` (within rounding). `by_family`
    False: any value of the data will do (a plan quotes numbers from prose it was given, the
    lessons and the notebook, where no path names the metric)."""
    bad = []
    versions = [m.span() for m in _VERSION_LIKE.finditer(text)]
    for number in _NUMBER.finditer(text):
        if _LEVEL_AFTER.match(text, number.end()):
            continue  # "95% CI", "95% 置信区间": the interval's level, not a metric's value
        if any(s <= number.start() < e for s, e in versions):
            continue  # "the 1.4.3 failure" names an experiment, not a value of the metric before it
        before = text[max(0, number.start() - WINDOW): number.start()]
        if re.search(r"[.;。；\n](\s|$)", before):  # the metric's name must be in the same sentence
            before = re.split(r"[.;。；\n](?:\s|$)", before)[-1]
        names = list(_FAMILY_RE.finditer(before))
        if not names:
            continue
        name = names[-1]
        tokens = next(paths for i, (_, paths) in enumerate(_FAMILIES) if name.group(i + 1))
        family = ([(path, v) for path, v in values if any(t in path for t in tokens)] or values) if by_family else values
        if by_family and not _DELTA_WORDS.search(before):
            # a value, not a change: deltas and interval bounds do not count as the metric's value
            family = [(path, v) for path, v in family if not _DELTA_PATH.search(path)] or family
        candidates = [v for _, v in family]
        if not _matches(number.group(), candidates):
            bad.append(f"{name.group().strip()} {number.group()}")
    return bad


def text_values(texts: Iterable[str], label: str = "text") -> list[tuple[str, float]]:
    """(label, value) for every number written in prose the agent was given (lessons, notebook)."""
    out = []
    for text in texts:
        for number in _NUMBER.finditer(text or ""):
            raw = number.group().replace("−", "-").lstrip("+")
            value = float(raw.rstrip("%"))
            out.append((label, value / 100 if raw.endswith("%") else value))
    return out


_VERSION_LIKE = re.compile(r"\d+\.\d+\.\d+")


def numbers_not_in_data(text: str, values: list[tuple[str, float]]) -> list[str]:
    """Every decimal or percentage in `text` that is no value of the data (within rounding),
    whatever word precedes it: evidence must be the run's numbers. Versions (1.4.3) and an
    interval's level ("95% CI") are not values."""
    versions = [m.span() for m in _VERSION_LIKE.finditer(text)]
    candidates = [v for _, v in values]
    bad = []
    for number in _NUMBER.finditer(text):
        if any(s <= number.start() < e for s, e in versions) or _LEVEL_AFTER.match(text, number.end()):
            continue
        if not _matches(number.group(), candidates):
            bad.append(number.group())
    return bad


def has_number(text: str) -> bool:
    return bool(_NUMBER.search(text))


def proposal_note(backend: str, fields: list[str], lang: str = "en") -> str:
    """Said when a model's proposal (lesson, next experiment) was refused after one repair."""
    names = phrases.group("prose", lang)
    shown = names["field_join"].join(names.get(f"field.{f}", f) for f in fields)
    return phrases.phrase("prose.proposal_refused", lang, backend=backend, shown=shown)


_MARKS = re.compile("[✅❌]")


def problems(fields: dict[str, str], verdict: Optional[str], values: list[tuple[str, float]]) -> dict[str, list[str]]:
    """{field: [reasons]} for every text field that contradicts the verdict or the data.
    `verdict` None: a plan, written before training, when there is no verdict to claim (any
    claim and any ✅/❌ is refused; a conditional "if the hypothesis holds" is not a claim)."""
    out: dict[str, list[str]] = {}
    for name, text in fields.items():
        reasons = []
        if verdict is None:
            claims = sorted(verdict_claims(text, conditional_ok=True))
            if claims:
                said = ", ".join(c.replace("_", " ") for c in claims)
                reasons.append(Refusal(f"{name}: asserts the hypothesis is {said} before training; there is no "
                                       "verdict yet, describe what you expect instead",
                                       f"{name}: asserts a verdict before training"))
            if _MARKS.search(text):
                reasons.append(Refusal(f"{name}: uses a result mark (✅/❌) before training; there are no results yet",
                                       f"{name}: uses a result mark before training"))
        else:
            claims = sorted(k for k in verdict_claims(text) if _CONFLICTS[k](verdict))
            if claims:
                said = ", ".join(c.replace("_", " ") for c in claims)
                reasons.append(Refusal(f"{name}: asserts the hypothesis is {said}, but the computed verdict is {verdict}",
                                       f"{name}: asserts a verdict other than the computed one ({verdict})"))
        bad = unknown_numbers(text, values, by_family=verdict is not None)
        if bad:
            reasons.append(Refusal(f"{name}: quotes {', '.join(bad)}, which is not in the data given (within rounding)",
                                   f"{name}: quotes a number that is not in the data given"))
        if reasons:
            out[name] = reasons
    return out


def text_fields(obj: Any, names: Iterable[str]) -> dict[str, str]:
    """{'field' or 'field[i]' or 'field.key[i]': text} of a result's prose fields."""
    out: dict[str, str] = {}
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, str):
            out[name] = value
        elif isinstance(value, list):
            out.update({f"{name}[{i}]": v for i, v in enumerate(value) if isinstance(v, str)})
        elif isinstance(value, dict):
            for key, lines in value.items():
                out.update({f"{name}.{key}[{i}]": v for i, v in enumerate(lines or []) if isinstance(v, str)})
    return out


def flat_problems(found: dict[str, list[str]]) -> list[str]:
    return [reason for reasons in found.values() for reason in reasons]


def replace_fields(result: Any, computed: Any, bad: dict[str, list[str]], lang: str = "en") -> tuple[Any, list[str]]:
    """`result` with every field named in `bad` taken from `computed`; returns (result, notes)."""
    if not bad:
        return result, []
    changes: dict[str, Any] = {}
    for key in bad:
        top = re.split(r"[\[.]", key, maxsplit=1)[0]
        changes[top] = getattr(computed, top)
    notes = [refusal_note(r) for reasons in bad.values() for r in reasons]
    return dataclasses.replace(result, **changes), notes


def notes_line(notes: list[str]) -> str:
    """A replacement note and its reasons as one line of the record: "<note> <field: reason>; ..."."""
    if not notes:
        return ""
    rest = "; ".join(notes[1:])
    return notes[0] + (f" ({rest})." if rest else "")


def verdict_sentence(verdict: str, reason: str, lang: str = "en") -> str:
    """The computed verdict as a sentence: what replaces prose that contradicts it."""
    return phrases.phrase("prose.verdict_sentence", lang, word=phrases.phrase(f"verdict_word.{verdict}", lang), reason=reason)


def replacement_note(backend: str, fields: list[str], lang: str = "en", plan: bool = False) -> str:
    return phrases.phrase("prose.replaced_plan" if plan else "prose.replaced", lang, backend=backend,
                          fields=", ".join(fields))


def check_result(result: Any, names: Iterable[str], verdict: Optional[str], data: Any,
                 extra_values: Iterable[tuple[str, float]] = ()) -> dict[str, list[str]]:
    return problems(text_fields(result, names), verdict, known_values(data) + list(extra_values))


