"""Every measure of a model: the trainer's periodic eval and `training.evaluate` both use these.

Model measures run in eval mode under no_grad and put the model back in its previous mode:
  masked_ce          the training loss (also used teacher-forced on validation)
  val_loss           teacher-forced validation loss over batches of held-out docs
  inference_loss     prompt, then the reference scored token by token through the
                     KV-cached incremental path (what catches the lab's 1.4.3 failure)
  continuations      greedy (and optionally sampled) continuations of the prompts
  recall             answer rank among same-relation distractors by log-likelihood
  retrieval          whether a probe's own bank entry is among the candidates read at the
                     prompt's last token (memory presets), against a shuffled control
  periodic_eval      the trainer's eval row (no recall, no samples, no sampling)
Pure statistics over token sequences and scores (numpy only, no model):
  repetition_rate (seq-rep-n), distinct_n, rank_of_answer, bootstrap_ci
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from minimind import guardrails as rules
from minimind.config import ExperimentConfig
from training.data import BOS_ID, EOS_ID, collate


# --- pure statistics ------------------------------------------------------------------

def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def seq_rep_n(tokens: Sequence[int], n: int = 4) -> float | None:
    """1 - unique n-grams / all n-grams of one sequence; None if it has no n-gram."""
    grams = ngrams(list(tokens), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def repetition_rate(sequences: Sequence[Sequence[int]], n: int = 4) -> float | None:
    """seq-rep-n averaged over the sequences that have at least one n-gram."""
    values = [v for v in (seq_rep_n(s, n) for s in sequences) if v is not None]
    return float(np.mean(values)) if values else None


def distinct_n(sequences: Sequence[Sequence[int]], n: int = 2) -> float | None:
    """Unique n-grams / all n-grams, pooled over all sequences."""
    grams = [g for s in sequences for g in ngrams(list(s), n)]
    return len(set(grams)) / len(grams) if grams else None


def rank_of_answer(scores: Sequence[float], answer_index: int = 0) -> int:
    """1-based rank of the answer; ties count against it (a constant model is not lucky)."""
    target = scores[answer_index]
    return 1 + sum(1 for i, s in enumerate(scores) if i != answer_index and s >= target)


def bootstrap_ci(values: Sequence[float], seed: int = 0, rounds: int = 1000) -> list[float] | None:
    """Percentile 95% interval of the mean, from `rounds` seeded resamples."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(rounds, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [float(low), float(high)]


# --- model measures -------------------------------------------------------------------

# fp32 logit elements per cross-entropy chunk (64 MB): with MiniMind2's 6,400-token
# vocabulary about 2,600 positions, so a 128 x 512 batch never holds its 1.7 GB fp32
# logits, nor their log-softmax, at once.
CE_CHUNK_ELEMENTS = 1 << 24


class _ChunkedCE(torch.autograd.Function):
    """sum_i w_i * CE(logits_i, target_i) over rows, computed chunk by chunk in fp32.

    The forward pass also computes the gradient of each chunk (softmax - onehot, times w)
    and keeps it in the logits' dtype: the only full-size tensor is that gradient, which
    the backward pass needs anyway; the fp32 work exists one chunk at a time."""

    @staticmethod
    def forward(ctx, logits, targets, weights, chunk: int):
        rows = logits.size(0)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        for start in range(0, rows, chunk):
            x = logits[start:start + chunk].float()
            t = targets[start:start + chunk, None]
            w = weights[start:start + chunk]
            lse = torch.logsumexp(x, dim=-1)
            total += ((lse - x.gather(1, t).squeeze(1)) * w).sum()
            if grad is not None:
                g = torch.exp(x - lse[:, None])
                g.scatter_add_(1, t, -torch.ones_like(t, dtype=g.dtype))
                grad[start:start + chunk] = (g * w[:, None]).to(grad.dtype)
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None, None


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
              chunk_elements: int = CE_CHUNK_ELEMENTS) -> torch.Tensor:
    """Mean cross-entropy over unmasked positions, in fp32. logits (B, T, V), targets/mask (B, T).

    Computed over chunks of positions (CE_CHUNK_ELEMENTS fp32 logits each), equal to the
    unchunked masked mean within float rounding, gradients included."""
    vocab = logits.size(-1)
    flat = logits.reshape(-1, vocab)
    weights = mask.reshape(-1).float()
    weights = weights / weights.sum().clamp_min(1.0)
    # a masked position's target may be padding: any valid index does, its weight is 0
    targets = targets.reshape(-1).clamp(0, vocab - 1)
    return _ChunkedCE.apply(flat, targets, weights, max(1, chunk_elements // vocab))


@contextmanager
def evaluating(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def val_loss(model, docs: Sequence[np.ndarray], max_seq_len: int, batch_size: int, max_batches: int) -> Optional[float]:
    """Token-weighted mean CE over the first max_batches batches of validation docs."""
    return val_loss_items(model, docs, max_seq_len, batch_size, max_batches)[0]


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


def split_prompt(doc: np.ndarray, prompt_tokens: int, max_seq_len: int) -> tuple[list[int], list[int]]:
    """(prompt, reference) ids. Documents shorter than prompt_tokens + 1 are split in half
    so short corpora (one sentence per document) still give a continuation to score.
    A conversation (tokens, assistant flags) splits where its first reply starts: the
    prompt is the chat up to `<s>assistant\n`, the reference that reply."""
    if isinstance(doc, tuple):
        tokens, flags = [int(t) for t in doc[0][:max_seq_len + 1]], [bool(f) for f in doc[1][:max_seq_len + 1]]
        if True not in flags:
            return tokens, []
        start = flags.index(True)
        end = flags.index(False, start) if False in flags[start:] else len(flags)
        return tokens[:start], tokens[start:end]
    tokens = [int(t) for t in doc[:max_seq_len + 1]]
    cut = prompt_tokens if len(tokens) > prompt_tokens + 1 else max(1, len(tokens) // 2)
    return tokens[:cut], tokens[cut:]


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


def inference_loss(model, pairs: Sequence[tuple[list[int], list[int]]]) -> Optional[float]:
    return inference_loss_items(model, pairs)[0]


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


def entry_rank(reads: Sequence[Sequence[tuple[int, float]]], rows: Sequence[int]) -> Optional[int]:
    """1-based best rank of any of `rows` among the candidates of any memory layer (one
    token's `inspect_memory` reads), None when no layer read it."""
    wanted = set(rows)
    ranks = [rank for layer in reads for rank, (entry, _) in enumerate(layer, 1) if entry in wanted]
    return min(ranks) if ranks else None


def prompt_reads(model, prompt_ids: list[int]) -> list[list[tuple[int, float]]]:
    """The candidates (entry, weight), best first, that each memory layer reads at the last
    token of `<s> prompt`: the position whose prediction recall scores."""
    return model.inspect_memory(torch.tensor([[BOS_ID] + prompt_ids], device=device_of(model)),
                                top=model.config.num_candidates)[-1]


RETRIEVAL_SPLITS = ("mem_only", "both")  # the splits whose facts the bank holds (corpus.splits.IN_KNOWLEDGE)


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


# --- the trainer's periodic eval --------------------------------------------------------

def eval_pairs(docs, cfg: ExperimentConfig, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, reference) of the first eval.num_samples documents that give both."""
    pairs = [split_prompt(d, cfg.eval.prompt_tokens, max_seq_len) for d in docs[: cfg.eval.num_samples]]
    return [(p, r) for p, r in pairs if p and r]


def periodic_eval(model, val_docs, cfg: ExperimentConfig, train_loss: Optional[float]) -> dict[str, Any]:
    """{"eval/val_loss", "eval/inference_loss", "eval/train_inference_ratio",
    "eval/repetition_rate", "eval/memory_entropy" (the worst layer's selection entropy, the
    guardrail's measure), "eval/memory_candidate_entropy"} (None where unavailable).

    Run on rank 0 with the unwrapped model. It uses no random numbers, so running it
    never changes what the resumed run would compute.
    """
    max_seq_len = model.config.max_seq_len
    stats = getattr(model, "memory_stats", None)
    if stats:
        stats(reset=True)  # drop training reads so the entropy below is the eval's own
    val = val_loss(model, val_docs, max_seq_len, cfg.train.batch_size, cfg.eval.max_val_batches)
    memory = stats(reset=True) if stats else {}
    pairs = eval_pairs(val_docs, cfg, max_seq_len)
    inference = inference_loss(model, pairs)
    greedy = continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens)
    ratio = inference / train_loss if inference is not None and train_loss else None
    return {
        "eval/val_loss": val,
        "eval/inference_loss": inference,
        "eval/train_inference_ratio": ratio,
        "eval/repetition_rate": repetition_rate(greedy, 4),
        "eval/memory_entropy": memory.get("selection_entropy") if memory else None,
        "eval/memory_candidate_entropy": rules.candidate_entropy_of(memory, "") if memory else None,
    }
