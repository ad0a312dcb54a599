"""The training loop: one Trainer per process, rank 0 the only writer of files.

Order within an optimizer step (it matters for exact resume): micro-batches and backward
inside accelerate's `accumulate()` (it decides the boundary, so one loop step is one
optimizer update under DDP and DeepSpeed alike), clip, optimizer and scheduler step,
`after_optimizer_step` (memory EMA, from every rank's summed selections), then on log
steps a metrics row and the train guardrails, then a periodic eval, then checkpoints,
then the stop decision (signal, stop file or guardrail) agreed by all processes.

Numbers stay on the device between log steps: a micro-batch adds to device tensors and
nothing is read back to the host until a metrics row is written.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from minimind import guardrails as rules
from minimind.config import load_config
from minimind.errors import MinimindError
from minimind.lab import Lab
from minimind.rundir import (CHECKPOINTS_DIR, CONFIG_FILE, EXIT_FINISHED, EXIT_GUARDRAIL, EXIT_STOPPED,
                             LAST_CHECKPOINT, METRICS_FILE, STOP_FILE, best_checkpoint, read_metrics, update_state)
from models import registry
from training import checkpoint as ckpt
from training import runlog
from training.ddp import ignore_integer_buffers, reduce_memory_window, reduce_pending, sync_bank_rows
from training.data import Stream, collate, input_tokens, split_digest, total_steps
from training.measures import PERIODIC_KEYS, masked_ce, periodic_eval
from training.metrics import MetricsWriter, truncate_after
from training.runtime import (enable_tf32, load_bank_into, load_data, make_accelerator, plan_memory, planned_config,
                              prepare_for_training, run_device, set_deterministic)
from training.schedule import make_optimizer, make_scheduler
from training.signals import Heartbeat, StopFlag
from training.swan import SwanMirror


@dataclass
class Progress:
    """What the heartbeat and state.json report; updated by the loop, read by the thread."""

    phase: str = "setup"
    step: int = 0
    total_steps: int = 0
    last_loss: Optional[float] = None
    eta_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    guardrails: dict[str, Any] = field(default_factory=dict)

    def as_state(self) -> dict[str, Any]:
        if self.phase == "setup":  # nothing measured yet: do not overwrite a resumed run's numbers
            return {"phase": self.phase}
        return {"phase": self.phase, "step": self.step, "total_steps": self.total_steps,
                "last_loss": self.last_loss, "eta_s": self.eta_s, "tokens_per_s": self.tokens_per_s,
                "guardrails": self.guardrails}


# Sequence lengths a compiled model is padded to multiples of: at most max_seq_len / 64
# shapes (8 at 512), each compiled once.
COMPILE_PAD_MULTIPLE = 64


def compiled(model, backend: str, deepspeed: bool = False):
    """The training forward of the (prepared) model under launch.compile; the module's state
    dict and the evaluations stay eager. Shapes are static per length bucket; the recompile
    cache is raised above the bucket count so none falls back to eager.

    Under DeepSpeed the module inside the engine is compiled (`engine.compile`) and the
    engine stays the forward: compiling the engine object itself would trace its hooks
    and break the graph there."""
    import torch._dynamo

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if deepspeed:
        model.compile(backend=backend, compile_kwargs={"dynamic": False})
        return model
    return torch.compile(model, backend=backend, dynamic=False)


def micro_batch_forward(forward, inputs, full_rows: int, compiling: bool):
    """The training forward of one micro-batch. Under compile, a micro-batch with fewer rows
    than the configured micro-batch (the last of an epoch) runs eagerly instead of compiling
    a graph of its own per length bucket. It is not padded to full size: the memory layer
    records every row it reads (statistics, EMA store), so empty rows would count."""
    if compiling and inputs.shape[0] < full_rows:
        with torch.compiler.set_stance("force_eager"):
            return forward(inputs)
    return forward(inputs)


def _aux(out) -> torch.Tensor | float:
    aux = getattr(out, "aux_loss", None)
    return 0.0 if aux is None else aux


def _finite_or_none(x: Optional[float]) -> Optional[float]:
    return x if x is not None and math.isfinite(x) else None


class Trainer:
    def __init__(self, run_dir: Path, resume: bool = False):
        self.run_dir = Path(run_dir).resolve()
        self.lab = Lab.of_run(self.run_dir)
        self.cfg = load_config(self.run_dir / CONFIG_FILE)
        self.configured = self.cfg   # as config.yaml says; self.cfg becomes the memory plan's
        self.resume = resume
        self.ckpt_dir = self.run_dir / CHECKPOINTS_DIR
        self.stop_flag = StopFlag()
        self.progress = Progress()
        self.history: list[dict[str, Any]] = []   # train rows so far (rank 0): guardrail input
        self.guard_results: dict[str, Any] = {}
        self.best: Optional[dict[str, Any]] = None
        self.evaluated_once = False
        self.elapsed_before = 0.0                  # training seconds before a resume

    # --- setup -----------------------------------------------------------------------

    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.stop_flag.install()
        if self.cfg.launch.threads:
            torch.set_num_threads(self.cfg.launch.threads)
        random.seed(t.seed), np.random.seed(t.seed), torch.manual_seed(t.seed)
        self.deterministic_note = set_deterministic(cfg.launch.deterministic)
        self.model = registry.build_model(self.lab.models_dir, cfg.model_module, cfg.model)
        # A micro-batch too big for the device is split before anything depends on it
        # (accelerator, data stream, schedule); the effective batch stays as configured.
        self.memory_plan = plan_memory(cfg, self.model, run_device(cfg))
        self.cfg = cfg = planned_config(cfg, self.memory_plan)
        t = cfg.train
        self.acc = make_accelerator(cfg, self.run_dir, sum(p.numel() for p in self.model.parameters()))
        self.main = self.acc.is_main_process
        self.precision = self.acc.mixed_precision
        enable_tf32(self.acc.device)
        self.deepspeed = self.acc.distributed_type.name == "DEEPSPEED"
        # The launcher builds the token cache before it starts the processes (prepare_caches);
        # main_process_first is then only a guard for trainers started by hand.
        with self.acc.main_process_first():
            self.corpus = load_data(self.lab, cfg)
        self.max_seq_len = self.model.config.max_seq_len
        restored = self._load_resume_checkpoint() if self.resume else None
        self.bank_note = None
        if restored is None and cfg.stage == "sft":  # weights, bank and freeze mask from the pretrain base
            from training.sft import init_from_base

            self.bank_note = init_from_base(self.model, self.lab, cfg)
        elif restored is None:
            with self.acc.main_process_first():
                self.bank_note = load_bank_into(self.model, self.lab, cfg)
        self.stream = Stream(self.corpus.train_idx, t.batch_size, t.seed, self.acc.process_index,
                             self.acc.num_processes)
        self.total = total_steps(self.stream.batches_per_epoch, t.epochs, t.accumulation_steps, t.max_steps)
        self.optimizer = make_optimizer(self.model, t.learning_rate, t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, self.total, t.warmup_steps, t.min_lr_ratio)
        self.step = 0
        if restored is not None:
            self._restore(restored)
        if self.acc.num_processes > 1:
            ignore_integer_buffers(self.model)
        self.model, self.optimizer = prepare_for_training(self.acc, self.model, self.optimizer)
        self.unwrapped = self.acc.unwrap_model(self.model)
        self.forward, self.pad_multiple = self.model, 0
        if cfg.launch.compile:
            self.forward = compiled(self.model, cfg.launch.compile_backend, self.deepspeed)
            self.pad_multiple = COMPILE_PAD_MULTIPLE
        if restored is not None:
            self._restore_prepared(restored)
        self.progress.step, self.progress.total_steps = self.step, self.total

    def _load_resume_checkpoint(self) -> Optional[dict[str, Any]]:
        path = self.ckpt_dir / LAST_CHECKPOINT
        if not path.exists():
            return None  # killed before the first save: start again from step 0
        data = registry.read_checkpoint(path)
        if data.get("module") != self.cfg.model_module:
            raise MinimindError(f"{path} was written by module {data.get('module')}, "
                                f"{CONFIG_FILE} says {self.cfg.model_module}")
        return data

    def _restore(self, data: dict[str, Any]) -> None:
        digest = split_digest(self.corpus.train_idx, self.corpus.val_idx)
        if data.get("split") and data["split"] != digest:
            raise MinimindError("the training data changed since the checkpoint was written; "
                                "resume needs the same data (or start a new experiment)")
        written_by, now = ckpt.processes_of(data), self.acc.num_processes
        if written_by != now:
            raise MinimindError(f"{LAST_CHECKPOINT} was written by {written_by} process(es) and this resume has {now}: "
                                f"resume with launch.num_processes = {written_by} (the optimizer shards, random "
                                "states and data order are per process)")
        if bool(data.get("deepspeed")) != self.deepspeed:
            raise MinimindError(f"{LAST_CHECKPOINT} was written {'with' if data.get('deepspeed') else 'without'} "
                                "DeepSpeed; resume needs the same launch.deepspeed")
        registry.load_weights(self.model, registry.weights(data), self.ckpt_dir / LAST_CHECKPOINT, self.cfg.model_module)
        if not self.deepspeed:
            self.optimizer.load_state_dict(data["optimizer"])
        self.scheduler.load_state_dict(data["scheduler"])
        self.step = int(data["step"])
        self.best = data.get("best")
        self.evaluated_once = bool(self.best and self.best.get("metric") == "val_loss")
        self.elapsed_before = float(data.get("elapsed_s", 0.0))

    def _restore_prepared(self, data: dict[str, Any]) -> None:
        """After prepare: the engine's own state, then this rank's RNG and pending EMA sums
        (on the model's device). Rank 0's are in last.pth, the others' in their rank files."""
        tag = data.get("tag")
        if self.deepspeed:
            # the fp32 masters and this rank's ZeRO shard; the scheduler is ours (in last.pth)
            loaded, _ = self.model.load_checkpoint(str(self.ckpt_dir / ckpt.DEEPSPEED_DIR), tag=tag,
                                                   load_optimizer_states=True, load_lr_scheduler_states=False)
            if loaded is None:
                raise MinimindError(f"{CHECKPOINTS_DIR}/{ckpt.DEEPSPEED_DIR}/{tag} is missing or incomplete; "
                                    "the DeepSpeed run cannot resume exactly")
        own = data
        rank = self.acc.process_index
        if rank > 0:
            path = ckpt.rank_file(self.ckpt_dir, rank, tag)
            own = registry.read_checkpoint(path)
        ckpt.set_rng_state(own["rng"])
        ckpt.set_memory_pending(self.unwrapped, own.get("memory_pending"), self.acc.device)

    def start_outputs(self) -> None:
        """Rank 0: metrics file (cut back on resume), header, SwanLab, heartbeat, state."""
        metrics_path = self.run_dir / METRICS_FILE
        if self.resume:
            truncate_after(metrics_path, self.step)
        else:
            metrics_path.unlink(missing_ok=True)
        rows = read_metrics(metrics_path)
        self.history = [r for r in rows if "loss_ce" in r]
        self.guard_results = rules.check_train(self.history, self.cfg.guardrails) if self.history else {}
        evals = [r for r in rows if "eval/val_loss" in r]
        if evals:  # a resumed run knows its eval guardrails' levels too: no "was unset" again
            last = evals[-1]
            self.guard_results.update(self._eval_guardrails(last))
        self.metrics = MetricsWriter(metrics_path)
        module_path = self.lab.models_dir / f"{self.cfg.model_module}.py"
        runlog.header(self.lab.root, module_path, (self.run_dir / CONFIG_FILE).read_text(encoding="utf-8"),
                      str(self.acc.device), self.acc.num_processes, self.step if self.resume else None)
        runlog.say(f"data: {len(self.corpus.train_idx)} train / {len(self.corpus.val_idx)} validation documents, "
                   f"{self.stream.batches_per_epoch} batches per epoch per process, {self.total} optimizer steps"
                   + (f"; {self.corpus.bad_lines} malformed lines skipped" if self.corpus.bad_lines else ""))
        if self.bank_note:
            runlog.say(self.bank_note)
        runlog.say(self.memory_plan.note())
        if self.deterministic_note:
            runlog.say(self.deterministic_note)
        self.swan = SwanMirror(self.cfg.swanlab.mode, self.cfg.swanlab.project, self.run_dir,
                               self.cfg.version, self.configured.to_dict(), runlog.warn)
        self.progress.phase = "train"
        update_state(self.run_dir, state="running", stop_reason=None, trainer_pid=os.getpid(),
                     heartbeat=time.time(), resources=self.resources(),
                     memory_plan=self.memory_plan.as_dict(), deterministic=self.cfg.launch.deterministic,
                     **self.progress.as_state())

    def resources(self) -> str:
        """What the run computes on, in words (state.json `resources`, shown by the record)."""
        t = self.cfg.train
        return (f"{self.acc.num_processes} process(es) on {self.acc.device.type}, mixed precision {self.precision}, "
                f"micro-batch {t.batch_size} x accumulation {t.accumulation_steps}"
                + (" (split by the memory plan)" if self.memory_plan.split else "")
                + (", DeepSpeed" if self.deepspeed else ""))

    # --- one optimizer step ------------------------------------------------------------

    def train_step(self) -> dict[str, Any]:
        t = self.cfg.train
        zero = torch.zeros((), device=self.acc.device)
        ce_sum, aux_sum, tokens, grad_norm = zero, zero, zero.long(), None
        for k in range(t.accumulation_steps):
            micro = self.step * t.accumulation_steps + k
            self.epoch_pos = (micro + 1) / self.stream.batches_per_epoch  # epochs done after this batch
            _, doc_idx = self.stream.batch(micro)
            docs = self.corpus.docs(doc_idx)
            inputs, targets, mask = collate(docs, self.max_seq_len, self.pad_multiple)
            inputs, targets, mask = (x.to(self.acc.device, non_blocking=True) for x in (inputs, targets, mask))
            tokens = tokens + input_tokens(docs, self.max_seq_len)  # counted on the host: no device sync
            with self.acc.accumulate(self.model):
                out = micro_batch_forward(self.forward, inputs, t.batch_size, bool(self.pad_multiple))
                ce = masked_ce(out.logits, targets, mask)
                aux = _aux(out)
                del out  # the loss keeps what backward needs; the logits need not outlive it
                self.acc.backward(ce + aux)  # accelerate divides by the accumulation (DeepSpeed by itself)
                if self.acc.sync_gradients:
                    if t.grad_clip > 0 and not self.deepspeed:  # DeepSpeed clips in its step (gradient_clipping)
                        grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
            ce_sum = ce_sum + ce.detach().float()
            aux_sum = aux_sum + (aux.detach().float() if torch.is_tensor(aux) else aux)
        if not self.acc.sync_gradients:
            raise MinimindError(f"internal: {t.accumulation_steps} micro-batches did not end at an accumulation "
                                "boundary; the optimizer would not have stepped once")
        self.scheduler.step()
        self.step += 1
        hook = getattr(self.unwrapped, "after_optimizer_step", None)
        if hook:
            rows = None
            freq = getattr(getattr(self.unwrapped, "config", None), "ema_update_freq", None)
            if self.acc.num_processes > 1 and freq and self.step % freq == 0:
                rows = reduce_pending(self.unwrapped)  # the EMA moves by the whole batch's selections
            hook(self.step)
            sync_bank_rows(self.unwrapped, rows)
        n = t.accumulation_steps
        return {"ce": ce_sum / n, "aux": aux_sum / n, "tokens": tokens, "grad_norm": grad_norm}

    # --- logging, eval, checkpoints (collectives on all ranks, files on rank 0) --------

    def log_step(self, stats: dict[str, float]) -> Optional[str]:
        """Write the metrics row and check train guardrails; returns a stop reason."""
        window = torch.stack([stats["ce"], stats["aux"],
                              torch.as_tensor(self.tokens_since_log, device=self.acc.device).float()])
        if self.acc.num_processes > 1:
            window = self.acc.reduce(window, "sum")
            window[:2] /= self.acc.num_processes
        memory = {}
        if hasattr(self.unwrapped, "memory_stats"):
            reduce_memory_window(self.unwrapped)  # global usage, entropy and token counts
            memory = self.unwrapped.memory_stats(reset=True)
        grad_norm = stats["grad_norm"]
        if self.deepspeed and self.cfg.train.grad_clip > 0:
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)  # the engine's norm
        if not self.main:
            return None
        now = time.time()
        ce, aux, tokens = (float(x) for x in window.tolist())
        tok_s = tokens / max(1e-9, now - self.last_log_time)
        done = self.step - self.start_step
        eta = (now - self.start_time) / done * (self.total - self.step) if done else None
        row: dict[str, Any] = {
            "step": self.step, "epoch": round(self.epoch_pos, 4), "loss": ce + aux, "loss_ce": ce, "loss_aux": aux,
            "lr": self.scheduler.get_last_lr()[0], "grad_norm": None if grad_norm is None else float(grad_norm),
            "tokens_per_s": tok_s,
            "time": now, "elapsed_s": now - self.start_time + self.elapsed_before,
        }
        row.update({f"memory/{k}": float(v) for k, v in (memory or {}).items()})
        if self.deepspeed:  # the engine's own count of optimizer updates: one per loop step
            row["deepspeed/global_steps"] = int(self.model.global_steps)
        self.history.append(row)
        results = rules.check_train(self.history, self.cfg.guardrails)
        reason = self._note_guardrails(results, row)
        self.metrics.write(row)
        self.swan.log(row, self.step)
        runlog.say(runlog.progress_line(self.step, self.total, row, eta))
        self.progress.step, self.progress.last_loss = self.step, _finite_or_none(ce + aux)
        self.progress.eta_s, self.progress.tokens_per_s = eta, tok_s
        self.heartbeat.beat()
        self.last_log_time = now
        return reason

    def _note_guardrails(self, results: dict[str, Any], row: dict[str, Any]) -> Optional[str]:
        changes = rules.level_changes(self.guard_results, results)
        self.guard_results = {**self.guard_results, **results}
        self.progress.guardrails = rules.levels_only(self.guard_results)
        if changes:
            row["guardrail_changes"] = changes
            for name, change in changes.items():
                runlog.say(f"guardrail {rules.describe(name, results[name])} (was {change['from'] or 'unset'})")
        return rules.should_stop(results)

    def eval_step(self, masters: Optional[dict[str, Any]] = None) -> Optional[str]:
        """Rank 0: periodic eval row, eval guardrails, best checkpoint; returns a stop reason.
        `masters`: the weights a best checkpoint keeps under DeepSpeed (`_masters`)."""
        self.evaluated_once = True
        train_loss = rules.smoothed_train_loss([r["loss_ce"] for r in self.history], self.cfg.guardrails.smoothing_window)
        vals = periodic_eval(self.unwrapped, self.corpus.docs(self.corpus.val_idx), self.configured, train_loss)
        row = {"step": self.step, "time": time.time(), **vals}
        results = self._eval_guardrails(vals)
        reason = self._note_guardrails(results, row)
        self.metrics.write(row)
        self.swan.log(row, self.step)
        runlog.say("eval step {}: val_loss {} inference_loss {} ratio {} repetition {}".format(
            self.step, *(f"{v:.4f}" if isinstance(v, float) else "n/a" for v in
                         (vals["eval/val_loss"], vals["eval/inference_loss"], vals["eval/train_inference_ratio"],
                          vals["eval/repetition_rate"]))))
        if vals["eval/val_loss"] is not None:
            self._maybe_best("val_loss", vals["eval/val_loss"], masters)
        return reason

    def _eval_guardrails(self, row: dict[str, Any]) -> dict[str, Any]:
        """The eval guardrails of a periodic eval row, its keys read back as eval.json's."""
        return rules.check_eval({name: row.get(key) for key, name in PERIODIC_KEYS.items()}, self.cfg.guardrails)

    def _maybe_best(self, metric: str, value: Optional[float], masters: Optional[dict[str, Any]] = None) -> None:
        if value is None or not math.isfinite(value):
            return
        if self.best and self.best["metric"] == metric and self.best["value"] <= value:
            return
        self.best = {"metric": metric, "value": value, "step": self.step}
        name = best_checkpoint(self.unwrapped.config.dim, self.cfg.stage)
        registry.save_checkpoint(self.ckpt_dir / name, ckpt.best_payload(self._model_part(masters), self.step, self.best))
        runlog.say(f"best {metric} {value:.4f} at step {self.step}: saved {name}")

    def _masters(self) -> Optional[dict[str, Any]]:
        """Every rank, before rank 0 may save: under DeepSpeed the state dict with the fp32
        master weights (a collective); None otherwise (the module's own state dict is fp32)."""
        return ckpt.master_state_dict(self.unwrapped) if self.deepspeed else None

    def _model_part(self, masters: Optional[dict[str, Any]]) -> dict[str, Any]:
        meta = self.corpus.cache.meta  # the tokenizer travels with the weights: eval refuses another one
        return {**ckpt.model_part(self.cfg.model_module, self.unwrapped, masters),
                "tokenizer": {"path": meta["tokenizer"], "sha256": meta["tokenizer_sha256"]}}

    def save_last(self) -> None:
        """Every rank: its companions (rank file, DeepSpeed shard); then rank 0 writes last.pth,
        which names their tag, and removes older tags. A crash before last.pth is renamed
        into place leaves the previous complete set."""
        tag = ckpt.tag_of(self.step)
        if self.acc.process_index > 0:
            ckpt.save_rank_state(ckpt.rank_file(self.ckpt_dir, self.acc.process_index, tag), self.unwrapped)
        if self.deepspeed:  # a collective: every rank writes its ZeRO shard
            self.model.save_checkpoint(str(self.ckpt_dir / ckpt.DEEPSPEED_DIR), tag=tag, save_latest=False)
        self.acc.wait_for_everyone()
        masters = self._masters()
        if self.main:
            if not self.evaluated_once:   # no validation yet: keep the best by smoothed train loss
                self._maybe_best("train_loss_smoothed", rules.smoothed_train_loss(
                    [r["loss_ce"] for r in self.history], self.cfg.guardrails.smoothing_window), masters)
            registry.save_checkpoint(self.ckpt_dir / LAST_CHECKPOINT, ckpt.last_payload(
                self._model_part(masters), self.unwrapped, None if self.deepspeed else self.optimizer, self.scheduler,
                step=self.step, accumulation_steps=self.cfg.train.accumulation_steps,
                batches_per_epoch=self.stream.batches_per_epoch, total_steps=self.total, best=self.best,
                config=self.configured.to_dict(), split=split_digest(self.corpus.train_idx, self.corpus.val_idx),
                elapsed_s=time.time() - self.start_time + self.elapsed_before,
                num_processes=self.acc.num_processes, deepspeed=self.deepspeed))
            ckpt.remove_stale(self.ckpt_dir, tag)

    def stop_requested(self) -> bool:
        """A signal, or runs/V/stop (written by `minimind stop`; every node sees the run folder)."""
        return self.stop_flag.requested or (self.run_dir / STOP_FILE).exists()

    def agree(self, guard_reason: Optional[str]) -> tuple[bool, bool]:
        """(stop request, guardrail stop) agreed across processes: any rank's flag counts."""
        flags = [float(self.stop_requested()), float(guard_reason is not None)]
        if self.acc.num_processes > 1:
            flags = self.acc.reduce(torch.tensor(flags, device=self.acc.device), "sum").tolist()
        return flags[0] > 0, flags[1] > 0

    # --- the run -----------------------------------------------------------------------

    def run(self) -> int:
        # Rank 0 beats from the start: preparing a large dataset or bank can take minutes,
        # and a silent run would look hung. (Before accelerate starts, RANK tells the rank.)
        self.heartbeat = Heartbeat(self.run_dir, self.progress.as_state)
        if os.environ.get("RANK", "0") == "0":
            self.heartbeat.start()
        try:
            self.setup()
            t = self.cfg.train
            self.start_step, self.start_time = self.step, time.time()
            self.last_log_time, self.tokens_since_log = self.start_time, 0
            if self.main:
                self.start_outputs()
            try:
                code = self._loop(t)
            finally:
                if self.main:
                    self.metrics.close()
            self.acc.wait_for_everyone()
            return code
        finally:
            self.heartbeat.stop()

    def _loop(self, t) -> int:
        while self.step < self.total:
            stats = self.train_step()
            self.tokens_since_log += stats["tokens"]
            guard = None
            if self.step % t.log_interval == 0 or self.step == self.total:
                guard = self.log_step(stats)
                self.tokens_since_log = 0
            paused = time.time()
            if t.eval_interval and self.step % t.eval_interval == 0 and self.step < self.total:
                masters = self._masters()  # every rank: a collective under DeepSpeed
                if self.main:
                    guard = self.eval_step(masters) or guard
            if self.step % t.save_interval == 0 and self.step < self.total:
                self.save_last()
            self.last_log_time += time.time() - paused  # tokens/s counts training time only
            by_signal, by_guard = self.agree(guard)
            if by_signal or by_guard:
                return self._stop(by_signal, guard)
        return self._finish()

    def _stop(self, by_signal: bool, guard_reason: Optional[str]) -> int:
        self.save_last()
        self.progress.step = self.step  # the checkpoint's step, which may be past the last log step
        self.progress.phase = "stopped"
        code = EXIT_STOPPED if by_signal else EXIT_GUARDRAIL
        if self.main:
            if self.stop_flag.signal_name:
                reason = f"signal {self.stop_flag.signal_name}"
            elif (self.run_dir / STOP_FILE).exists():
                reason = "stop requested (minimind stop)"
            else:
                reason = "signal from another process"
            if not by_signal:
                reason = guard_reason or "guardrail danger on another process"
            state = "stopped" if by_signal else "guardrail_stopped"
            runlog.say(f"{state} at step {self.step}/{self.total}: {reason}; checkpoint saved")
            update_state(self.run_dir, state=state, stop_reason=reason, heartbeat=time.time(),
                         **self.progress.as_state())
            self.swan.finish(ok=False)
        return code

    def _finish(self) -> int:
        guard = None
        masters = self._masters()  # every rank: a collective under DeepSpeed
        if self.main:
            last_eval = [r for r in read_metrics(self.run_dir / METRICS_FILE) if "eval/val_loss" in r]
            if not last_eval or last_eval[-1]["step"] != self.step:
                guard = self.eval_step(masters)
        self.save_last()
        _, by_guard = self.agree(guard)
        if by_guard:
            return self._stop(False, guard)
        if self.main:
            runlog.say(f"training finished: {self.step} steps")
            self.progress.eta_s, self.progress.phase = 0.0, "trained"
            update_state(self.run_dir, heartbeat=time.time(), **self.progress.as_state())
            self.swan.finish(ok=True)
        return EXIT_FINISHED
