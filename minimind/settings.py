"""Lab settings (`minimind.yaml`) and the per-experiment config sections they default.

Each concern is one kw_only dataclass validated at construction; unknown keys are
refused with the dotted key named. `runs/V/config.yaml` (see `minimind.config`) uses
the same section classes, fully resolved, so one place holds each setting's meaning,
default and range.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

from minimind.errors import MinimindError
from minimind.schema import SchemaError, build, field, to_dict


@dataclass(kw_only=True)
class TrainConfig:
    epochs: int = field(1, help="passes over the training documents", min=1, max=1000)
    batch_size: int = field(32, help="sequences per micro-batch per process", min=1, max=4096)
    accumulation_steps: int = field(1, help="micro-batches per optimizer step", min=1, max=1024)
    learning_rate: float = field(5e-4, help="peak AdamW learning rate", min=1e-7, max=1.0)
    min_lr_ratio: float = field(0.1, help="cosine floor as a fraction of the peak learning rate", min=0.0, max=1.0)
    warmup_steps: int = field(20, help="linear warm-up optimizer steps", min=0, max=1_000_000)
    weight_decay: float = field(0.1, help="AdamW weight decay (betas 0.9/0.95)", min=0.0, max=1.0)
    grad_clip: float = field(1.0, help="gradient norm clip (0 = off)", min=0.0, max=100.0)
    max_steps: int = field(0, help="cap on optimizer steps (0 = none)", min=0, max=100_000_000)
    log_interval: int = field(10, help="optimizer steps between metric lines", min=1, max=100_000)
    eval_interval: int = field(200, help="optimizer steps between periodic evaluations (0 = only at the end)", min=0, max=10_000_000)
    save_interval: int = field(200, help="optimizer steps between checkpoints", min=1, max=10_000_000)
    seed: int = field(42, help="random seed for data order and initialisation", min=0, max=2**31 - 1)


SPLIT_SEED = 1234  # data.split_seed of new experiments unless the lab sets one


@dataclass(kw_only=True)
class DataConfig:
    pretrain: str = field("data/pretrain.jsonl", help="pretraining JSONL ({\"text\": ...}), relative to the lab")
    knowledge: Optional[str] = field("data/knowledge.json", help="T-REx knowledge file that initialises the memory bank (null = random bank)")
    tokenizer: str = field("data/tokenizer.json", help="tokenizer.json (ByteLevel BPE, <unk>=0 <s>=1 </s>=2)")
    probes: Optional[str] = field("data/probes.json", help="factual-recall probes (null = skip recall)")
    val_fraction: float = field(0.05, help="share of documents held out for validation", min=0.001, max=0.5)
    max_bad_share: float = field(0.01, help="largest share of malformed lines tolerated in a data file", min=0.0, max=1.0)
    # None = train.seed, the behaviour of configs written before this key: their runs keep
    # their split. New experiments get SPLIT_SEED (minimind new), so two runs that differ
    # only in train.seed are evaluated on the same documents and compare pairwise.
    split_seed: Optional[int] = field(None, help="seed of the train/validation document split (null = train.seed)",
                                      min=0, max=2**31 - 1)
    # The SFT stage (config `stage: sft`) trains on `sft`; every run is scored on `sft_eval` when it exists.
    sft: str = field("data/sft.jsonl", help="SFT conversations (MiniMind's {\"conversations\": [...]} JSONL) for stage sft")
    sft_eval: Optional[str] = field("data/sft_eval.jsonl", help="held-out conversations for sft_loss (null = skip)")
    sft_split: Optional[str] = field("data/sft_split.json", help="which probes SFT taught (taught/eval_only groups of chat_qa)")
    chat_template: Optional[str] = field(None, help="tokenizer_config.json whose chat_template renders conversations "
                                                    "(null = MiniMind2's)")


@dataclass(kw_only=True)
class EvalConfig:
    num_samples: int = field(20, help="held-out documents used for inference loss and continuations", min=1, max=100_000)
    prompt_tokens: int = field(30, help="prompt length for continuations and inference loss", min=1, max=4096)
    max_new_tokens: int = field(48, help="tokens generated per continuation", min=1, max=4096)
    temperature: float = field(0.8, help="temperature of the sampled continuations", min=0.0, max=5.0)
    top_p: float = field(0.9, help="nucleus of the sampled continuations", min=0.01, max=1.0)
    max_val_batches: int = field(50, help="validation batches for the teacher-forced loss", min=1, max=1_000_000)
    confidence: float = field(0.95, help="level of the bootstrap intervals that tell a change from noise", min=0.5, max=0.999)
    min_effect: float = field(0.01, help="relative change below which a difference is run-to-run (seed) noise, "
                                         "whatever its interval", min=0.0, max=0.5)
    # None = train.seed, as before this key. A replicate (runs/V/seeds/<seed>) keeps its
    # experiment's, so every replicate is scored on the same probes and samples and they pair.
    draw_seed: Optional[int] = field(None, help="seed of the evaluation's own draws: chat probes, sampled continuations, the "
                                           "retrieval control (null = train.seed)", min=0, max=2**31 - 1)
    chat_probes: int = field(40, help="probes per split asked in chat format for chat_qa (0 = skip chat QA)", min=0, max=100_000)
    chat_max_new_tokens: int = field(24, help="tokens a chat reply may have before it counts as not stopping", min=1, max=4096)


Action = Literal["stop", "flag", "none"]


@dataclass(kw_only=True)
class GuardrailRule:
    safe: float = field(help="safe side of this value (beyond it: safe)")
    danger: float = field(help="danger threshold (beyond it: danger)")
    action: Action = field("flag", help="what a danger does: stop the run, flag it, or nothing", choices=["stop", "flag", "none"])

    def __post_init__(self) -> None:
        if self.safe == self.danger:
            raise ValueError("safe and danger thresholds must differ")


def _rule(safe: float, danger: float, action: str):
    return field(default_factory=lambda: GuardrailRule(safe=safe, danger=danger, action=action),
                 help="guardrail thresholds and action")


@dataclass(kw_only=True)
class GuardrailsConfig:
    """PRODUCT.md section 6. Direction follows the thresholds: safe > danger means low is bad."""

    train_loss: GuardrailRule = _rule(0.5, 0.1, "stop")
    train_inference_ratio: GuardrailRule = _rule(5.0, 10.0, "flag")
    repetition_rate: GuardrailRule = _rule(0.5, 0.8, "flag")
    memory_entropy: GuardrailRule = _rule(3.0, 2.0, "flag")
    smoothing_window: int = field(50, help="logged steps averaged for the train-loss guardrail", min=1, max=100_000)


@dataclass(kw_only=True)
class LaunchConfig:
    num_processes: int = field(1, help="accelerate processes in total, over all machines (GPUs, or CPU processes with gloo)", min=1, max=1024)
    num_machines: int = field(1, help="machines for accelerate; the one running 'minimind new' is machine 0", min=1, max=1024)
    main_process_ip: Optional[str] = field(None, help="address of machine 0 that the other machines reach (needed with num_machines > 1)")
    main_process_port: int = field(0, help="rendezvous port on machine 0 (0 = accelerate's default, 29500)", min=0, max=65535)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = field(
        "auto", help="accelerate mixed precision; auto = bf16 on a CUDA GPU that supports it, else no (fp32)",
        choices=["auto", "no", "fp16", "bf16"])
    deepspeed: Optional[str] = field(None, help="DeepSpeed: null, 'zero2' (config generated from the run) or a JSON config path (ZeRO stage <= 2)")
    cpu: bool = field(False, help="force CPU training even when a GPU is present")
    compile: bool = field(False, help="torch.compile the model for training (batches padded to multiples of "
                                      "64 tokens so shapes rarely recompile)")
    compile_backend: str = field("inductor", help="torch.compile backend (inductor; aot_eager or eager to debug)")
    memory_budget_gb: float = field(0.0, help="device memory a process may plan for, in GiB (0 = the GPU's own; "
                                              "a CPU run is not planned): a micro-batch that does not fit is split "
                                              "into more accumulation steps, same effective batch", min=0.0, max=1e6)
    threads: int = field(0, help="torch CPU threads per process (0 = as the machine gives)", min=0, max=1024)
    deterministic: bool = field(False, help="torch deterministic algorithms where torch has them: on CUDA, sorted "
                                            "kernels instead of float atomics (index_add_, scatter_add_) and a fixed "
                                            "cuBLAS workspace, so a GPU run repeats bitwise; slower on a GPU, free on CPU "
                                            "(CPU runs repeat anyway). state.json records it")
    backend: Literal["local", "slurm"] = field("local", help="where runs execute: this machine, or Slurm jobs (see slurm:)",
                                                choices=["local", "slurm"])
    gpus: Union[Literal["all"], list[int]] = field(
        "all", help="GPU slots the lab's local runs share: a list of GPU indices, or 'all' (every GPU found; "
                    "none on a CPU machine = no slots). Each run takes num_processes of them or waits, queued")
    slot_dir: Optional[str] = field(None, help="folder of the slot lock files (null = runs/.slots in the lab); "
                                               "labs sharing one machine's GPUs point this at one shared folder")

    def __post_init__(self) -> None:
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError("main_process_ip is needed with num_machines > 1 (the address of machine 0)")
        if self.num_processes < self.num_machines or self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) is the total over all machines: "
                             f"a multiple of num_machines ({self.num_machines})")
        if self.deepspeed is not None and not self.deepspeed.strip():
            raise ValueError("deepspeed must be null, 'zero2' or a JSON path")
        if isinstance(self.gpus, list):
            if not self.gpus:
                raise ValueError("gpus: an empty list leaves no slot to run in (use 'all' or list GPU indices)")
            if any(g < 0 for g in self.gpus) or len(set(self.gpus)) != len(self.gpus):
                raise ValueError(f"gpus: indices must be distinct and >= 0, got {self.gpus}")


# A value written into an `#SBATCH` line cannot be quoted; these stay within what Slurm
# itself accepts for partitions, accounts, memory and times.
_SBATCH_WORD = re.compile(r"^[A-Za-z0-9_.:@+,=/-]+$")
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


@dataclass(kw_only=True)
class SlurmConfig:
    """The Slurm job of an experiment when `launch.backend: slurm` (rendered into runs/V/run.sbatch)."""

    partition: Optional[str] = field(None, help="--partition (null = the cluster's default)")
    account: Optional[str] = field(None, help="--account to charge (null = your default)")
    time_limit: str = field("1:00:00", help="--time: minutes, HH:MM:SS or D-HH:MM:SS")
    nodes: int = field(1, help="--nodes; equals launch.num_machines", min=1, max=1024)
    gpus_per_node: int = field(0, help="--gpus-per-node (0 = ask for none)", min=0, max=64)
    cpus_per_task: int = field(0, help="--cpus-per-task for each node's launcher (0 = Slurm's default)", min=0, max=4096)
    memory: Optional[str] = field(None, help="--mem per node, e.g. 64G (null = Slurm's default)")
    extra: list[str] = field(default_factory=list, help="more #SBATCH options, one per item, e.g. --qos=high")
    setup: list[str] = field(default_factory=list, help="shell lines run before the pipeline, e.g. module load cuda")
    signal_lead_s: int = field(120, help="seconds before the time limit at which the run checkpoints and stops "
                                         "(SIGUSR1; 0 = none: Slurm's SIGTERM at the limit still checkpoints)",
                               min=0, max=86400)
    requeue: bool = field(False, help="after a stop near the time limit, submit a job that continues from the checkpoint")

    def __post_init__(self) -> None:
        for name in ("partition", "account", "memory"):
            value = getattr(self, name)
            if value is not None and not _SBATCH_WORD.match(value):
                raise ValueError(f"{name}: {value!r} has characters an #SBATCH line cannot carry")
        if not _SLURM_TIME.match(self.time_limit):
            raise ValueError(f"time_limit: {self.time_limit!r} is not minutes, HH:MM:SS or D-HH:MM:SS")
        for i, line in enumerate(self.extra):
            if not line.startswith("--") or any(c in line for c in "\n\r") or " " in line.strip():
                raise ValueError(f"extra[{i}]: {line!r} must be one option like --qos=high")
        for i, line in enumerate(self.setup):
            if any(c in line for c in "\n\r"):
                raise ValueError(f"setup[{i}]: one shell line per item")


@dataclass(kw_only=True)
class SwanlabConfig:
    mode: Literal["local", "offline", "cloud", "disabled"] = field(
        "disabled", help="SwanLab mode, always passed explicitly", choices=["local", "offline", "cloud", "disabled"])
    project: str = field("minimind", help="SwanLab project name")


@dataclass(kw_only=True)
class AgentSettings:
    # The names are agent/backends.py's registry, which this foundation cannot import: the lifecycle
    # checks the value against it (agent.backends.check_name) before any agent is asked anything.
    backend: str = field("auto", help="who writes the reasoning: auto (the best backend that can run here) or a "
                         "backend by name (`minimind new --help` lists them)")
    model: str = field("claude-sonnet-4-6", help="Anthropic model name")
    max_usd: float = field(2.0, help="spending cap per experiment, US dollars", min=0.0, max=1000.0)
    max_tokens: int = field(4096, help="max output tokens per call", min=256, max=64000)
    timeout_s: float = field(120.0, help="seconds per API call", min=1.0, max=3600.0)
    max_retries: int = field(3, help="retries on timeouts, 429, 5xx", min=0, max=10)
    lang: Literal["en", "zh"] = field("en", help="language of records and commit messages", choices=["en", "zh"])


@dataclass(kw_only=True)
class PreflightConfig:
    compute_factor: float = field(4.0, help="a plan whose training FLOPs exceed the base's by more than this factor "
                                  "needs --yes (or --no-launch)", min=1.0, max=1e6)


@dataclass(kw_only=True)
class ReplicatesConfig:
    seeds: int = field(1, help="replicates of each new experiment, differing only in train.seed (minimind new --seeds "
                               "overrides; 2 or more measure run-to-run noise)", min=1, max=64)


@dataclass(kw_only=True)
class LabSettings:
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "memory"},
                                  help="model fields for the first experiment (those of models/model.py ModelConfig)")
    train: TrainConfig = field(default_factory=TrainConfig, help="training defaults")
    data: DataConfig = field(default_factory=DataConfig, help="data paths")
    eval: EvalConfig = field(default_factory=EvalConfig, help="evaluation")
    guardrails: GuardrailsConfig = field(default_factory=GuardrailsConfig, help="guardrail thresholds")
    launch: LaunchConfig = field(default_factory=LaunchConfig, help="how runs are launched")
    slurm: SlurmConfig = field(default_factory=SlurmConfig, help="the Slurm job, when launch.backend is slurm")
    swanlab: SwanlabConfig = field(default_factory=SwanlabConfig, help="SwanLab mirror")
    agent: AgentSettings = field(default_factory=AgentSettings, help="the planning agent")
    preflight: PreflightConfig = field(default_factory=PreflightConfig, help="checks and the compute gate before a launch")
    replicates: ReplicatesConfig = field(default_factory=ReplicatesConfig, help="replicates of an experiment (seeds)")


SETTINGS_FILE = "minimind.yaml"


def load_settings(path: Path) -> LabSettings:
    """Read and validate `minimind.yaml`; env `MINIMIND_AGENT_*` overrides agent settings."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise MinimindError(f"{path.name}:{line} is not valid YAML") from None
    except OSError as exc:
        raise MinimindError(f"cannot read {path}: {exc.strerror}") from None
    for key, env in (("model", "MINIMIND_AGENT_MODEL"), ("max_usd", "MINIMIND_AGENT_MAX_USD"),
                     ("backend", "MINIMIND_AGENT_BACKEND")):
        if os.environ.get(env):
            value: Any = os.environ[env]
            if key == "max_usd":
                value = float(value)
            raw.setdefault("agent", {})
            if isinstance(raw["agent"], dict):
                raw["agent"][key] = value
    try:
        return build(LabSettings, raw)
    except SchemaError as exc:
        raise MinimindError(f"{path.name}: {exc}") from None


def dump_settings(settings: LabSettings) -> str:
    import yaml

    return yaml.safe_dump(to_dict(settings), sort_keys=False, allow_unicode=True)
