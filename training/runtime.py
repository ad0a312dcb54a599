"""Building what a run needs from its config: accelerator, memory bank, data and probes.

Shared by the trainer and the evaluator so both read data the same way; models are built
by `models.registry`.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from minimind.config import ExperimentConfig
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import DS_CONFIG_FILE, lab_root
from training.data import split_documents


def make_accelerator(cfg: ExperimentConfig, run_dir: Path, n_params: int):
    """The run's Accelerator: accumulation, precision and (if asked) DeepSpeed, all from the config.

    accelerate owns gradient accumulation (`accumulate()` decides the boundary), so one loop
    step is one optimizer update under DDP and DeepSpeed alike. The DeepSpeed config is built
    here, from the run's config and the model's size, never from `accelerate launch` flags:
    the launcher only starts processes.
    """
    from accelerate import Accelerator

    # the resolved precision as a keyword: it wins over the launcher's ACCELERATE_MIXED_PRECISION
    kwargs: dict[str, Any] = {"mixed_precision": run_precision(cfg),
                              "gradient_accumulation_steps": cfg.train.accumulation_steps}
    if cfg.launch.cpu and cfg.launch.deepspeed:
        # accelerate's cpu=True would turn DeepSpeed off; DeepSpeed has its own CPU accelerator
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        os.environ.pop("ACCELERATE_USE_CPU", None)
    elif cfg.launch.cpu:
        kwargs["cpu"] = True
    if cfg.launch.deepspeed:
        from accelerate import DeepSpeedPlugin

        require_deepspeed(cfg)

        if "WORLD_SIZE" not in os.environ:
            _single_process_group()
        elif cfg.launch.cpu:
            # Without CUDA accelerate finds no backend for DeepSpeed's processes and reports
            # 1 process on every rank (each then read all the data and wrote every file),
            # while DeepSpeed itself ran with all of them. Named, it counts them.
            from accelerate.utils import InitProcessGroupKwargs

            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]

        from minimind.atomic import write_json

        ds = deepspeed_config(cfg, n_params, user_deepspeed_json(cfg, lab_root(run_dir)))
        if os.environ.get("RANK", "0") == "0":  # the config actually used, kept with the run
            write_json(Path(run_dir) / DS_CONFIG_FILE, ds)
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=ds)
    return Accelerator(**kwargs)


def prepare_for_training(acc, model, optimizer):
    """`acc.prepare(model, optimizer)`, the model's outputs left in the dtype autocast gives them.

    Under native AMP accelerate wraps the forward in `convert_outputs_to_fp32`, so a bf16
    run's logits came back as an fp32 copy, and the chunked loss then kept an fp32 gradient
    of them (training.measures.masked_ce is built for bf16 logits and does its fp32 work a
    chunk at a time): at 128 x 512 x 6400 about 5 GB instead of the 1.6 GiB the memory
    plan counts. The forward keeps accelerate's autocast and drops only that conversion.
    DeepSpeed and fp32 runs have no native AMP wrapper: nothing to drop."""
    model, optimizer = acc.prepare(model, optimizer)
    inner = acc.unwrap_model(model)
    original = inner.__dict__.get("_original_forward")
    if acc.native_amp and original is not None:
        from accelerate.utils import get_mixed_precision_context_manager

        # functools.wraps keeps `__wrapped__ = original`: accelerate's unwrapping still finds it
        inner.forward = get_mixed_precision_context_manager(acc.native_amp, acc.autocast_handler)(original)
    return model, optimizer


# --- device and precision (the trainer and the evaluator resolve them alike) ------------

PRECISIONS = ("no", "fp16", "bf16")


def resolve_precision(requested: str, *, cuda: bool, bf16_supported: bool, cpu: bool) -> str:
    """launch.mixed_precision as accelerate takes it, from the device facts (pure).

    `auto` (the default of new labs) is bf16 autocast on a CUDA device that supports bf16,
    else fp32 ("no"); an explicit value (an older lab's 'no' included) is kept as written."""
    if requested != "auto":
        return requested
    return "bf16" if cuda and not cpu and bf16_supported else "no"


def device_facts() -> dict[str, bool]:
    import torch

    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported())}


def run_precision(cfg: ExperimentConfig, facts: Optional[dict[str, bool]] = None) -> str:
    return resolve_precision(cfg.launch.mixed_precision, cpu=cfg.launch.cpu, **(facts or device_facts()))


def run_device(cfg: ExperimentConfig, cuda: Optional[bool] = None, local_rank: Optional[int] = None):
    """The device this process computes on: what accelerate picks for the trainer (its
    LOCAL_RANK's GPU, or the CPU with launch.cpu or without CUDA), and where evaluation
    puts the model."""
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if cfg.launch.cpu or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank)


def enable_tf32(device) -> None:
    """fp32 matmuls and convolutions on TensorFlow-32 cores (Ampere and later): the parts
    that stay fp32 under autocast (and whole fp32 runs) at several times the speed."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_deterministic(on: bool) -> Optional[str]:
    """launch.deterministic: torch's deterministic algorithms, where it has them. On CUDA,
    index_add_ and scatter_add_ (the memory statistics, the EMA store, the bag backward) then
    use sorted kernels instead of float atomics, and cuBLAS a fixed workspace; an op with no
    deterministic kernel warns rather than stops the run (warn_only). Returns the log line
    saying what it costs, or None when off. Called before any CUDA work (the workspace
    setting is read when cuBLAS starts)."""
    if not on:
        return None
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return ("deterministic algorithms on (launch.deterministic): on a GPU, sorted kernels instead of float atomics "
            "and a fixed cuBLAS workspace, so steps are slower; ops without a deterministic kernel warn below")


def autocast_for(device, precision: str):
    """The autocast context of `precision` on `device` (evaluation under the run's precision)."""
    import torch

    kind = getattr(device, "type", str(device))
    if precision == "bf16" or (precision == "fp16" and kind == "cuda"):
        return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return nullcontext()


def memory_budget(cfg: ExperimentConfig, device) -> Optional[int]:
    """Bytes a process may plan for: launch.memory_budget_gb, else the GPU's memory; a CPU
    run without a budget is not planned (lifecycle.estimate.memory_budget, the same rule)."""
    if cfg.launch.memory_budget_gb:
        return int(cfg.launch.memory_budget_gb * 2 ** 30)
    if getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    return int(torch.cuda.get_device_properties(device).total_memory)


def plan_memory(cfg: ExperimentConfig, model, device):
    """The micro-batch plan of this run's config for `model` on `device` (minimind.memory_plan)."""
    from minimind.memory_plan import plan_micro_batch

    return plan_micro_batch(cfg.train.batch_size, cfg.train.accumulation_steps, memory_budget(cfg, device),
                            model.config.to_dict(), sum(p.numel() for p in model.parameters()), run_precision(cfg))


def planned_config(cfg: ExperimentConfig, plan) -> ExperimentConfig:
    """The config the trainer trains with: the plan's micro-batch and accumulation."""
    import dataclasses

    if not plan.split:
        return cfg
    train = dataclasses.replace(cfg.train, batch_size=plan.batch_size, accumulation_steps=plan.accumulation_steps)
    return dataclasses.replace(cfg, train=train)


# --- DeepSpeed ------------------------------------------------------------------------

def _single_process_group() -> None:
    """DeepSpeed needs a process group even for one process; without a launcher this process
    is rank 0 of 1 on a free local port (so one-process runs need no launcher, and a stop
    signal reaches the trainer itself)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


# DeepSpeed before 0.19.2 cast every floating buffer with the module (module.bfloat16()):
# the rotary tables then lose their fp32 angles. 0.19.2 (PR #8066) keeps buffers in their dtype.
DEEPSPEED_MIN_VERSION = (0, 19, 2)


def deepspeed_version_refusal(version: Optional[str]) -> Optional[str]:
    """Why this DeepSpeed version (None: not installed) cannot train a run, or None (pure)."""
    need = ".".join(map(str, DEEPSPEED_MIN_VERSION))
    if version is None:
        return f"launch.deepspeed needs DeepSpeed >= {need}, which is not installed (pip install -e '.[gpu]')"
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < DEEPSPEED_MIN_VERSION:
        return (f"launch.deepspeed needs DeepSpeed >= {need}, found {version}: older versions cast the model's "
                "buffers (its fp32 rotary tables) to bf16 with the weights (upgrade DeepSpeed)")
    return None


def require_deepspeed(cfg: ExperimentConfig) -> None:
    """Refuse a DeepSpeed run with an installed DeepSpeed that would compute it differently."""
    if not cfg.launch.deepspeed:
        return
    from importlib import metadata

    try:
        version: Optional[str] = metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        version = None
    refusal = deepspeed_version_refusal(version)
    if refusal:
        raise MinimindError(refusal)


# Keys of a DeepSpeed config that the run's own config decides: a user's JSON may leave
# them out or "auto" (filled in), or repeat the run's value; anything else is refused.
def _run_values(cfg: ExperimentConfig) -> dict[str, Any]:
    mp = run_precision(cfg)
    return {"train_micro_batch_size_per_gpu": cfg.train.batch_size,
            "gradient_accumulation_steps": cfg.train.accumulation_steps,
            "gradient_clipping": float(cfg.train.grad_clip),
            "bf16.enabled": mp == "bf16", "fp16.enabled": mp == "fp16",
            # Left unset, DeepSpeed accumulates the micro-batches' gradients in the parameters'
            # dtype: bf16 sums of 8 micro-batches drop what the default path's fp32 grads keep.
            "data_types.grad_accum_dtype": "fp32"}


def bucket_elements(n_params: int) -> int:
    """ZeRO-2 bucket size: the whole model for small ones, DeepSpeed's 5e8 cap for large.

    A bucket allocates its size in elements up front; the 5e8 default costs ~2 GB even for
    a 12M-parameter model, where one bucket of the model's size holds every gradient."""
    return int(min(5e8, max(1_000_000, n_params)))


def deepspeed_config(cfg: ExperimentConfig, n_params: int, user: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The DeepSpeed config of this run, every value concrete.

    `zero2` gets ZeRO stage 2 with buckets sized to the model; a user's JSON keeps its own
    settings, with the run-decided keys filled in (`user_deepspeed_json` validated them)."""
    out: dict[str, Any] = dict(user) if user else {
        "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
                              "reduce_bucket_size": bucket_elements(n_params),
                              "allgather_bucket_size": bucket_elements(n_params)}}
    for key, value in _run_values(cfg).items():
        if "." in key:
            section, sub = key.split(".")
            out[section] = {**(out.get(section) or {}), sub: value}
        else:
            out[key] = value
    out.pop("train_batch_size", None)  # DeepSpeed derives it: micro batch x accumulation x processes
    # the trainer's own AdamW (weight-decay groups, betas) and scheduler, not DeepSpeed's
    out["zero_allow_untested_optimizer"] = True
    out.setdefault("steps_per_print", 10**9)  # our log lines report progress
    out.setdefault("wall_clock_breakdown", False)
    return out


def user_deepspeed_json(cfg: ExperimentConfig, lab_root: Path) -> Optional[dict[str, Any]]:
    """A user's DeepSpeed JSON (launch.deepspeed = a path), checked against the run; None for zero2."""
    spec = cfg.launch.deepspeed
    if not spec or spec == "zero2":
        return None
    path = Path(spec) if Path(spec).is_absolute() else Path(lab_root) / spec
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MinimindError(f"launch.deepspeed: {spec} not found") from None
    except json.JSONDecodeError as exc:
        raise MinimindError(f"launch.deepspeed: {spec} is not valid JSON (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise MinimindError(f"launch.deepspeed: {spec} must hold a JSON object")
    stage = (data.get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        raise MinimindError(f"launch.deepspeed: {spec} asks for ZeRO stage 3, which is refused: the memory EMA and "
                            "the checkpoints need whole weights on every rank (use stage 2, or 'zero2')")
    if stage not in (0, 1, 2, "auto"):
        raise MinimindError(f"launch.deepspeed: {spec}: zero_optimization.stage must be 0, 1 or 2, got {stage!r}")
    for section in ("optimizer", "scheduler"):
        if section in data:
            raise MinimindError(f"launch.deepspeed: {spec} sets '{section}'; the run's train.* settings decide it "
                                "(remove the section)")
    for key, value in _run_values(cfg).items():
        section, _, sub = key.partition(".")
        given = (data.get(section) or {}).get(sub) if sub else data.get(key)
        if given is None or given == "auto":
            continue
        if given != value and not (isinstance(value, float) and isinstance(given, (int, float)) and float(given) == value):
            origin = {"train_micro_batch_size_per_gpu": "train.batch_size",
                      "gradient_accumulation_steps": "train.accumulation_steps",
                      "gradient_clipping": "train.grad_clip",
                      "data_types.grad_accum_dtype": "numerics (gradients accumulate in fp32)"}.get(
                          key, "launch.mixed_precision")
            raise MinimindError(f"launch.deepspeed: {spec} sets {key} = {given!r} but the run's {origin} "
                                f"means {value!r} (set it to \"auto\" or to the run's value)")
    return data


# --- memory bank ------------------------------------------------------------------

def load_bank_into(model, lab: Lab, cfg: ExperimentConfig) -> Optional[str]:
    """Initialise the memory bank from data.knowledge (if the model has one); returns a note."""
    if not model.config.has_memory or not cfg.data.knowledge:
        return None
    import torch

    from corpus.knowledge import load_bank

    knowledge_num, knowledge_length = model.config.knowledge_num, model.config.knowledge_length
    bank, importance = load_bank(lab.resolve(cfg.data.knowledge), lab.resolve(cfg.data.tokenizer),
                                 knowledge_num, knowledge_length, lab.cache_dir, progress=False)
    ids = torch.from_numpy(np.ascontiguousarray(bank).astype(np.int64))
    imp = torch.from_numpy(np.ascontiguousarray(importance)) if importance is not None else None
    model.load_memory_bank(ids, imp)
    return f"memory bank: {knowledge_num} x {knowledge_length} from {cfg.data.knowledge}"


# --- data -------------------------------------------------------------------------

@dataclass
class Corpus:
    cache: Any                  # corpus.prepare.TokenCache
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def bad_lines(self) -> int:
        return int(getattr(self.cache, "meta", {}).get("bad_line_count", 0))

    def docs(self, indices) -> list[np.ndarray]:
        return [self.cache.doc(int(i)) for i in indices]


def split_seed(cfg: ExperimentConfig) -> int:
    """The seed of the train/validation split: data.split_seed, or train.seed for configs
    written before split_seed existed (their runs keep the documents they trained on)."""
    return cfg.train.seed if cfg.data.split_seed is None else cfg.data.split_seed


def load_corpus(lab: Lab, cfg: ExperimentConfig) -> Corpus:
    from corpus.prepare import prepare_pretrain

    cache = prepare_pretrain(lab.resolve(cfg.data.pretrain), lab.resolve(cfg.data.tokenizer), lab.cache_dir,
                             max_bad_share=cfg.data.max_bad_share, progress=False)
    if cache.num_docs < 2:
        raise MinimindError(f"{cfg.data.pretrain}: needs at least 2 documents, has {cache.num_docs}")
    train_idx, val_idx = split_documents(cache.num_docs, cfg.data.val_fraction, split_seed(cfg))
    return Corpus(cache, train_idx, val_idx)


def load_data(lab: Lab, cfg: ExperimentConfig) -> Corpus:
    """What the run trains on: the pretraining corpus, or for stage sft the conversation cache."""
    if cfg.stage == "sft":
        from training.sft import load_sft_corpus

        return load_sft_corpus(lab, cfg)
    return load_corpus(lab, cfg)


def prepare_caches(lab: Lab, cfg: ExperimentConfig) -> None:
    """Build the token cache and the knowledge cache once, in the launching process, so that
    ranks only read them (a first build inside main_process_first could outlast the
    collective timeout of the waiting ranks). Only the standard library and numpy."""
    load_data(lab, cfg)
    knowledge_num, knowledge_length = cfg.model.get("knowledge_num"), cfg.model.get("knowledge_length")
    if cfg.data.knowledge and knowledge_num and knowledge_length and lab.resolve(cfg.data.knowledge).exists():
        from corpus.knowledge import prepare_knowledge

        prepare_knowledge(lab.resolve(cfg.data.knowledge), lab.resolve(cfg.data.tokenizer), knowledge_num,
                          knowledge_length, lab.cache_dir, False)


def load_probes(lab: Lab, cfg: ExperimentConfig) -> Optional[dict[str, list[dict]]]:
    if not cfg.data.probes:
        return None
    path = lab.resolve(cfg.data.probes)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise MinimindError(f"{path}: not valid JSON (line {exc.lineno})") from None
    splits = data.get("splits") if isinstance(data, dict) else None
    if not isinstance(splits, dict):
        raise MinimindError(f"{path}: expected {{\"splits\": {{...}}}}")
    return splits
