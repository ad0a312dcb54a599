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
  measure            the core measurement periodic and final evaluation share: validation
                     and inference loss, greedy continuations, the memory statistics
  periodic_eval      the trainer's eval row: `measure` under its eval/ keys
Pure statistics over token sequences and scores (numpy only, no model):
  repetition_rate (seq-rep-n), distinct_n, rank_of_answer, bootstrap_ci
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from minimind import guardrails as rules
from minimind.config import ExperimentConfig
from training.data import BOS_ID, EOS_ID, PAD_ID, collate


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


# Rows per batched model call of the evaluation: prompts decoded together, probes scored
# together. The model takes no padding mask, so prompts share a decode batch only with
# prompts of their own length (_length_groups) and scored rows are padded on the right,
# after every position read: each row sees exactly what it would see alone.
EVAL_ROWS = 64
# Decoding asks the device whether every row has ended once per this many steps: each ask
# is a host sync; the steps run past the last </s> only add padding, cut away after.
DONE_CHECK_STEPS = 8

Progress = Optional[Callable[[int, int], None]]  # (items done, items in all), after each batch


def _report(progress: Progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def _length_groups(lengths: Sequence[int], rows: int = EVAL_ROWS) -> list[list[int]]:
    """Indices grouped by equal length (groups in order of first appearance), cut into
    batches of at most `rows`."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [g[s:s + rows] for g in groups.values() for s in range(0, len(g), rows)]


@contextmanager
def head_at(model, select: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[bool]:
    """Within: the model's output head projects only select(hidden states) (B, T, dim) to the
    vocabulary, so the logits the model returns are of those positions alone. The head is
    most of the work at a 6,400-token vocabulary, and a prompt's prefill, or a probe's prefix,
    needs the logits of a few positions. Yields whether it selects: a model without an
    `output` head (not ours) is left alone and returns every position."""
    head = getattr(model, "output", None)
    handle = head.register_forward_pre_hook(lambda _, args: (select(args[0]), *args[1:])) \
        if isinstance(head, torch.nn.Linear) else None
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.remove()


def _last(h: torch.Tensor) -> torch.Tensor:
    return h[:, -1:]


def val_loss(model, docs: Sequence[np.ndarray], max_seq_len: int, batch_size: int, max_batches: int,
             progress: Progress = None) -> Optional[float]:
    """Token-weighted mean CE over the first max_batches batches of validation docs."""
    return val_loss_items(model, docs, max_seq_len, batch_size, max_batches, progress)[0]


def val_loss_items(model, docs: Sequence[np.ndarray], max_seq_len: int, batch_size: int,
                   max_batches: int, progress: Progress = None) -> tuple[Optional[float], list[float], list[int]]:
    """(token-weighted mean CE, summed CE per document, tokens per document) over the
    first max_batches batches; the per-document sums let a comparison on the same
    documents get a paired interval (minimind.verdict). The sums stay on the device until
    one read after the last batch."""
    if not docs:
        return None, [], []
    device = device_of(model)
    stop = min(len(docs), batch_size * max_batches)
    parts: list[torch.Tensor] = []
    with evaluating(model):
        for start in range(0, stop, batch_size):
            inputs, targets, mask = collate(docs[start:start + batch_size], max_seq_len)
            inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
            logits = model(inputs).logits
            per_token = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                        reduction="none").view_as(mask)
            parts.append(torch.stack([(per_token * mask).sum(dim=1), mask.sum(dim=1)]))  # fp32 both: counts < 2^24
            _report(progress, min(start + batch_size, stop), stop)
    sums, counts = torch.cat(parts, dim=1).tolist()
    counts = [int(c) for c in counts]
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


def inference_loss(model, pairs: Sequence[tuple[list[int], list[int]]], progress: Progress = None) -> Optional[float]:
    return inference_loss_items(model, pairs, progress)[0]


def inference_loss_items(model, pairs: Sequence[tuple[list[int], list[int]]],
                         progress: Progress = None) -> tuple[Optional[float], list[float], list[int]]:
    """(token-weighted inference loss, summed CE per pair, tokens per pair).

    Each reference is scored after its prompt one token at a time through the KV cache.
    Pairs whose prompts have one length go through together: the prompt in one call, then
    one call per reference position for the whole batch (a row whose reference has ended
    is fed padding, and its losses there are dropped). The per-token losses stay on the
    device until one read at the end, then are summed per pair in token order."""
    device = device_of(model)
    scored = [i for i, (_, reference) in enumerate(pairs) if reference]
    batches: list[tuple[list[int], torch.Tensor]] = []
    with evaluating(model):
        for group in _length_groups([len(pairs[i][0]) for i in scored]):
            rows = [scored[j] for j in group]
            width = max(len(pairs[i][1]) for i in rows)
            references = torch.tensor([pairs[i][1] + [0] * (width - len(pairs[i][1])) for i in rows], device=device)
            with head_at(model, _last):  # the prompt's prefill: only its last position is scored
                out = model(torch.tensor([pairs[i][0] for i in rows], device=device), use_cache=True)
            losses = []
            for t in range(width):
                losses.append(F.cross_entropy(out.logits[:, -1, :].float(), references[:, t], reduction="none"))
                if t + 1 < width:
                    out = model(references[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            batches.append((rows, torch.stack(losses, dim=1)))  # (rows, width)
            _report(progress, sum(len(r) for r, _ in batches), len(scored))
    sums, counts = [0.0] * len(pairs), [0] * len(pairs)
    values = torch.cat([losses.flatten() for _, losses in batches]).tolist() if batches else []
    at = 0
    for rows, losses in batches:
        width = losses.shape[1]
        for k, i in enumerate(rows):
            total = 0.0
            for v in values[at + k * width: at + k * width + len(pairs[i][1])]:
                total += v  # in token order, as one reference alone was summed
            sums[i], counts[i] = total, len(pairs[i][1])
        at += len(rows) * width
    total, count = sum(sums), sum(counts)
    return (total / count if count else None), sums, counts


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generators) -> torch.Tensor:
    """The next token of each row, as MiniMindLM._pick, sampling each row from its own generator."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = (logits / temperature).softmax(dim=-1)
    if top_p < 1.0:  # nucleus: keep the smallest set of likeliest tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
        probs = torch.zeros_like(probs).scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.cat([torch.multinomial(probs[r:r + 1], 1, generator=g) for r, g in enumerate(generators)]).squeeze(1)


def decode(model, prompts: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
           generators: Optional[Sequence[torch.Generator]] = None) -> torch.Tensor:
    """The new tokens (B, n) after prompts (B, P) of one length, through the KV cache, as
    MiniMindLM.generate(use_cache=True) makes them: greedy at temperature 0, else sampled
    (row r from generators[r]); a row that has produced </s> goes on with padding. Stops
    after max_new_tokens, at max_seq_len, or once every row has ended (asked every
    DONE_CHECK_STEPS steps). Nothing is read back: the caller reads the result once."""
    tokens, past = prompts, None
    done = torch.zeros(prompts.shape[0], dtype=torch.bool, device=prompts.device)
    for step in range(min(max_new_tokens, model.config.max_seq_len - prompts.shape[1])):
        if past is None:
            with head_at(model, _last):  # the prefill: only the prompt's last position picks a token
                out = model(tokens, use_cache=True)
        else:
            out = model(tokens[:, -1:], past_key_values=past, use_cache=True)
        past = out.past_key_values
        next_token = _pick(out.logits[:, -1, :].float(), temperature, top_p, generators)
        next_token = torch.where(done, torch.full_like(next_token, PAD_ID), next_token)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        done |= next_token == EOS_ID
        if (step + 1) % DONE_CHECK_STEPS == 0 and bool(done.all()):
            break
    return tokens[:, prompts.shape[1]:]


def generated_rows(model, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, progress: Progress = None) -> list[list[int]]:
    """Each prompt's new tokens as decode() leaves them (</s> and what follows it included).
    Sampled rows are seeded per prompt (seed + its index), so they are reproducible and
    touch no global random state. One read per batch of prompts."""
    device = device_of(model)
    rows: list[list[int]] = [[] for _ in prompts]
    batches = []
    with evaluating(model):
        for group in _length_groups([len(p) for p in prompts]):
            generators = ([torch.Generator(device=device).manual_seed(seed + i) for i in group]
                          if temperature > 0 else None)
            new = decode(model, torch.tensor([prompts[i] for i in group], device=device), max_new_tokens,
                         temperature, top_p, generators)
            batches.append((group, new))
            _report(progress, sum(len(g) for g, _ in batches), len(prompts))
    for group, new in batches:
        for i, row in zip(group, new.tolist()):
            rows[i] = row
    return rows


def until_eos(ids: list[int]) -> list[int]:
    return ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids


def continuations(model, prompts: Sequence[list[int]], max_new_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0, progress: Progress = None) -> list[list[int]]:
    """Continuations of each prompt, cut at the first </s>. Greedy ones touch no random
    state; sampled ones are seeded per prompt (so they are reproducible) from their own
    generators (so they do not change the caller's random stream)."""
    return [until_eos(r) for r in generated_rows(model, prompts, max_new_tokens, temperature, top_p, seed, progress)]


def candidate_scores_batch(model, items: Sequence[tuple[list[int], Sequence[list[int]]]]) -> torch.Tensor:
    """Summed log-probability of each candidate's tokens after `<s> prompt`, for every
    (prompt, candidates) item, the prompts all of one length: (all candidates,) on the
    device, in order.

    The prompts go through the model once, keeping their keys and values; every candidate
    then continues from its own prompt's cache (the KV-cached path, which the preflight
    holds equal to the full sequence), so a prompt is not recomputed once per candidate.
    Candidate rows are padded on the right, after the positions they are scored at."""
    device = device_of(model)
    prefix = torch.tensor([[BOS_ID] + p for p, _ in items], device=device)  # (B, P)
    owner, cands = [], []
    for b, (_, candidates) in enumerate(items):
        owner += [b] * len(candidates)
        cands += [list(c) for c in candidates]
    width = max(1, max(len(c) for c in cands))  # an empty candidate scores 0
    with head_at(model, _last):  # the prompt's last position predicts every candidate's first token
        out = model(prefix, use_cache=True)
    owner_t = torch.tensor(owner, dtype=torch.long, device=device)
    firsts = torch.tensor([c[0] if c else 0 for c in cands], dtype=torch.long, device=device)
    table = torch.zeros((len(cands), width), device=device)  # (candidate, token): log-probabilities, 0 past the end
    first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)[owner_t].gather(1, firsts[:, None]).squeeze(1)
    table[:, 0] = torch.where(torch.tensor([bool(c) for c in cands], device=device), first, torch.zeros_like(first))
    # token j >= 1 of a candidate is scored at its token j - 1: only those positions reach the head
    where = [(r, j) for r, c in enumerate(cands) for j in range(1, len(c))]
    if where:
        rows_t = torch.tensor([r for r, _ in where], dtype=torch.long, device=device)
        slots_t = torch.tensor([j for _, j in where], dtype=torch.long, device=device)
        targets = torch.tensor([cands[r][j] for r, j in where], dtype=torch.long, device=device)

        def scored(h: torch.Tensor) -> torch.Tensor:  # (candidates, width - 1, ...) -> (scored tokens, ...)
            return h[rows_t, slots_t - 1]

        padded = torch.tensor([c[:-1] + [0] * (width - 1 - len(c[:-1])) for c in cands], dtype=torch.long, device=device)
        past = [(k[owner_t], v[owner_t]) for k, v in out.past_key_values]
        with head_at(model, scored) as selecting:
            logits = model(padded, past_key_values=past).logits
        logits = logits if selecting else scored(logits)
        table[rows_t, slots_t] = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    return table.sum(dim=1)  # a row sum: no atomic adds, the same sums on every run


def candidate_scores(model, prompt_ids: list[int], candidates: Sequence[list[int]]) -> list[float]:
    """Summed log-probability of each candidate's tokens after `<s> prompt`."""
    return candidate_scores_batch(model, [(prompt_ids, candidates)]).tolist()


def _probe_batches(prompt_lengths: Sequence[int], sizes: Sequence[int], rows: int = EVAL_ROWS * 4) -> list[list[int]]:
    """Probes of one prompt length whose candidate rows together stay within `rows` (at least one probe each)."""
    out = []
    for group in _length_groups(prompt_lengths, len(prompt_lengths) or 1):
        batch, used = [], 0
        for i in group:
            if batch and used + sizes[i] > rows:
                out.append(batch)
                batch, used = [], 0
            batch.append(i)
            used += sizes[i]
        out.append(batch)
    return out


def recall(model, tokenizer, probes: dict[str, list[dict[str, Any]]], max_per_split: int, seed: int,
           items: Optional[dict[str, Any]] = None, progress: Progress = None) -> dict[str, Any]:
    """{split: {p_at_1, mrr, n, p_at_1_ci, mrr_ci, chance_p_at_1}} over the first probes of each split.

    The candidates of many probes are scored in one model call; the scores of a split are
    read back once. `items`, when given, receives {split: {keys: [probe id], hit: [0/1], rr: [1/rank]}}."""
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    result: dict[str, Any] = {}
    total = sum(len(v[:max_per_split]) for v in probes.values())
    done = 0
    with evaluating(model):
        for split, split_probes in probes.items():
            chosen = split_probes[:max_per_split]
            encoded = [(encode(p["prompt"]), [encode(" " + o) for o in [p["answer"]] + list(p["distractors"])])
                       for p in chosen]
            batches, parts = _probe_batches([len(p) for p, _ in encoded], [len(c) for _, c in encoded]), []
            for batch in batches:
                parts.append(candidate_scores_batch(model, [encoded[i] for i in batch]))
                done += len(batch)
                _report(progress, done, total)
            flat = torch.cat(parts).tolist() if parts else []
            scores_of, at = {}, 0
            for i in (i for batch in batches for i in batch):
                scores_of[i], at = flat[at:at + len(encoded[i][1])], at + len(encoded[i][1])
            hits, recips, chance, keys = [], [], [], []
            for i, (probe, (_, candidates)) in enumerate(zip(chosen, encoded)):
                scores = scores_of[i]
                if not all(math.isfinite(s) for s in scores):
                    continue
                rank = rank_of_answer(scores, 0)
                hits.append(1.0 if rank == 1 else 0.0)
                recips.append(1.0 / rank)
                chance.append(1.0 / len(candidates))
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


def last_token_entries(model, prompts: Sequence[list[int]]) -> torch.Tensor:
    """(prompts, memory layers, num_candidates) entries, best first, that each memory layer
    reads at the last token of `<s> prompt`, for all prompts in one model call (rows padded
    on the right, after that token), on the device. What prompt_reads gives one prompt at a
    time, through the layers' capture (inspect_memory's: the reads neither count nor train)."""
    device = device_of(model)
    layers = [layer for _, layer in model.memory_layers()]
    rows = [[BOS_ID] + p for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    last = torch.tensor([i * width + len(r) - 1 for i, r in enumerate(rows)], dtype=torch.long, device=device)
    for layer in layers:
        layer.capture = []
    try:
        with head_at(model, _last):  # the logits are not wanted: the head's work is cut to one position
            model(ids.to(device))
        captured = [layer.capture[0][0] for layer in layers]  # (rows * width, C) entries per layer
    finally:
        for layer in layers:
            layer.capture = None
    return torch.stack([entries[last] for entries in captured], dim=1)


def _batched_reads(model) -> bool:
    """Whether the model's memory layers capture their reads (older snapshots may not)."""
    return all(hasattr(layer, "capture") for _, layer in model.memory_layers())


RETRIEVAL_SPLITS = ("mem_only", "both")  # the splits whose facts the bank holds (corpus.splits.IN_KNOWLEDGE)


def retrieval(model, tokenizer, probes: dict[str, list[dict[str, Any]]], rows: dict[tuple, list[int]],
              max_per_split: int, seed: int, items: Optional[dict[str, Any]] = None,
              progress: Progress = None) -> dict[str, Any]:
    """Does the model read the bank entry of the fact it is asked? Per split of facts put in
    the bank: {n, in_bank, hit_at_1, hit_at_c, *_ci, mean_rank, control: {...}} over the first
    `max_per_split` probes whose fact sits in a bank row (`rows`: corpus.knowledge.bank_rows).

    hit@1: the fact's entry is some memory layer's best candidate at the prompt's last token;
    hit@C: it is among the num_candidates read there. The control asks the same reads about
    the entry of a random other fact of the bank (seeded): what chance alone gives.
    `items`, when given, receives {split: {keys, hit_at_1, hit_at_c, rank (0 = not read),
    control_hit_at_1, control_hit_at_c}}: per probe, so minimind.verdict can pair them.
    The reads of EVAL_ROWS probes come from one model call, read back once per split."""
    from corpus.knowledge import probe_key

    facts = sorted(rows)
    result: dict[str, Any] = {"num_candidates": model.config.num_candidates,
                              "memory_layers": len(model.memory_layers()), "knowledge_num": model.config.knowledge_num}
    rng = np.random.default_rng(seed)
    chosen_by_split = {split: [(p, rows[k]) for p in probes.get(split) or [] if (k := probe_key(p)) in rows]
                       for split in RETRIEVAL_SPLITS}
    total = sum(len(c[:max_per_split]) for c in chosen_by_split.values())
    done = 0
    with evaluating(model):
        for split in RETRIEVAL_SPLITS:
            chosen = chosen_by_split[split]
            asked = chosen[:max_per_split]
            encoded = [tokenizer.encode(probe["prompt"], add_special_tokens=False).ids for probe, _ in asked]
            if _batched_reads(model):
                parts = []
                for start in range(0, len(encoded), EVAL_ROWS):
                    parts.append(last_token_entries(model, encoded[start:start + EVAL_ROWS]))
                    done += len(encoded[start:start + EVAL_ROWS])
                    _report(progress, done, total)
                entries = torch.cat(parts).tolist() if parts else []
                all_reads = [[[(e, 0.0) for e in layer] for layer in row] for row in entries]
            else:  # one prompt at a time through inspect_memory
                all_reads = []
                for prompt in encoded:
                    all_reads.append(prompt_reads(model, prompt))
                    done += 1
                    _report(progress, done, total)
            hit1, hitc, ranks, keys, c1, cc = [], [], [], [], [], []
            for i, ((probe, own), reads) in enumerate(zip(asked, all_reads)):
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


@dataclass
class Measured:
    """One model's core measurement on held-out documents (`measure`): what the trainer's
    periodic eval and the final evaluation both report, each under its own keys
    (PERIODIC_KEYS here, the eval.json literal in training/evaluate.py)."""

    val_loss: Optional[float]
    val_ce: list[float]  # summed CE per validation document (paired comparisons)
    val_tokens: list[int]
    pairs: list[tuple[list[int], list[int]]]  # (prompt, reference) of eval_pairs
    inference_loss: Optional[float]
    inference_ce: list[float]  # summed CE per pair
    inference_tokens: list[int]
    greedy: list[list[int]]  # each prompt's greedy continuation
    memory: dict[str, float]  # memory_stats() of the validation pass alone; {} without memory layers

    @property
    def repetition_rate(self) -> Optional[float]:
        return repetition_rate(self.greedy, 4)

    @property
    def memory_entropy(self) -> Optional[float]:
        return self.memory.get("selection_entropy")  # the guardrail's measure: the worst layer's

    @property
    def memory_candidate_entropy(self) -> Optional[float]:
        return rules.candidate_entropy_of(self.memory, "")


def measure(model, val_docs, cfg: ExperimentConfig, start: Optional[Callable[[str], Progress]] = None,
            decode_passes: int = 1) -> Measured:
    """Validation loss, inference loss and greedy continuations of the eval pairs, and the
    memory statistics of the validation pass alone (the window is reset before it, and after
    the decoding, whose reads are not training traffic).

    start(part) begins a part of a progress display ("validation loss", "inference
    decoding", "samples") and returns its tick; the samples tick counts the greedy pass as
    the first of `decode_passes` passes over the prompts (the final evaluation samples once
    more). Uses no random numbers, so running it never changes what a resumed run computes.
    """
    start = start or (lambda part: None)
    max_seq_len = model.config.max_seq_len
    stats = getattr(model, "memory_stats", None)
    if stats:
        stats(reset=True)  # drop training reads so the entropy below is the eval's own
    val, val_ce, val_tokens = val_loss_items(model, val_docs, max_seq_len, cfg.train.batch_size,
                                             cfg.eval.max_val_batches, start("validation loss"))
    memory = (stats(reset=True) if stats else None) or {}
    pairs = eval_pairs(val_docs, cfg, max_seq_len)
    inference, inference_ce, inference_tokens = inference_loss_items(model, pairs, start("inference decoding"))
    tick = start("samples")
    greedy = continuations(model, [p for p, _ in pairs], cfg.eval.max_new_tokens,
                           progress=tick and (lambda done, _: tick(done, decode_passes * len(pairs))))
    if stats:
        stats(reset=True)  # the decoding's reads are not training traffic: the next log row counts only training
    return Measured(val, val_ce, val_tokens, pairs, inference, inference_ce, inference_tokens, greedy, memory)


def train_inference_ratio(inference: Optional[float], train_loss: Optional[float]) -> Optional[float]:
    """Inference loss over train loss: far above 1 when the cached path fails (lab 1.4.3)."""
    return inference / train_loss if inference is not None and train_loss else None


# The trainer's metrics key of each measurement (eval.json names them as Measured does).
PERIODIC_KEYS = {
    "eval/val_loss": "val_loss",
    "eval/inference_loss": "inference_loss",
    "eval/train_inference_ratio": "train_inference_ratio",
    "eval/repetition_rate": "repetition_rate",
    "eval/memory_entropy": "memory_entropy",
    "eval/memory_candidate_entropy": "memory_candidate_entropy",
}


def periodic_eval(model, val_docs, cfg: ExperimentConfig, train_loss: Optional[float]) -> dict[str, Any]:
    """The PERIODIC_KEYS of `measure` (None where unavailable); train_inference_ratio against
    the trainer's own train loss. Run on rank 0 with the unwrapped model."""
    measured = measure(model, val_docs, cfg)
    ratio = train_inference_ratio(measured.inference_loss, train_loss)
    return {key: ratio if name == "train_inference_ratio" else getattr(measured, name)
            for key, name in PERIODIC_KEYS.items()}
