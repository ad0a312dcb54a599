"""Preflight checks: the lab's lessons as code that runs on the experiment's own model.

Each check is a `Check`: an id, the lesson it enforces, where that lesson came from, and a
function that takes a `Probe` (the model file's module, built at a tiny size: same code,
same preset, small dims, CPU) and returns a `Result`. A result is `passed`, `failed`,
`could_not_check` (the check could not find what it looks for: said loudly, never a pass)
or `not_applicable` (the preset has no such part, e.g. no memory layer in `original`).

A lab adds its own checks in `checks.py` at the lab's root, loaded by path:

    from lifecycle.knowledge.checks import Check, Result

    def no_dropout(probe):
        cfg = probe.config
        return Result.passed("dropout is 0") if cfg["dropout"] == 0 else Result.failed(f"dropout {cfg['dropout']}")

    CHECKS = [Check("no_dropout", "Pretraining runs without dropout.", "lab note 2024-05", no_dropout)]

A Result may carry its detail in Chinese too (`Result.passed("…", zh="…")`) and a Check its
lesson and source (`lesson_zh=`, `source_zh=`): a zh record shows them; without them it
shows the English.

The verb is lifecycle/check.py (`minimind check`, and `new` before it launches).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from minimind.errors import MinimindError

PASSED, FAILED, COULD_NOT, NOT_APPLICABLE = "passed", "failed", "could_not_check", "not_applicable"
LAB_CHECKS_FILE = "checks.py"
SEQ = 12          # tokens of the probe sequences
ATOL = 1e-5       # logits agree within this (fp32 on CPU: the paths differ by ~1e-7, a position bug by ~1e-4)


@dataclass(frozen=True)
class Result:
    """`detail` in English; `detail_zh` the same in Chinese for a zh record (a lab's own
    check may leave it out: its English detail is shown)."""

    status: str
    detail: str
    detail_zh: Optional[str] = None

    @classmethod
    def passed(cls, detail: str, zh: Optional[str] = None) -> "Result":
        return cls(PASSED, detail, zh)

    @classmethod
    def failed(cls, detail: str, zh: Optional[str] = None) -> "Result":
        return cls(FAILED, detail, zh)

    @classmethod
    def could_not(cls, detail: str, zh: Optional[str] = None) -> "Result":
        return cls(COULD_NOT, detail, zh)

    @classmethod
    def not_applicable(cls, detail: str, zh: Optional[str] = None) -> "Result":
        return cls(NOT_APPLICABLE, detail, zh)


@dataclass(frozen=True)
class Check:
    id: str
    lesson: str
    source: str
    run: Callable[["Probe"], Result]
    lesson_zh: Optional[str] = None   # the lesson and its source in Chinese (zh records)
    source_zh: Optional[str] = None


@dataclass
class Probe:
    """The experiment's model file at a tiny size. `config` is the tiny ModelConfig dict,
    `full_config` the experiment's own."""

    module: Any
    config: dict[str, Any]
    full_config: dict[str, Any]

    def build(self, **overrides: Any):
        import torch

        torch.manual_seed(0)
        cfg = self.module.ModelConfig.from_dict({**self.config, **overrides})
        model = self.module.MiniMindLM(cfg)
        model.eval()
        return model

    def tokens(self, length: int = SEQ, seed: int = 1):
        import torch

        g = torch.Generator().manual_seed(seed)
        return torch.randint(1, self.config["vocab_size"], (1, length), generator=g)


def tiny_config(module, full: dict[str, Any]) -> dict[str, Any]:
    """Small dims with the experiment's preset and every switch it sets (MoE, flash attention, freezing)."""
    fields = set(module.ModelConfig.fields_schema())
    grouped = full["n_kv_heads"] < full["n_heads"]
    knowledge_num = 64  # side 8
    small = {"dim": 32, "n_layers": min(full["n_layers"], 2), "n_heads": 4, "n_kv_heads": 2 if grouped else 4,
             "vocab_size": 96, "hidden_dim": None, "max_seq_len": 32, "dropout": 0.0,
             "knowledge_num": knowledge_num, "knowledge_length": min(full["knowledge_length"], 4),
             "knowledge_dim": 16, "num_candidates": min(full["num_candidates"], 4),
             "n_routed_experts": min(full.get("n_routed_experts", 4), 4),
             "num_experts_per_tok": min(full.get("num_experts_per_tok", 2), min(full.get("n_routed_experts", 4), 4))}
    return {**full, **{k: v for k, v in small.items() if k in fields}}


# --- the first set ---------------------------------------------------------------------------


def causality(probe: Probe) -> Result:
    import torch

    model = probe.build()
    ids = probe.tokens()
    t = SEQ // 2
    changed = ids.clone()
    changed[:, t + 1:] = (changed[:, t + 1:] % (probe.config["vocab_size"] - 1)) + 1  # every later token differs
    with torch.no_grad():
        a, b = model(ids).logits[:, : t + 1], model(changed).logits[:, : t + 1]
    gap = (a - b).abs().amax().item()
    if gap > ATOL:
        return Result.failed(f"changing tokens after position {t} changed the logits at positions ≤ {t} by up to {gap:.3g}: "
                             "the model sees the future",
                             f"改变位置 {t} 之后的 token,位置 ≤ {t} 的 logits 最多变化了 {gap:.3g}:模型看到了未来")
    return Result.passed(f"logits at positions ≤ {t} unchanged (max difference {gap:.1e}) when tokens after it change",
                         f"改变位置 {t} 之后的 token 时,位置 ≤ {t} 的 logits 不变(最大差异 {gap:.1e})")


def train_equals_inference(probe: Probe) -> Result:
    import torch

    model = probe.build()
    ids = probe.tokens()
    with torch.no_grad():
        full = model(ids).logits
        past, steps = None, []
        for i in range(ids.shape[1]):
            out = model(ids[:, i:i + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            steps.append(out.logits[:, -1])
    cached = torch.stack(steps, dim=1)
    gap = (full - cached).abs().amax(-1)[0]
    worst = int(gap.argmax())
    if gap[worst].item() > ATOL:
        first = int((gap > ATOL).nonzero()[0])
        return Result.failed(f"token-by-token KV-cached decoding differs from the full forward from position "
                             f"{first} on (max {gap[worst].item():.3g} at position {worst}): "
                             "training optimises a different function from the one inference runs",
                             f"逐 token 的 KV 缓存解码从位置 {first} 起与完整前向不同(位置 {worst} 处最大 "
                             f"{gap[worst].item():.3g}):训练优化的函数与推理运行的不是同一个")
    return Result.passed(f"full forward equals KV-cached decode at all {ids.shape[1]} positions "
                         f"(max difference {gap.max().item():.1e}, eval mode)",
                         f"在全部 {ids.shape[1]} 个位置上完整前向与 KV 缓存解码一致"
                         f"(最大差异 {gap.max().item():.1e},eval 模式)")


def _find(model, words: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    found = []
    for name, module in model.named_modules():
        kind = type(module).__name__.lower()
        if any(w in kind for w in words) and not any(w in kind for w in exclude):
            found.append((name, module))
    return found


def memory_query(probe: Probe) -> Result:
    import torch

    model = probe.build()
    if not getattr(model.config, "has_memory", False):
        return Result.not_applicable(f"preset {probe.config['preset']!r} has no memory layer",
                                     f"预设 {probe.config['preset']!r} 没有记忆层")
    memories = _find(model, ("memory",))
    attentions = _find(model, ("attention",))
    pairs = []
    for mem_name, mem in memories:
        parent = mem_name.rpartition(".")[0]
        same_block = [(n, a) for n, a in attentions if n.rpartition(".")[0] == parent]
        if len(same_block) == 1 and parent:
            pairs.append((parent, same_block[0][1], mem))
    if not pairs:
        found = f"(attention: {[n for n, _ in attentions][:4]}, memory: {[n for n, _ in memories][:4]})"
        return Result.could_not(f"could not find an attention module and a memory module in one block {found}; "
                                "the memory query is NOT verified",
                                f"未能在同一个 block 中找到注意力模块和记忆模块 {found};记忆查询【未】验证")
    seen: dict[str, dict[str, Any]] = {}
    handles = []
    blocks = dict(model.named_modules())
    for parent, attn, mem in pairs:
        slot = seen.setdefault(parent, {})

        def block_in(_m, args, kwargs, slot=slot):
            slot["x"] = args[0] if args else next(iter(kwargs.values()), None)

        def attn_out(_m, _args, output, slot=slot):
            slot["attn"] = output[0] if isinstance(output, tuple) else output

        def mem_in(_m, args, kwargs, slot=slot):
            slot["mem"] = args[0] if args else next(iter(kwargs.values()), None)

        handles += [blocks[parent].register_forward_pre_hook(block_in, with_kwargs=True),
                    attn.register_forward_hook(attn_out),
                    mem.register_forward_pre_hook(mem_in, with_kwargs=True)]
    try:
        with torch.no_grad():
            model(probe.tokens())
    finally:
        for h in handles:
            h.remove()
    verdicts = []
    for parent, slot in seen.items():
        x, attn, mem = slot.get("x"), slot.get("attn"), slot.get("mem")
        if not all(isinstance(t, torch.Tensor) for t in (x, attn, mem)) or mem.shape != attn.shape:
            return Result.could_not(f"{parent}: the hooks did not see tensors of one shape at the block input, the attention "
                                    "output and the memory input; the memory query is NOT verified",
                                    f"{parent}:钩子未在 block 输入、注意力输出和记忆输入处看到形状相同的张量;"
                                    "记忆查询【未】验证")
        if torch.allclose(mem, attn, atol=1e-6):
            verdicts.append((parent, "h_attn"))
        elif torch.allclose(mem, x + attn, atol=1e-5):
            return Result.failed(f"{parent}: the memory layer's input is x + h_attn (the block input plus the attention "
                                 "output), the architecture the lab's lesson on query specificity forbids",
                                 f"{parent}:记忆层的输入是 x + h_attn(block 输入加注意力输出),"
                                 "正是实验室经验“查询机制特异性原则”所禁止的架构")
        elif torch.allclose(mem, x, atol=1e-6):
            return Result.failed(f"{parent}: the memory layer's input is the block input x, not the attention output",
                                 f"{parent}:记忆层的输入是 block 输入 x,而不是注意力输出")
        else:
            return Result.could_not(f"{parent}: the memory layer's input is neither h_attn, x + h_attn nor x; "
                                    "the memory query is NOT verified",
                                    f"{parent}:记忆层的输入既不是 h_attn,也不是 x + h_attn 或 x;记忆查询【未】验证")
    return Result.passed(f"in {len(verdicts)} block(s) the memory layer's input is the attention output h_attn "
                         "(forward hooks on the attention output and the memory input)",
                         f"在 {len(verdicts)} 个 block 中记忆层的输入都是注意力输出 h_attn"
                         "(注意力输出与记忆输入上的前向钩子)")


def frozen_entries(probe: Probe) -> Result:
    import torch

    base = probe.build()
    if not getattr(base.config, "has_memory", False):
        return Result.not_applicable(f"preset {probe.config['preset']!r} has no memory bank",
                                     f"预设 {probe.config['preset']!r} 没有记忆库")
    # EMA as strong as it gets (decay 0, every step) with half the bank frozen: any leak shows.
    model = probe.build(ema_decay=0.0, ema_update_freq=1, freeze_ratio=0.5)
    frozen = model.memory_frozen.clone()
    before = model.memory_bank.clone()
    model.train()
    with torch.no_grad():
        model(probe.tokens(length=24, seed=2))
        model(probe.tokens(length=24, seed=3))
    selected = torch.cat([ids for _, layer in model.memory_layers() for ids, _, _ in layer.pending]).unique()
    touched_frozen = int(frozen[selected].sum())
    if touched_frozen == 0:
        return Result.could_not("the probe's tokens selected no frozen entry, so the EMA update was not exercised on one; "
                                "frozen entries are NOT verified",
                                "探测用的 token 没有选中任何冻结条目,EMA 更新未在冻结条目上检验;冻结条目【未】验证")
    model.after_optimizer_step(1)
    moved = (model.memory_bank != before).any(-1)
    leaked = int((moved & frozen).sum())
    if leaked:
        return Result.failed(f"{leaked} frozen entr{'y' if leaked == 1 else 'ies'} changed under an EMA update "
                             f"({touched_frozen} frozen entries were selected)",
                             f"{leaked} 个冻结条目在 EMA 更新中发生了变化(共选中 {touched_frozen} 个冻结条目)")
    return Result.passed(f"an EMA update (decay 0) changed {int(moved.sum())} unfrozen entries and none of the "
                         f"{touched_frozen} selected frozen ones",
                         f"一次 EMA 更新(decay 0)改变了 {int(moved.sum())} 个未冻结条目,"
                         f"被选中的 {touched_frozen} 个冻结条目均未改变")


def param_count(probe: Probe) -> Result:
    from lifecycle.knowledge.estimate import count_params
    from models.registry import block_specs

    model = probe.build()
    cfg = probe.config
    unique = {id(p): p.numel() for p in model.parameters()}
    actual = sum(unique.values())
    expected = count_params(cfg, block_specs(probe.module)[model.config.preset])["total"]
    problems, zh = [], []
    if actual != expected:
        problems.append(f"the model has {actual:,} parameters, the config implies {expected:,}")
        zh.append(f"模型有 {actual:,} 个参数,配置推算为 {expected:,}")
    if getattr(model.config, "has_memory", False):
        bank = getattr(model, "memory_bank", None)
        want = (cfg["knowledge_num"], cfg["knowledge_length"])
        if bank is None or tuple(bank.shape) != want:
            shape = None if bank is None else tuple(bank.shape)
            problems.append(f"the memory bank has shape {shape}, the config says {want}")
            zh.append(f"记忆库形状为 {shape},配置为 {want}")
        frozen = getattr(model, "memory_frozen", None)
        implied = round(cfg["freeze_ratio"] * cfg["knowledge_num"])
        if frozen is not None and int(frozen.sum()) != implied:
            problems.append(f"{int(frozen.sum())} entries are frozen, freeze_ratio implies {implied}")
            zh.append(f"冻结了 {int(frozen.sum())} 个条目,freeze_ratio 推算为 {implied}")
    if problems:
        return Result.failed("; ".join(problems) + " (at the tiny probe size)", ";".join(zh) + "(微型探测规模下)")
    bank = f"{cfg['knowledge_num']} × {cfg['knowledge_length']}"
    return Result.passed(f"{actual:,} parameters as the config implies at the probe size"
                         + (f"; bank {bank}" if model.config.has_memory else ""),
                         f"探测规模下参数量 {actual:,},与配置推算一致" + (f";记忆库 {bank}" if model.config.has_memory else ""))


GUIDE = "the lab guide (CLAUDE.md), 架构设计防护规则"
CHECKS = [
    Check("causality", "Position t never sees tokens after t; a leak is the classic cause of a train loss that "
          "collapses to near 0.", "the lab guide: 早期预警信号, a train loss that falls too low (训练Loss过低)", causality,
          "位置 t 永远看不到 t 之后的 token;因果泄漏是训练损失骤降到接近 0 的典型原因。",
          "实验室指南:早期预警信号,训练Loss过低"),
    Check("train_equals_inference", "The training path equals the inference path: a full forward equals "
          "token-by-token KV-cached decoding; evaluate autoregressively.",
          "the lab guide: 定期进行自回归推理评估 (evaluate autoregressively), the train/inference loss gap", train_equals_inference,
          "训练路径等于推理路径:完整前向与逐 token 的 KV 缓存解码一致;用自回归方式评估。",
          "实验室指南:定期进行自回归推理评估,训练-推理损失差异"),
    Check("memory_query", "The memory query is the attention output h_attn, never x + h_attn or x.",
          "the lab's lesson on query specificity (experiment/LESSONS.md; " + GUIDE + ")", memory_query,
          "记忆查询是注意力输出 h_attn,绝不是 x + h_attn 或 x。",
          "实验室经验:查询机制特异性原则(experiment/LESSONS.md;实验室指南,架构设计防护规则)"),
    Check("frozen_entries", "Frozen memory entries never change under an EMA update.",
          "the lab's lesson on frozen entries (experiment/LESSONS.md)", frozen_entries,
          "冻结的记忆条目在 EMA 更新中永不改变。", "实验室经验:冻结条目受保护(experiment/LESSONS.md)"),
    Check("param_count", "The parameter count and the bank shape match the config.",
          "minimind: the compute estimate and the record's sizes are computed from the config", param_count,
          "参数量和记忆库形状与配置一致。", "minimind:计算量估计和记录中的规模均由配置算出"),
]


def lab_checks(lab_root: Path) -> list[Check]:
    """The lab's own checks from `checks.py` at its root (none when the file is absent)."""
    path = Path(lab_root) / LAB_CHECKS_FILE
    if not path.is_file():
        return []
    spec = importlib.util.spec_from_file_location(f"minimind_lab_checks_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the lab's code: any error is the lab's, reported in one line
        raise MinimindError(f"{path}: could not load the lab's checks: {type(exc).__name__}: {exc}") from None
    checks = getattr(module, "CHECKS", None)
    if not isinstance(checks, (list, tuple)) or not all(isinstance(c, Check) for c in checks):
        raise MinimindError(f"{path}: must define CHECKS, a list of lifecycle.knowledge.checks.Check")
    return list(checks)


def lesson_evidence(lab_root: Path) -> dict[str, str]:
    """{check id: the Evidence line of the lab's lesson that this check enforces} from experiment/LESSONS.md."""
    from lifecycle.knowledge import lessons
    from minimind.lab import Lab

    found = lessons.load(Lab(Path(lab_root)))
    return {entry["Check"]: entry["Evidence"] for entry in found if entry.get("Evidence") and entry.get("Check")}


def run_all(module, full_config: dict[str, Any], lab_root: Optional[Path] = None,
            replace: Optional[dict[str, Callable[[Probe], Result]]] = None) -> list[dict[str, Any]]:
    """Every check on the module's model at the tiny size: [{id, lesson, source, status, detail}].
    `replace` runs another function for a check id (the code gate's parameter count of a change)."""
    import torch

    own = [dataclasses.replace(c, run=replace[c.id]) if replace and c.id in replace else c for c in CHECKS]
    checks = own + (lab_checks(lab_root) if lab_root else [])
    ids = [c.id for c in checks]
    duplicate = sorted({i for i in ids if ids.count(i) > 1})
    if duplicate:
        raise MinimindError(f"check id(s) defined twice: {', '.join(duplicate)}")
    probe = Probe(module, tiny_config(module, full_config), full_config)
    evidence = lesson_evidence(lab_root) if lab_root else {}
    results = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and keeps results deterministic
    try:
        for check in checks:
            try:
                result = check.run(probe)
            except Exception as exc:  # a model that crashes under a check fails it, with the reason
                said = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                result = Result.failed(f"the check raised {said}", f"检查抛出异常 {said}")
            if not isinstance(result, Result):
                result = Result.could_not(f"the check returned {type(result).__name__}, not a Result",
                                          f"检查返回了 {type(result).__name__},而不是 Result")
            # The lab's history (what happened when the lesson was learnt) is its lessons file's, not this module's.
            source = f"{evidence[check.id]} (experiment/LESSONS.md)" if check.id in evidence else check.source
            row = {"id": check.id, "lesson": check.lesson, "source": source,
                   "status": result.status, "detail": result.detail}
            zh = {k: v for k, v in (("lesson", check.lesson_zh), ("source", check.source_zh),
                                    ("detail", result.detail_zh)) if v}
            if zh:
                row["zh"] = zh  # the record's zh text; the English above is what the CLI prints
            results.append(row)
    finally:
        torch.set_num_threads(threads)
    return results


def localized(results: list[dict[str, Any]], lang: str) -> list[dict[str, Any]]:
    """Results with their text in `lang` where the check gave it (zh), for the record."""
    if lang != "zh":
        return results
    return [{**r, **(r.get("zh") or {})} for r in results]


def failed(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if r["status"] == FAILED]
