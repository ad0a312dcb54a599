"""Today's evaluation, item by item: the reference the batched measures are timed and checked against.

A frozen copy of the measures as they were at 05bce92 (training/measures.py's val_loss_items,
inference_loss_items, continuations, recall, retrieval; training/sft.py's chat QA): one model
call per probe, prompt and decoded token, and one host read per document, token and
candidate. bench/eval_speed.py times it against training.measures, and
tests/test_eval_batched.py checks on a tiny model that both give the same numbers. Not used
by minimind itself; do not "fix" it: its worth is that it does not change.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from minimind.config import ExperimentConfig
from minimind.lab import Lab
from training.data import BOS_ID, EOS_ID, collate
from training.measures import (RETRIEVAL_SPLITS, bootstrap_ci, device_of, entry_rank, evaluating, rank_of_answer)
from training.sft import CHAT_GROUPS, _roles, _sample, reply_hit


def val_loss_items(model, docs: Sequence[np.ndarray], max_seq_len: int, batch_size: int,
                   max_batches: int) -> tuple[Optional[float], list[float], list[int]]:
    """(token-weighted mean CE, summed CE per document, tokens per document) over the
    first max_batches batches; the per-document sums let a comparison on the same
    documents get a paired interval (minimind.verdict)."""
    if not docs:
        return None, [], []
    device = device_of(model)
    sums: list[float] = []
    counts: list[int] = []
    with evaluating(model):
        for start in range(0, min(len(docs), batch_size * max_batches), batch_size):
            inputs, targets, mask = collate(docs[start:start + batch_size], max_seq_len)
            inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            logits = model(inputs).logits
            per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                        reduction="none").view_as(mask)
            sums += [float(v) for v in (per_token * mask).sum(dim=1)]
            counts += [int(v) for v in mask.sum(dim=1)]
    total, count = sum(sums), sum(counts)
    return (total / count if count else None), sums, counts


def inference_loss_one(model, prompt: list[int], reference: list[int]) -> tuple[float, int]:
    """(summed CE, tokens) of `reference` after `prompt`, one token at a time with the KV cache."""
    device = device_of(model)
    out = model(torch.tensor([prompt], device=device), use_cache=True)
    total = 0.0
    for i, token in enumerate(reference):
        logits = out.logits[:, -1, :].float()
        total += float(F.cross_entropy(logits, torch.tensor([token], device=device)))
        if i + 1 < len(reference):
            out = model(torch.tensor([[token]], device=device), past_key_values=out.past_key_values, use_cache=True)
    return total, len(reference)


def inference_loss_items(model, pairs: Sequence[tuple[list[int], list[int]]]) -> tuple[Optional[float], list[float], list[int]]:
    """(token-weighted inference loss, summed CE per pair, tokens per pair)."""
    sums: list[float] = []
    counts: list[int] = []
    with evaluating(model):
        for prompt, reference in pairs:
            if reference:
                s, n = inference_loss_one(model, prompt, reference)
            else:
                s, n = 0.0, 0
            sums.append(s)
            counts.append(n)
    total, count = sum(sums), sum(counts)
    return (total / count if count else None), sums, counts


def _new_tokens(output: torch.Tensor, prompt: list[int]) -> list[int]:
    """generate() may return prompt + new tokens or only the new ones; keep the new ones,
    cut at the first </s>."""
    ids = output[0].tolist() if output.dim() == 2 else output.tolist()
    if ids[:len(prompt)] == prompt:
        ids = ids[len(prompt):]
    return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def continuations(model, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
    """Continuations of each prompt. Greedy ones touch no random state; sampled ones are
    seeded per prompt (so they are reproducible) inside a forked RNG (so they do not
    change the caller's random stream)."""
    device = device_of(model)
    outs = []
    with evaluating(model), torch.random.fork_rng(devices=[]):
        for i, prompt in enumerate(prompts):
            if temperature > 0:
                torch.manual_seed(seed + i)
            output = model.generate(torch.tensor([prompt], device=device), max_new_tokens=max_new_tokens,
                                    temperature=temperature, top_p=top_p, eos_token_id=EOS_ID, use_cache=True)
            outs.append(_new_tokens(output, prompt))
    return outs


def candidate_scores(model, prompt_ids: list[int], candidates: Sequence[list[int]]) -> list[float]:
    """Summed log-probability of each candidate's tokens after `<s> prompt`."""
    device = device_of(model)
    prefix = [BOS_ID] + prompt_ids
    rows = [prefix + c for c in candidates]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    logprobs = torch.log_softmax(model(ids.to(device)).logits.float(), dim=-1)
    scores = []
    for i, cand in enumerate(candidates):
        positions = torch.arange(len(prefix) - 1, len(prefix) - 1 + len(cand), device=device)
        target = torch.tensor(cand, device=device)
        scores.append(float(logprobs[i, positions, target].sum()))
    return scores


def recall(model, tokenizer, probes: dict[str, list[dict[str, Any]]], max_per_split: int, seed: int,
           items: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """{split: {p_at_1, mrr, n, p_at_1_ci, mrr_ci, chance_p_at_1}} over the first probes of each split.

    `items`, when given, receives {split: {keys: [probe id], hit: [0/1], rr: [1/rank]}}."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    result: dict[str, Any] = {}
    with evaluating(model):
        for split, split_probes in probes.items():
            hits, recips, chance, keys = [], [], [], []
            for i, probe in enumerate(split_probes[:max_per_split]):
                options = [probe["answer"]] + list(probe["distractors"])
                scores = candidate_scores(model, encode(probe["prompt"]), [encode(" " + o) for o in options])
                if not all(math.isfinite(s) for s in scores):
                    continue
                rank = rank_of_answer(scores, 0)
                hits.append(1.0 if rank == 1 else 0.0)
                recips.append(1.0 / rank)
                chance.append(1.0 / len(options))
                keys.append(str(probe.get("id", i)))
            if items is not None:
                items[split] = {"keys": keys, "hit": hits, "rr": recips}
            n = len(hits)
            result[split] = {
                "p_at_1": float(np.mean(hits)) if n else None,
                "mrr": float(np.mean(recips)) if n else None,
                "n": n,
                "p_at_1_ci": bootstrap_ci(hits, seed),
                "mrr_ci": bootstrap_ci(recips, seed),
                "chance_p_at_1": float(np.mean(chance)) if n else None,
            }
    return result


def prompt_reads(model, prompt_ids: list[int]) -> list[list[tuple[int, float]]]:
    """The candidates (entry, weight), best first, that each memory layer reads at the last
    token of `<s> prompt`: the position whose prediction recall scores."""
    return model.inspect_memory(torch.tensor([[BOS_ID] + prompt_ids], device=device_of(model)),
                                top=model.config.num_candidates)[-1]


def retrieval(model, tokenizer, probes: dict[str, list[dict[str, Any]]], rows: dict[tuple, list[int]],
              max_per_split: int, seed: int, items: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Does the model read the bank entry of the fact it is asked? Per split of facts put in
    the bank: {n, in_bank, hit_at_1, hit_at_c, *_ci, mean_rank, control: {...}} over the first
    `max_per_split` probes whose fact sits in a bank row (`rows`: corpus.knowledge.bank_rows).

    hit@1: the fact's entry is some memory layer's best candidate at the prompt's last token;
    hit@C: it is among the num_candidates read there. The control asks the same reads about
    the entry of a random other fact of the bank (seeded): what chance alone gives.
    `items`, when given, receives {split: {keys, hit_at_1, hit_at_c, rank (0 = not read),
    control_hit_at_1, control_hit_at_c}}: per probe, so minimind.verdict can pair them."""
    from corpus.knowledge import probe_key

    facts = sorted(rows)
    result: dict[str, Any] = {"num_candidates": model.config.num_candidates,
                              "memory_layers": len(model.memory_layers()), "knowledge_num": model.config.knowledge_num}
    rng = np.random.default_rng(seed)
    with evaluating(model):
        for split in RETRIEVAL_SPLITS:
            chosen = [(p, rows[k]) for p in probes.get(split) or [] if (k := probe_key(p)) in rows]
            hit1, hitc, ranks, keys, c1, cc = [], [], [], [], [], []
            for i, (probe, own) in enumerate(chosen[:max_per_split]):
                reads = prompt_reads(model, tokenizer.encode(probe["prompt"], add_special_tokens=False).ids)
                rank = entry_rank(reads, own)
                hit1.append(1.0 if rank == 1 else 0.0)
                hitc.append(0.0 if rank is None else 1.0)
                ranks.append(rank or 0)
                keys.append(str(probe.get("id", i)))
                other = own
                while set(other) & set(own) and len(facts) > 1:
                    other = rows[facts[int(rng.integers(len(facts)))]]
                control = entry_rank(reads, other) if other is not own else None
                c1.append(1.0 if control == 1 else 0.0)
                cc.append(0.0 if control is None else 1.0)
            if items is not None:
                items[split] = {"keys": keys, "hit_at_1": hit1, "hit_at_c": hitc, "rank": ranks,
                                "control_hit_at_1": c1, "control_hit_at_c": cc}
            hits = [r for r in ranks if r]
            n = len(keys)
            result[split] = {
                "n": n, "in_bank": len(chosen),
                "hit_at_1": float(np.mean(hit1)) if n else None, "hit_at_c": float(np.mean(hitc)) if n else None,
                "hit_at_1_ci": bootstrap_ci(hit1, seed), "hit_at_c_ci": bootstrap_ci(hitc, seed),
                "mean_rank": float(np.mean(hits)) if hits else None,
                "control": {"hit_at_1": float(np.mean(c1)) if n else None, "hit_at_c": float(np.mean(cc)) if n else None,
                            "hit_at_1_ci": bootstrap_ci(c1, seed), "hit_at_c_ci": bootstrap_ci(cc, seed)},
            }
    return result


def chat_reply(model, prompt: list[int], max_new_tokens: int) -> tuple[list[int], bool]:
    """(greedy reply tokens before </s>, whether it stopped at </s>) after a chat prompt."""
    out = model.generate(torch.tensor([prompt], device=device_of(model)), max_new_tokens=max_new_tokens,
                         temperature=0.0, eos_token_id=EOS_ID, use_cache=True)
    new = out[0, len(prompt):].tolist()
    if EOS_ID in new:
        return new[:new.index(EOS_ID)], True
    return new, False


def _sft_loss(model, lab: Lab, cfg: ExperimentConfig, max_seq_len: int) -> tuple[Optional[float], Optional[int], dict]:
    from corpus.sft import prepare_sft

    if not cfg.data.sft_eval or not lab.resolve(cfg.data.sft_eval).is_file():
        return None, None, {}
    template = lab.resolve(cfg.data.chat_template) if cfg.data.chat_template else None
    cache = prepare_sft(lab.resolve(cfg.data.sft_eval), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                        tokenizer_config=template, max_bad_share=cfg.data.max_bad_share, progress=False)
    n = min(cache.num_docs, cfg.train.batch_size * cfg.eval.max_val_batches)
    docs = [cache.doc(i) for i in range(n)]
    loss, ce, tokens = val_loss_items(model, docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches)
    return loss, n, {"keys": list(range(len(ce))), "ce": ce, "tokens": tokens}


def sft_measures(model, tokenizer, lab: Lab, cfg: ExperimentConfig, probes: Optional[dict[str, list[dict]]],
                 seed: int) -> dict[str, Any]:
    """eval.json's SFT block, for every stage (a pretrain base is what an SFT run is compared with):
      sft_loss       teacher-forced loss on the assistant tokens of data.sft_eval (held-out conversations)
      chat_qa        {split or taught/eval_only: {accuracy, n, accuracy_ci}}: the probe's question asked in
                     chat format, greedy reply, hit when the answer and no distractor appears (reply_hit)
      chat           {stop_rate, mean_reply_tokens, repetition_rate, n} over those replies
      chat_samples   a few questions with their replies
      per_item       {"sft": {keys, ce, tokens}, "chat_qa": {group: {keys, hit}}} (merged into eval.json's per_item)
    Keys are null (or empty) where the data is missing or eval.chat_probes is 0."""
    from corpus.chat import QUESTIONS, question_text
    from corpus.sft import encode_chat, load_template
    from training import measures

    max_seq_len = model.config.max_seq_len
    sft_loss, sft_docs, sft_items = _sft_loss(model, lab, cfg, max_seq_len)
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
    with measures.evaluating(model):
        for split, items in probes.items():
            for probe in _sample([p for p in items if p.get("relation") in QUESTIONS], cfg.eval.chat_probes, seed):
                question = question_text(probe["relation"], probe["subject"])
                prompt = encode_chat(tokenizer, render, [{"role": "user", "content": question}])
                if len(prompt) >= max_seq_len:
                    continue
                tokens, stopped = chat_reply(model, prompt, cfg.eval.chat_max_new_tokens)
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
