"""What an experiment will cost, before it is launched, and whether it can run at all.

`new` prints and records the estimate (plan.json `estimate`), refuses a config that
cannot run (vocab_size against the tokenizer, max_seq_len against the rotary tables, a
bank larger than the machine's memory), and gates a plan whose training FLOPs exceed the
base's by more than `preflight.compute_factor` (minimind.yaml) behind `--yes`.

The counts follow models/model.py's layers exactly (the preflight check `param_count`
builds the model and compares its real parameter count with `count_params`), so a code
change that adds or drops parameters shows up there first. FLOPs are the usual 2 per
multiply-add for the forward pass and 3x that for a training step; attention adds
2 * seq * dim per layer per token (scores and values, causal average). Wall time is
calibrated from the lab's own runs (tokens/s measured in metrics.jsonl on the same kind of
device and a model of the same size class) and says which run it used; without one
it says the estimate is uncalibrated.

No torch here: the device memory of a GPU is asked of torch only when torch is already
imported (inside `new`, which loaded the model file); the CLI's fast path never pays for it.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional

from minimind import devices
from minimind.errors import GateRefused
from minimind.phrases import phrase
from minimind.rundir import CONFIG_FILE, METRICS_FILE, PLAN_FILE, read_json, read_metrics

# The memory formula and its constants have one owner, shared with the trainer's plan.
from minimind.memory_plan import MEMORY_HEADROOM, bank_bytes, plan_micro_batch, train_memory
from minimind.memory_plan import ffn_hidden as _ffn_hidden
# A calibration run counts as the same size class when its FLOPs per token are within this factor.
SIZE_CLASS_FACTOR = 4.0


def block_spec(lab, cfg: dict):
    """The block layout of a resolved config's preset, asked of the model module that builds it
    (models/registry.py): the module owns its presets, so a preset added to model.py counts here."""
    from models.registry import LIVING, preset_spec

    name = cfg.get("model_module") or LIVING
    if not (lab.models_dir / f"{name}.py").is_file():
        name = LIVING  # an experiment being created: `new` snapshots the living model for it
    return preset_spec(lab.models_dir, name, cfg["model"]["preset"])


def count_params(m: dict, spec) -> dict[str, int]:
    """Trainable parameters of MiniMindLM(m) with block layout `spec`: {dense, memory, total}
    (tied embeddings counted once)."""
    feed_forward, memory = spec.feed_forward, spec.memory
    dim, layers = m["dim"], m["n_layers"]
    head = dim // m["n_heads"]
    attention = dim + 2 * dim * m["n_heads"] * head + 2 * dim * m["n_kv_heads"] * head  # norm, wq+wo, wk+wv
    ffn = 0
    if feed_forward:
        one = 3 * dim * _ffn_hidden(m)
        if m.get("use_moe"):
            ffn = m["n_routed_experts"] * one + m["n_routed_experts"] * dim + m.get("n_shared_experts", 0) * one
        else:
            ffn = one
        ffn += dim  # ffn_norm
    mem = 0
    if memory:
        kd, side = m["knowledge_dim"], math.isqrt(m["knowledge_num"])
        # norm, query, value, gate (dim x kd each), up (kd x kd), down (kd x dim), sub-keys (2 x side x kd/2)
        mem = dim + 4 * dim * kd + kd * kd + side * kd
    dense = m["vocab_size"] * dim + layers * (attention + ffn) + dim  # embeddings (tied), blocks, final norm
    return {"dense": dense, "memory": layers * mem, "total": dense + layers * mem}


def flops_per_token(m: dict, spec, seq: Optional[int] = None) -> int:
    """Forward FLOPs per token: the matmul parameters, attention over the sequence, the memory lookup."""
    seq = seq or m["max_seq_len"]
    p = count_params(m, spec)
    matmul = p["dense"] + p["memory"]  # norms and sub-keys are a rounding error here
    flops = 2 * matmul + 2 * m["n_layers"] * seq * m["dim"]
    if spec.memory:
        side, kd, c, length = math.isqrt(m["knowledge_num"]), m["knowledge_dim"], m["num_candidates"], m["knowledge_length"]
        flops += m["n_layers"] * (2 * side * kd + 2 * c * length * kd)  # sub-key scores, the weighted bag read
    return int(flops)


def _training_documents(lab, cfg: dict) -> Optional[int]:
    """Pretraining documents the trainer will see per epoch (lines of its data file minus the validation share)."""
    path = lab.resolve(cfg["data"]["pretrain"])
    try:
        with open(path, "rb") as handle:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except OSError:
        return None
    return max(1, int(lines * (1 - cfg["data"]["val_fraction"])))


SFT_SAMPLE_BYTES = 16 << 20  # an unprepared conversation file is counted from at most this much of it


def sft_tokens(lab, cfg: dict) -> Optional[dict[str, Any]]:
    """What one epoch of stage sft trains on: {docs, tokens, target_tokens, sampled} of the
    training split (training/sft.py splits as pretraining does), each conversation cut at
    max_seq_len + 1 tokens as the collate cuts it. `tokens` is every input token (prompt and
    assistant: the forward pass runs over all of them), `target_tokens` the assistant tokens
    the loss is on. From the prepared conversation cache when there is one (exact); else the
    file is tokenised here in memory, nothing written (`new` may still refuse), whole when it
    is at most SFT_SAMPLE_BYTES (exact again) or from its first SFT_SAMPLE_BYTES, scaled to its
    size (`sampled`: the share read). None when there is no conversation file to count."""
    import numpy as np

    from corpus.sft import find_sft_cache, sample_conversations
    from minimind.errors import MinimindError
    from training.data import split_documents

    data = cfg["data"]
    path = lab.resolve(data["sft"])
    if not path.is_file():
        return None
    template = lab.resolve(data["chat_template"]) if data.get("chat_template") else None
    tokenizer = lab.resolve(data["tokenizer"])
    seq = cfg["model"]["max_seq_len"]
    try:
        cache = find_sft_cache(path, tokenizer, lab.cache_dir, template)
        if cache is not None:
            offsets = np.asarray(cache.offsets, dtype=np.int64)
            starts, lengths = offsets[:-1], np.diff(offsets)
            kept = np.minimum(lengths, seq + 1)  # training.data.sample_tokens
            flags = np.concatenate([[0], np.cumsum(np.asarray(cache.targets, dtype=np.int64))])
            # position j predicts token j + 1: the targets are the flagged tokens 1 .. kept - 1 of each conversation
            inputs, targets, share = np.maximum(kept - 1, 0), flags[starts + kept] - flags[starts + np.minimum(1, kept)], 1.0
        else:
            docs, share = sample_conversations(path, tokenizer, template, SFT_SAMPLE_BYTES)
            inputs = np.array([max(min(len(ids), seq + 1) - 1, 0) for ids, _ in docs], dtype=np.int64)
            targets = np.array([int(f[1:seq + 1].sum()) for _, f in docs], dtype=np.int64)
    except (MinimindError, OSError, ValueError):
        return None  # a broken file is the launch's error to report, with its line numbers
    count = round(len(inputs) / share) if share < 1 else len(inputs)
    if count < 2:
        return None
    train_idx, _ = split_documents(count, data["val_fraction"], cfg["train"]["seed"])
    if share >= 1:
        tokens, target_tokens = int(inputs[train_idx].sum()), int(targets[train_idx].sum())
    else:  # the sample's mean, over the training split of the whole file
        tokens, target_tokens = int(inputs.mean() * len(train_idx)), int(targets.mean() * len(train_idx))
    return {"docs": int(len(train_idx)), "tokens": tokens, "target_tokens": target_tokens,
            "sampled": None if share >= 1 else share}


def pretrain_tokens(lab, cfg: dict) -> Optional[dict[str, int]]:
    """What one epoch of pretraining trains on, from the prepared token cache (exact): {docs,
    tokens} of the training split, each document cut at max_seq_len + 1 tokens as the collate
    cuts it. None before the cache exists (the first run, or `data prepare`, builds it)."""
    import numpy as np

    from corpus.prepare import find_pretrain_cache
    from minimind.errors import MinimindError
    from training.data import split_documents

    data, seq = cfg["data"], cfg["model"]["max_seq_len"]
    try:
        cache = find_pretrain_cache(lab.resolve(data["pretrain"]), lab.resolve(data["tokenizer"]), lab.cache_dir)
        if cache is None or cache.num_docs < 2:
            return None
        lengths = np.diff(np.asarray(cache.offsets, dtype=np.int64))
    except (MinimindError, OSError, ValueError):
        return None
    seed = data.get("split_seed")
    train_idx, _ = split_documents(cache.num_docs, data["val_fraction"], cfg["train"]["seed"] if seed is None else seed)
    inputs = np.maximum(np.minimum(lengths[train_idx], seq + 1) - 1, 0)  # training.data.input_tokens
    return {"docs": int(len(train_idx)), "tokens": int(inputs.sum())}


def training_tokens(lab, cfg: dict) -> tuple[Optional[int], int, dict[str, Any]]:
    """(tokens, optimizer steps, how they were counted as data for `counted_text`).

    Pretraining counts the documents' own tokens from the prepared token cache; without one,
    every sequence at max_seq_len, an upper bound (`bound`) that short documents make several
    times too high. Stage sft counts the conversation set's own tokens (prompt and assistant)."""
    t, seq, procs = cfg["train"], cfg["model"]["max_seq_len"], cfg["launch"]["num_processes"]
    per_step = t["batch_size"] * t["accumulation_steps"] * procs
    sft = sft_tokens(lab, cfg) if cfg.get("stage") == "sft" else None
    real = None if cfg.get("stage") == "sft" else pretrain_tokens(lab, cfg)
    docs = sft["docs"] if sft else (None if cfg.get("stage") == "sft" else
                                    real["docs"] if real else _training_documents(lab, cfg))
    if docs is not None:
        batches = -(-(docs // procs) // t["batch_size"])
        full = max(1, -(-(batches * t["epochs"]) // t["accumulation_steps"]))
        steps = min(full, t["max_steps"]) if t["max_steps"] else full
        how = {"kind": "sft" if sft else "docs", "docs": docs, "epochs": t["epochs"],
               "capped": bool(t["max_steps"] and steps == t["max_steps"]), "max_steps": t["max_steps"]}
        share = steps / full  # max_steps stops part-way: that share of the epochs' tokens
        if sft:
            how.update(target_tokens=int(sft["target_tokens"] * t["epochs"] * share), sampled=sft["sampled"])
            return int(sft["tokens"] * t["epochs"] * share), steps, how
        if real:
            return int(real["tokens"] * t["epochs"] * share), steps, {**how, "real": True}
        return steps * per_step * seq, steps, {**how, "bound": True}
    if t["max_steps"]:
        return t["max_steps"] * per_step * seq, t["max_steps"], {"kind": "max_steps", "max_steps": t["max_steps"],
                                                                 "stage": cfg.get("stage") or "pretrain", "bound": True}
    return None, 0, {"kind": "unknown", "stage": cfg.get("stage") or "pretrain"}


def counted_text(how: Any, lang: str = "en") -> str:
    """How the training tokens were counted, in words (older plan.json files hold the words already)."""
    if isinstance(how, str):
        return how
    say = lambda key, **values: phrase(f"estimate.{key}", lang, **values)  # noqa: E731
    kind = how.get("kind")
    if kind in ("docs", "sft"):
        what = say("counted", docs=f"{how['docs']:,}", what=say("conversations" if kind == "sft" else "documents"),
                   epochs=how["epochs"])
        if kind == "sft":
            what += say("counted_sft", target=_size(how["target_tokens"]))
            if how.get("sampled"):
                what += say("counted_sampled", share=f"{how['sampled']:.0%}")
        if how.get("real"):
            what += say("counted_real")
        elif how.get("bound"):
            what += say("counted_bound")
        return what + (say("counted_capped", n=how["max_steps"]) if how["capped"] else "")
    data = say("sft_file" if how.get("stage") == "sft" else "pretrain_file")
    if kind == "max_steps":
        return say("counted_max_steps", n=how["max_steps"], data=data)
    return say("counted_unknown", data=data)


def machine() -> devices.DeviceFacts:
    """This machine as the estimate sees it: torch is asked only when it is already imported."""
    return devices.facts_of(sys.modules.get("torch"))


# Device, precision and budget follow the trainer's rule (minimind/devices.py) on this machine.
def device_of(cfg: dict) -> str:
    """'cuda' or 'cpu': where the run will train."""
    return devices.device_kind(bool(cfg["launch"].get("cpu")), machine().cuda)


def _precision(cfg: dict, device: str) -> str:
    """launch.mixed_precision as the trainer resolves it (`auto`: bf16 only on a card that has it)."""
    return devices.resolve_precision(cfg["launch"].get("mixed_precision", "no"), cuda=device == "cuda",
                                     bf16_supported=machine().bf16_supported, cpu=bool(cfg["launch"].get("cpu")))


def memory_budget(cfg: dict, device: str) -> Optional[int]:
    """What the trainer plans its micro-batch against (training.runtime.memory_budget on the training device)."""
    return devices.memory_budget(cfg["launch"].get("memory_budget_gb") or 0, device, device_memory(device))


def device_memory(device: str) -> Optional[int]:
    """Bytes of memory on the training device (one GPU, or the machine's RAM)."""
    if device == "cuda":
        return machine().memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _calibration(lab, device: str, fpt: int, exclude: Optional[str]) -> Optional[dict[str, Any]]:
    """The newest run of this lab on the same device kind and size class with a measured tokens/s."""
    for version in reversed(lab.versions()):
        if version == exclude:
            continue
        run_dir = lab.run_dir(version)
        est = (read_json(run_dir / PLAN_FILE) or {}).get("estimate") or {}
        if est.get("device") != device or not est.get("flops_per_token"):
            continue
        ratio = est["flops_per_token"] / fpt
        if not 1 / SIZE_CLASS_FACTOR <= ratio <= SIZE_CLASS_FACTOR:
            continue
        speeds = [r["tokens_per_s"] for r in read_metrics(run_dir / METRICS_FILE)
                  if isinstance(r.get("tokens_per_s"), (int, float)) and r["tokens_per_s"] > 0]
        if speeds:
            measured = sum(speeds[-10:]) / len(speeds[-10:])
            # FLOPs per second is what carries over between sizes of one class, not tokens per second.
            return {"run": version, "tokens_per_s": measured, "scaled_tokens_per_s": measured * ratio}
    return None


def estimate(lab, cfg: dict, exclude: Optional[str] = None) -> dict[str, Any]:
    """The compute estimate of a resolved config (a plain dict, as config.yaml holds it)."""
    m, spec = cfg["model"], block_spec(lab, cfg)
    params = count_params(m, spec)
    fpt = flops_per_token(m, spec)
    tokens, steps, how = training_tokens(lab, cfg)
    train_flops = 3 * fpt * tokens if tokens is not None else None
    device = device_of(cfg)
    batch_tokens = cfg["train"]["batch_size"] * m["max_seq_len"]
    needed = train_memory(m, spec, params["total"], batch_tokens, _precision(cfg, device))["total"]
    budget = memory_budget(cfg, device)
    plan = None
    if budget is not None:  # the trainer's own plan: a micro-batch too big for the GPU is split
        plan = plan_micro_batch(cfg["train"]["batch_size"], cfg["train"]["accumulation_steps"], budget, m,
                                spec, params["total"], _precision(cfg, device)).as_dict()
    calib = _calibration(lab, device, fpt, exclude)
    wall = tokens / calib["scaled_tokens_per_s"] if calib and tokens else None
    return {"params": params, "bank_bytes": bank_bytes(m, spec), "flops_per_token": fpt, "train_tokens": tokens,
            "train_steps": steps, "tokens_counted": counted_text(how), "tokens_counted_how": how, "train_flops": train_flops, "device": device,
            "device_memory_bytes": needed, "device_memory_available": device_memory(device), "memory_plan": plan,
            "wall_s": wall, "calibration": calib}


def for_replicates(est: dict[str, Any], n: int) -> dict[str, Any]:
    """The estimate of an experiment of `n` replicates: training FLOPs and wall time count all of
    them (one after another on one device); tokens, steps and memory stay per replicate."""
    if n <= 1:
        return est
    out = dict(est, replicates=n, run_train_flops=est["train_flops"], run_wall_s=est["wall_s"])
    out["train_flops"] = est["train_flops"] * n if est["train_flops"] is not None else None
    out["wall_s"] = est["wall_s"] * n if est["wall_s"] is not None else None
    return out


def replicate_gate(est: dict[str, Any], added: int, factor: float, yes: bool) -> Optional[str]:
    """`minimind replicate`: adding `added` runs multiplies the experiment's compute by 1 + added;
    more than `factor` extra runs' worth needs --yes. Returns a note, or raises GateRefused."""
    if added <= factor:
        return None
    note = (f"{added} more replicates train {added}× the experiment's FLOPs ({_size(est['train_flops'])} each; "
            f"limit {factor:g}× in minimind.yaml preflight.compute_factor)")
    if yes:
        return note + " (accepted with --yes)"
    raise GateRefused(note + ". " + GATE_ADVICE)


def _size(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "unknown"
    for value, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= value:
            return f"{n / value:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def _duration(seconds: float, lang: str = "en") -> str:
    if seconds >= 86400:
        return phrase("estimate.days", lang, n=f"{seconds / 86400:.1f}")
    if seconds >= 3600:
        return phrase("estimate.hours", lang, n=f"{seconds / 3600:.1f}")
    if seconds >= 60:
        return phrase("estimate.minutes", lang, n=f"{seconds / 60:.1f}")
    return phrase("estimate.seconds", lang, n=f"{seconds:.0f}")


def summary_lines(est: dict[str, Any], lang: str = "en") -> list[str]:
    """The estimate as the lines `new` prints and the record shows (en or zh, the record's language)."""
    p = est["params"]
    avail = est.get("device_memory_available")
    plan = est.get("memory_plan")
    how = counted_text(est.get("tokens_counted_how") or est["tokens_counted"], lang)
    split = plan and plan["split"]
    bound = isinstance(est.get("tokens_counted_how"), dict) and est["tokens_counted_how"].get("bound")
    reps = est.get("replicates") or 1
    say = lambda key, **values: phrase(f"estimate.{key}", lang, **values)  # noqa: E731
    at_most = say("at_most") if bound else ""
    wall = (say("wall_uncalibrated", device=est["device"]) if est["wall_s"] is None else
            say("wall_calibrated", at_most=at_most, duration=_duration(est["wall_s"], lang), run=est["calibration"]["run"],
                tps=f"{est['calibration']['tokens_per_s']:.0f}"))
    return [
        say("params", dense=_size(p["dense"]), memory=_size(p["memory"]), total=_size(p["total"]),
            bank=_size(est["bank_bytes"], "B")),
        say("flops", fpt=_size(est["flops_per_token"]), at_most=at_most, tokens=_size(est["train_tokens"]),
            steps=f"{est['train_steps']:,}", how=how, flops=_size(est["train_flops"])),
        say("device", device=est["device"], needed=_size(est["device_memory_bytes"], "B"),
            of=say("device_of", avail=_size(avail, "B")) if avail else "",
            split=say("device_split", batch=plan["batch_size"], accumulation=plan["accumulation_steps"]) if split else ""),
        say("wall", wall=wall),
    ] + ([say("replicates", n=reps)] if reps > 1 else [])


def _tokenizer_vocab(lab, cfg: dict) -> Optional[int]:
    import json

    path = lab.resolve(cfg["data"]["tokenizer"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = [v for v in vocab.values() if isinstance(v, int)] + [t.get("id") for t in data.get("added_tokens") or []
                                                                if isinstance(t.get("id"), int)]
    return max(ids) + 1 if ids else None


def cannot_run(lab, cfg: dict, est: dict[str, Any]) -> list[str]:
    """Why this config cannot run at all (empty: it can)."""
    m = cfg["model"]
    problems = []
    vocab = _tokenizer_vocab(lab, cfg)
    if vocab is not None and vocab != m["vocab_size"]:
        problems.append(f"model.vocab_size is {m['vocab_size']:,} but the tokenizer {cfg['data']['tokenizer']} has "
                        f"{vocab:,} tokens; they must be equal")
    avail = est.get("device_memory_available")
    if avail:
        if est["bank_bytes"] > MEMORY_HEADROOM * avail:
            problems.append(f"the memory bank needs {_size(est['bank_bytes'], 'B')} "
                            f"({m['knowledge_num']:,} × {m['knowledge_length']} tokens) but the {est['device']} has "
                            f"{_size(avail, 'B')}")
        elif est.get("memory_plan") and not est["memory_plan"]["fits"]:
            problems.append(f"training needs about {_size(est['memory_plan']['needed_bytes'], 'B')} on the "
                            f"{est['device']} even at micro-batch 1 but the budget is "
                            f"{_size(est['memory_plan']['budget_bytes'], 'B')}")
        elif not est.get("memory_plan") and est["device_memory_bytes"] > MEMORY_HEADROOM * avail:
            problems.append(f"training needs about {_size(est['device_memory_bytes'], 'B')} on the {est['device']} "
                            f"but it has {_size(avail, 'B')}")
    return problems


def check_positions(model_module, model_cfg: dict) -> Optional[str]:
    """max_seq_len against the model's position tables: the tables of a tiny build of the same code."""
    model_cls = getattr(model_module, "MiniMindLM", None)
    if model_cls is None:
        return None
    # Only the rotary tables matter here: build them as the model does, for the configured length.
    tables = getattr(model_module, "rope_tables", None)
    if tables is None:
        return None
    head = model_cfg["dim"] // model_cfg["n_heads"]
    cos, _ = tables(head, model_cfg["max_seq_len"], model_cfg["rope_theta"])
    if cos.shape[0] < model_cfg["max_seq_len"]:
        return f"model.max_seq_len {model_cfg['max_seq_len']} exceeds the model's position tables ({cos.shape[0]} positions)"
    return None


# What the refusal tells `new`'s user; the demo, which has no --no-launch, says its own (lifecycle/demo.py).
GATE_ADVICE = "Launch it with --yes, or draft it with --no-launch"


def gate(lab, cfg: dict, est: dict[str, Any], base: Optional[str], factor: float, yes: bool, launch: bool,
         lang: str = "en") -> Optional[str]:
    """A GateRefused unless compute grows by at most `factor` over the base, or --yes / --no-launch; returns a note
    (in the record's language; the refusal is the CLI's, in English)."""
    if base is None or est["train_flops"] is None:
        return None
    base_cfg = _base_config(lab, base)
    if base_cfg is None:
        return None
    from minimind.rundir import replicate_dirs

    # Both sides count every replicate: `est` is the new experiment's in all (for_replicates).
    base_est = for_replicates(estimate(lab, base_cfg, exclude=base), len(replicate_dirs(lab.run_dir(base))))
    if not base_est["train_flops"]:
        return None
    ratio = est["train_flops"] / base_est["train_flops"]
    if ratio <= factor:
        return None
    values = dict(flops=_size(est["train_flops"]), ratio=f"{ratio:.1f}", base=base, base_flops=_size(base_est["train_flops"]),
                  factor=f"{factor:g}")
    note = phrase("estimate.gate", "en", **values)  # the refusal is the CLI's, in English
    if yes or not launch:
        return phrase("estimate.gate", lang, **values)
    raise GateRefused(note + "; estimate: " + "; ".join(summary_lines(est)) + ". " + GATE_ADVICE)


def _base_config(lab, base: str) -> Optional[dict]:
    import yaml

    try:
        return yaml.safe_load((lab.run_dir(base) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def refuse_if_cannot_run(lab, cfg: dict, est: dict[str, Any]) -> None:
    problems = cannot_run(lab, cfg, est)
    if problems:
        raise GateRefused("this config cannot run: " + "; ".join(problems) + ". Estimate: " + "; ".join(summary_lines(est)))

