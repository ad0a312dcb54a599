"""The SFT stage: its data (the conversation cache) and its starting point (the pretrain base).

An experiment with `stage: sft` in config.yaml trains on `data.sft` prepared by
`corpus.sft.prepare_sft` (doc(i) is (tokens, assistant flags); `training.data.collate`
turns the flags into the loss mask), behind the same `Corpus` interface as pretraining.
It starts from `init.checkpoint`, the base experiment's best checkpoint: its state dict
(weights and the memory bank, the freeze mask: buffers) must load strictly into the
model the experiment's own snapshot builds. EMA keeps its settings in the model config;
a freeze_ratio or freeze_policy other than the base's draws the mask anew for SFT.
"""

from __future__ import annotations

from typing import Any, Optional

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab


def load_sft_corpus(lab: Lab, cfg: ExperimentConfig):
    """The conversation cache of data.sft, split into train and validation as pretraining documents are."""
    from corpus.sft import prepare_sft
    from training.data import split_documents
    from training.data import Corpus

    template = lab.resolve(cfg.data.chat_template) if cfg.data.chat_template else None
    cache = prepare_sft(lab.resolve(cfg.data.sft), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                        tokenizer_config=template, max_bad_share=cfg.data.max_bad_share, progress=False)
    if cache.num_docs < 2:
        raise MinimindError(f"{cfg.data.sft}: needs at least 2 conversations, has {cache.num_docs}")
    train_idx, val_idx = split_documents(cache.num_docs, cfg.data.val_fraction, cfg.train.seed)
    return Corpus(cache, train_idx, val_idx)


def _read_init(lab: Lab, cfg: ExperimentConfig) -> tuple[dict[str, Any], Any]:
    from models import registry

    path = lab.resolve(cfg.init.checkpoint)
    if not path.is_file():
        raise MinimindError(f"the SFT starting checkpoint {cfg.init.checkpoint} (experiment {cfg.init.version}) is gone")
    actual = registry.sha256_file(path)
    if actual != cfg.init.sha256:
        raise MinimindError(f"{cfg.init.checkpoint} changed since this experiment was created "
                            f"(sha256 {actual[:12]}, recorded {cfg.init.sha256[:12]}); start a new SFT experiment")
    return registry.read_checkpoint(path), path


def init_from_base(model, lab: Lab, cfg: ExperimentConfig) -> str:
    """Load the base's weights and buffers into `model` (strictly); returns a note for train.log."""
    from models import registry

    data, path = _read_init(lab, cfg)
    registry.load_weights(model, registry.weights(data), path, cfg.model_module)
    note = f"SFT from experiment {cfg.init.version}: {cfg.init.checkpoint} (step {data.get('step')}, sha256 {cfg.init.sha256[:12]})"
    redrawn = redraw_freeze(model, data.get("model_config") or {}, lab, cfg)
    return note + (f"; {redrawn}" if redrawn else "")


def redraw_freeze(model, base_model_cfg: dict, lab: Lab, cfg: ExperimentConfig) -> Optional[str]:
    """A new freeze mask when the SFT config freezes differently from the base; else the base's stays."""
    import torch

    mc = model.config
    if not getattr(mc, "has_memory", False):
        return None
    if (base_model_cfg.get("freeze_ratio"), base_model_cfg.get("freeze_policy")) == (mc.freeze_ratio, mc.freeze_policy):
        return None
    n = mc.knowledge_num
    frozen = torch.zeros(n, dtype=torch.bool)
    if mc.freeze_policy == "importance":
        from corpus.knowledge import load_bank

        if not cfg.data.knowledge:
            raise MinimindError("freeze_policy importance needs data.knowledge for its importance scores")
        _, importance = load_bank(lab.resolve(cfg.data.knowledge), lab.resolve(cfg.data.tokenizer), n,
                                  mc.knowledge_length, lab.cache_dir, progress=False)
        if importance is None:
            raise MinimindError(f"{cfg.data.knowledge} has no importance scores for freeze_policy importance")
        frozen[torch.as_tensor(importance, dtype=torch.float32).flatten().topk(round(mc.freeze_ratio * n)).indices] = True
    else:
        g = torch.Generator().manual_seed(mc.memory_seed + 1)  # not the base's draw: a different ratio, a fresh set
        frozen[torch.randperm(n, generator=g)[:round(mc.freeze_ratio * n)]] = True
    with torch.no_grad():
        model.memory_frozen.copy_(frozen)
    return f"freeze mask redrawn for SFT: {mc.freeze_policy}, {int(frozen.sum())} of {n} entries"


def check_init_fits(lab: Lab, cfg: ExperimentConfig) -> None:
    """At `new`: the base checkpoint loads strictly into the model the living model.py (the snapshot to be) builds."""
    from models import registry

    data, path = _read_init(lab, cfg)
    recorded = data.get("model_config") or {}
    model = registry.build_model(lab.models_dir, registry.LIVING, cfg.model)
    try:
        registry.load_weights(model, registry.weights(data), path, "models/model.py")
    except MinimindError as exc:
        changed = sorted(k for k in set(recorded) | set(cfg.model) if recorded.get(k) != cfg.model.get(k))
        raise MinimindError(f"{exc}; SFT needs the base's model shape"
                            + (f" (changed: {', '.join(changed[:5])})" if changed else "")) from None


# --- evaluation: sft_loss, chat_qa, chat (eval.json) ------------------------------------

CHAT_GROUPS = ("taught", "eval_only")  # what SFT did with a probe's fact (data/sft_split.json)


def _word(text: str):
    import re

    return re.compile(r"(?<!\w)" + re.escape(text.lower()) + r"(?!\w)")


def reply_hit(reply: str, answer: str, distractors, subject: str = "") -> bool:
    """The answer appears in the reply as a word and no same-relation distractor does
    (a reply naming every country is not an answer); the answer is removed before the
    distractors are looked for, so 'Guinea' does not count inside 'Guinea-Bissau'.

    The reply's first mention of the subject is removed before anything is looked for:
    the answer sentence repeats it ("Spain borders France."), and a subject may be another
    probe's distractor (Spain for France's neighbours) or contain the answer ("Kuwait City
    is in Asia." names no country). Only the first, so "Singapore is in Singapore." is a hit."""
    text = reply.lower()
    if subject:
        text = _word(subject).sub(" ", text, count=1)
    pattern = _word(answer)
    if not pattern.search(text):
        return False
    rest = pattern.sub(" ", text)
    return not any(_word(d).search(rest) for d in distractors if d.lower() != answer.lower())


def _sample(items: list, k: int, seed: int) -> list:
    """k probes spread over the split (seeded), in their file order: the split's first ones may be one relation."""
    import random

    if len(items) <= k:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), k))]


def chat_replies(model, prompts: list[list[int]], max_new_tokens: int, progress=None) -> list[tuple[list[int], bool]]:
    """(greedy reply tokens before </s>, whether it stopped at </s>) after each chat prompt,
    decoded in batches of prompts of one length (training.measures.generated_rows)."""
    from training.data import EOS_ID
    from training.measures import generated_rows, until_eos

    rows = generated_rows(model, prompts, max_new_tokens, progress=progress)
    return [(until_eos(row), EOS_ID in row) for row in rows]


def _sft_loss(model, lab: Lab, cfg: ExperimentConfig, max_seq_len: int,
              part=None) -> tuple[Optional[float], Optional[int], dict]:
    from corpus.sft import prepare_sft
    from training import measures

    if not cfg.data.sft_eval or not lab.resolve(cfg.data.sft_eval).is_file():
        return None, None, {}
    template = lab.resolve(cfg.data.chat_template) if cfg.data.chat_template else None
    cache = prepare_sft(lab.resolve(cfg.data.sft_eval), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                        tokenizer_config=template, max_bad_share=cfg.data.max_bad_share, progress=False)
    n = min(cache.num_docs, cfg.train.batch_size * cfg.eval.max_val_batches)
    docs = [cache.doc(i) for i in range(n)]
    loss, ce, tokens = measures.val_loss_items(model, docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches,
                                               part("SFT loss") if part else None)
    return loss, n, {"keys": list(range(len(ce))), "ce": ce, "tokens": tokens}


def _roles(lab: Lab, cfg: ExperimentConfig) -> dict[str, str]:
    import json

    if not cfg.data.sft_split:
        return {}
    path = lab.resolve(cfg.data.sft_split)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise MinimindError(f"{path}: not valid JSON ({exc})") from None
    return {pid: group for group in CHAT_GROUPS for pid in (data.get(group) or []) if isinstance(pid, str)}


def sft_measures(model, tokenizer, lab: Lab, cfg: ExperimentConfig, probes: Optional[dict[str, list[dict]]],
                 seed: int, part=None) -> dict[str, Any]:
    """eval.json's SFT block, for every stage (a pretrain base is what an SFT run is compared with):
      sft_loss       teacher-forced loss on the assistant tokens of data.sft_eval (held-out conversations)
      chat_qa        {split or taught/eval_only: {accuracy, n, accuracy_ci}}: the probe's question asked in
                     chat format, greedy reply, hit when the answer and no distractor appears (reply_hit)
      chat           {stop_rate, mean_reply_tokens, repetition_rate, n} over those replies
      chat_samples   a few questions with their replies
      per_item       {"sft": {keys, ce, tokens}, "chat_qa": {group: {keys, hit}}} (merged into eval.json's per_item)
    Keys are null (or empty) where the data is missing or eval.chat_probes is 0.
    `part`, when given, is called with the name of each part as it starts ("SFT loss",
    "chat QA") and returns its progress callback (training.measures.Progress)."""
    from corpus.chat import QUESTIONS, question_text
    from corpus.sft import encode_chat, load_template
    from training import measures

    max_seq_len = model.config.max_seq_len
    sft_loss, sft_docs, sft_items = _sft_loss(model, lab, cfg, max_seq_len, part)
    per_group: dict[str, dict] = {}  # per group: {keys: [probe id], hit: [0/1]}, for minimind.verdict's paired intervals
    out: dict[str, Any] = {"sft_loss": sft_loss, "sft_eval_conversations": sft_docs, "chat_qa": {},
                           "chat": {"stop_rate": None, "mean_reply_tokens": None, "repetition_rate": None, "n": 0},
                           "chat_samples": [], "per_item": {"sft": sft_items, "chat_qa": per_group}}
    if not probes or cfg.eval.chat_probes == 0:
        return out
    render, _ = load_template(lab.resolve(cfg.data.chat_template) if cfg.data.chat_template else None)
    roles = _roles(lab, cfg)
    hits: dict[str, list[float]] = {}
    replies, stops = [], []
    asked = []  # (split, probe, question, prompt), in the order the probes are reported
    for split, items in probes.items():
        for probe in _sample([p for p in items if p.get("relation") in QUESTIONS], cfg.eval.chat_probes, seed):
            question = question_text(probe["relation"], probe["subject"])
            prompt = encode_chat(tokenizer, render, [{"role": "user", "content": question}])
            if len(prompt) < max_seq_len:
                asked.append((split, probe, question, prompt))
    answers = chat_replies(model, [a[3] for a in asked], cfg.eval.chat_max_new_tokens, part("chat QA") if part else None)
    for (split, probe, question, _), (tokens, stopped) in zip(asked, answers):
        reply = tokenizer.decode(tokens, skip_special_tokens=True)
        hit = 1.0 if reply_hit(reply, probe["answer"], probe.get("distractors") or [],
                                  probe.get("subject") or "") else 0.0
        for group in (split, roles.get(probe.get("id"))):
            if group:
                hits.setdefault(group, []).append(hit)
                block = per_group.setdefault(group, {"keys": [], "hit": []})
                block["keys"].append(str(probe.get("id")))
                block["hit"].append(hit)
        replies.append(tokens)
        stops.append(1.0 if stopped else 0.0)
        if sum(1 for s in out["chat_samples"] if s["split"] == split) < 2:
            out["chat_samples"].append({"split": split, "question": question, "answer": probe["answer"],
                                        "reply": reply, "hit": bool(hit), "stopped": stopped})
    order = [g for g in (*probes, *CHAT_GROUPS) if g in hits]  # the probe splits, then what SFT did with the fact
    out["chat_qa"] = {group: {"accuracy": sum(hits[group]) / len(hits[group]), "n": len(hits[group]),
                              "accuracy_ci": measures.bootstrap_ci(hits[group], seed)} for group in order}
    if replies:
        out["chat"] = {"stop_rate": sum(stops) / len(stops),
                       "mean_reply_tokens": sum(len(r) for r in replies) / len(replies),
                       "repetition_rate": measures.repetition_rate(replies, 4), "n": len(replies)}
    return out
