"""MiniMind language model with a human-readable memory bank: the lab's living research model.

One file, torch and the standard library only, so that a snapshot `models/model_X_Y_Z.py`
(an exact copy of this file) rebuilds any old experiment. It reads top to bottom as the
research idea, the details last:

1. The config: ModelConfig (every setting with its range and help; the CLI and the agent
   use them) and the block layouts PRESETS.
2. The idea: MemoryLayer (product-key retrieval over a bank of entries that are token
   ids, text a human can read, read through the model's own token embeddings), the Block
   that puts it beside or instead of the feed-forward layer, and MiniMindLM.
3. The memory API of MiniMindLM: loading the bank, EMA updates of selected entries,
   statistics, inspection, editing.
4. The baseline parts, as in MiniMind2 and under its parameter names so that a MiniMind2
   `pretrain_512.pth` loads strictly: RMSNorm, rotary embeddings, grouped-query attention
   with a KV cache, SwiGLU feed-forward, mixture of experts.
5. The kernels, each stated with the exact torch reference it must equal, and the EMA
   store: the fixed-shape bookkeeping of the query sums between two EMA updates.
6. The config validation machinery.

Shapes in comments: B batch, T new tokens, S keys (cache + new), H heads, D head dim,
N tokens in the batch (B*T), C candidates, L knowledge_length, V vocab.
"""

import contextlib
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD_ID = 0  # token id 0 pads short memory entries; it is ignored when an entry is read

# ----------------------------------------------------------------------------- 1. config


class BlockSpec(NamedTuple):
    """What a transformer block holds besides attention."""

    feed_forward: bool
    memory: bool


PRESETS = {
    "original": BlockSpec(feed_forward=True, memory=False),  # MiniMind2, the baseline
    "memory": BlockSpec(feed_forward=False, memory=True),  # the memory bank replaces the FFN
    "hybrid": BlockSpec(feed_forward=True, memory=True),  # FFN and memory side by side
    "no_feed": BlockSpec(feed_forward=False, memory=False),  # attention only: the control
}
# The seed lab's file names, still accepted everywhere a preset is.
PRESET_ALIASES = {"model_original": "original", "model_memory": "memory", "model": "hybrid", "model_no_feed": "no_feed"}

# Settings that were removed because only one value remained, mapped to that value. Old
# configs and checkpoints still carry them; from_dict drops them when they hold that value.
RETIRED_FIELDS = {"scoring_func": "softmax"}  # the MoE router always uses softmax


def _setting(default, help, *, min=None, max=None, choices=None):
    """A config field with its help and range (checked by _validate_fields, section 6)."""
    metadata = {"help": help}
    metadata.update({k: v for k, v in (("min", min), ("max", max), ("choices", choices)) if v is not None})
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class ModelConfig:
    """Every model setting, MiniMind2's names and defaults. Validated on construction."""

    preset: str = _setting("memory", "block layout: original (attention+FFN), memory (memory replaces FFN), "
                           "hybrid (FFN+memory), no_feed (attention only)",
                           choices=[*PRESETS, *PRESET_ALIASES])
    dim: int = _setting(512, "model width", min=8, max=8192)
    n_layers: int = _setting(8, "transformer blocks", min=1, max=128)
    n_heads: int = _setting(8, "attention query heads (dim must be divisible by it)", min=1, max=128)
    n_kv_heads: int = _setting(2, "key/value heads for grouped-query attention (divides n_heads)", min=1, max=128)
    vocab_size: int = _setting(6400, "tokenizer vocabulary size", min=4, max=1_000_000)
    hidden_dim: int | None = _setting(None, "FFN hidden width; None means 8*dim/3 rounded up to multiple_of",
                                      min=8, max=65536)
    multiple_of: int = _setting(64, "FFN hidden width is rounded up to a multiple of this", min=1, max=4096)
    norm_eps: float = _setting(1e-5, "RMSNorm epsilon", min=1e-12, max=0.1)
    max_seq_len: int = _setting(512, "longest sequence (prompt + generated) the model accepts", min=8, max=131072)
    rope_theta: float = _setting(1e6, "rotary embedding base", min=1.0, max=1e9)
    dropout: float = _setting(0.0, "dropout probability", min=0.0, max=0.9)
    flash_attn: bool = _setting(True, "use torch's scaled_dot_product_attention kernel")
    # Mixture of experts (MiniMind2's MoE, used only by the presets with a feed-forward layer)
    use_moe: bool = _setting(False, "replace each FFN by routed + shared experts")
    num_experts_per_tok: int = _setting(2, "experts each token is routed to", min=1, max=64)
    n_routed_experts: int = _setting(4, "routed experts per layer", min=1, max=256)
    n_shared_experts: int = _setting(1, "shared experts every token also passes (0 or 1)", min=0, max=1)
    aux_loss_alpha: float = _setting(0.1, "weight of the expert load-balancing loss", min=0.0, max=10.0)
    seq_aux: bool = _setting(True, "balance experts per sequence rather than per batch")
    norm_topk_prob: bool = _setting(True, "renormalise the chosen experts' weights to sum to 1")
    # Memory layer
    knowledge_num: int = _setting(1_048_576, "memory entries; a perfect square (product keys use sqrt of it per half)",
                                  min=4, max=67_108_864)
    knowledge_length: int = _setting(32, "tokens per memory entry", min=1, max=1024)
    knowledge_dim: int = _setting(128, "query/key width of the memory lookup (even)", min=2, max=4096)
    num_candidates: int = _setting(32, "entries each token reads (at most sqrt(knowledge_num))", min=1, max=1024)
    ema_decay: float = _setting(0.9, "EMA decay when selected entries move toward their queries (1 = never)",
                                min=0.0, max=1.0)
    ema_update_freq: int = _setting(5, "optimizer steps between EMA updates of the bank", min=1, max=1_000_000)
    freeze_ratio: float = _setting(0.2, "fraction of entries that EMA never changes", min=0.0, max=1.0)
    freeze_policy: str = _setting("random", "which entries are frozen: random (seeded) or importance (highest scores)",
                                  choices=["random", "importance"])
    memory_seed: int = _setting(0, "seed of the initial random bank and of random freezing", min=0, max=2**31 - 1)
    similarity_loss_weight: float = _setting(0.0, "weight of the query/best-key alignment loss", min=0.0, max=100.0)
    diversity_loss_weight: float = _setting(0.0, "weight of the query-collapse penalty (mean query direction)",
                                            min=0.0, max=100.0)

    def __post_init__(self):
        # The checks are defined at the end of the file (section 6): they run only when a config is built.
        _validate_fields(self)
        self.preset = PRESET_ALIASES.get(self.preset, self.preset)
        _validate_combination(self)

    @property
    def ffn_hidden_dim(self) -> int:
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * 4 * self.dim / 3)  # MiniMind2's formula: 1365 at dim 512 ...
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)  # ... 1408

    @property
    def has_memory(self) -> bool:
        return PRESETS[self.preset].memory

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        for key, only in RETIRED_FIELDS.items():
            if key in d and (value := d.pop(key)) != only:
                raise ValueError(f"model config key {key} was retired and is always {only!r} now, got {value!r}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def fields_schema(cls) -> dict:
        """{name: {type, help, min, max, choices, default, nullable}} for the CLI's --set and the agent."""
        schema = {}
        for f in dataclasses.fields(cls):
            kind, nullable = _field_type(f)
            schema[f.name] = {"type": kind.__name__, "help": f.metadata["help"], "min": f.metadata.get("min"),
                              "max": f.metadata.get("max"), "choices": f.metadata.get("choices"),
                              "default": f.default, "nullable": nullable}
        return schema


# ----------------------------------------------------------------------------- 2. the memory layer, the block and the model


EMA_MAX_PENDING = 32768  # entries per layer whose query sums are kept between EMA updates (memory bound)
HOT_FACTOR = 10.0  # an entry is "hot" when used this many times more than the mean used entry
# Selection diversity is measured over windows of this many consecutive real (non-padding)
# positions of one sequence: the entropy of the entries they chose ranges over [0, ln 64 =
# 4.16] nats, so the lab's default thresholds (3.0 safe, 2.0 danger) mean e^3 = 20 and e^2 = 7.4
# effective entries per 64 positions. Natural text's own tokens give about 3.3 at 64 (2.9
# at 32): a model that reads one entry per distinct token in the window is safe, a layer
# whose positions share a handful of entries (the 1.4.3 failure) is in danger.
SELECTION_WINDOW = 64
WORST_LAYER = ("selection_entropy", "selection_distinct")  # memory_stats reports these as the minimum over layers


def bank_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds every token id (the bank is the largest buffer)."""
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max else torch.int32


class MemoryLayer(nn.Module):
    """Reads the shared bank of token-id entries for every token; see PRODUCT.md section 7.

    query   = Wq RMSNorm(h_attn)  -- the attention output alone: querying with x + h_attn
                                     averaged the queries and froze the selection (lab 1.4.3)
    lookup  = product keys: the query's two halves each score sqrt(knowledge_num) sub-keys;
              the best C of each half pair up, the best C pair sums are the candidates
              (entry i*sqrt(N) + j), so scoring costs O(sqrt(N)), never O(N)
    read    = sum over candidates of softmax weight * mean of the entry's token embeddings
    out     = Wdown(silu(Wgate x) * Wup read)   -- gated SwiGLU fusion into the residual,
              knowledge_dim wide: the read carries no more than that anyway

    The read projects the token embedding table to knowledge_dim once per step and averages
    rows of that (V, knowledge_dim) table: mean and projection are both linear, so this equals
    projecting each entry's mean embedding, while the gather moves 4x fewer bytes.
    `F.embedding_bag` with per-sample weights (softmax weight / entry length) sums the C*L
    token rows of each query in one kernel: no (N, C, L, dim) tensor ever exists, and the
    weights' gradient reaches the sub-keys and the query projection.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.side = math.isqrt(config.knowledge_num)
        self.num_candidates = config.num_candidates
        self.similarity_loss_weight = config.similarity_loss_weight
        self.diversity_loss_weight = config.diversity_loss_weight
        half = config.knowledge_dim // 2
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.query = nn.Linear(config.dim, config.knowledge_dim, bias=False)
        self.keys = nn.Parameter(torch.randn(2, self.side, half) / math.sqrt(half))  # (2, sqrt(N), kd/2)
        self.value = nn.Linear(config.dim, config.knowledge_dim, bias=False)  # applied to the embedding table
        self.gate = nn.Linear(config.dim, config.knowledge_dim, bias=False)
        self.up = nn.Linear(config.knowledge_dim, config.knowledge_dim, bias=False)
        self.down = nn.Linear(config.knowledge_dim, config.dim, bias=False)
        # With both halves' scores sorted, pair (a, b) is beaten by the (a+1)(b+1)-1 pairs
        # (a' <= a, b' <= b), so only pairs with (a+1)(b+1) <= C can be among the best C:
        # about C*ln(C) pairs (119 for C=32) instead of C*C, with the same result.
        rows, cols = zip(*[(a, b) for a in range(self.num_candidates) for b in range(self.num_candidates)
                           if (a + 1) * (b + 1) <= self.num_candidates])
        self.register_buffer("pair_rows", torch.tensor(rows), persistent=False)
        self.register_buffer("pair_cols", torch.tensor(cols), persistent=False)
        # Usage counts of the current statistics window: updated in place (index_add_), read and
        # reset only by memory_stats(). Not saved: a window, not model state.
        self.register_buffer("usage", torch.zeros(config.knowledge_num, dtype=torch.int32), persistent=False)
        # The rest of the window and the EMA store are plain tensors, updated in place, with
        # fixed shapes: Python numbers or a growing list would be torch.compile guards (a
        # recompile every micro-batch) and host reads. Not buffers: a module-wide cast
        # (DeepSpeed's bf16) would round the sums, and DDP would overwrite them with rank 0's.
        # _apply moves them with the module, keeping their dtypes. One element, not 0-dim:
        # torch.compile (2.13, aot_eager) drops the in-place add to a 0-dim float64 attribute.
        self.entropy_sum = torch.zeros(1, dtype=torch.float64)
        self.token_count = torch.zeros(1, dtype=torch.int64)
        # selection diversity of the window: sums of per-window entropy and distinct share, and
        # the number of windows (see SELECTION_WINDOW)
        self.selection_sums = torch.zeros(3, dtype=torch.float64)
        # the query inputs that selected each entry since the last EMA update (EmaStore)
        self.capacity = min(EMA_MAX_PENDING, config.knowledge_num)  # training/ddp.py reads it
        self.ema = EmaStore(config.knowledge_num, config.dim, self.capacity)
        self.capture = None  # a list while inspect_memory() records selections
        self._table, self._table_key = None, None
        self.weight_updates = 0  # the model's count of weight updates (MiniMindLM.weights_updated): the cache key

    def lookup(self, query):
        """(scores, entries) of the best num_candidates entries per query (N, kd), best first.

        Scored in fp32 even under autocast, and with TF32 off (exact_fp32_matmul): bf16 or
        TF32 sub-key scores tie often, and the ties would decide which entries a token reads
        (then training, evaluation and the CPU would read different entries).
        """
        N, C = query.shape[0], self.num_candidates
        halves = query.view(N, 2, -1).transpose(0, 1)  # (2, N, kd/2)
        keys = self.keys.float()
        # Selected without a graph: autograd through topk_by_groups would keep the whole
        # (2, N, sqrt(N)) fp32 score tensor for backward; SubKeyScores gives the chosen
        # scores their gradient from the query and the sub-keys alone.
        with torch.no_grad(), torch.autocast(device_type=query.device.type, enabled=False), exact_fp32_matmul():
            sub_scores = torch.bmm(halves.float(), keys.transpose(1, 2))  # (2, N, sqrt(N)): each half vs its sub-keys
            s, i = topk_by_groups(sub_scores.flatten(0, 1), C)  # (2N, C), sorted: best sub-keys per half
        (i1, i2) = i.view(2, N, C)
        s1, s2 = SubKeyScores.apply(s.view(2, N, C), halves, keys, i.view(2, N, C))
        pair = s1[:, self.pair_rows] + s2[:, self.pair_cols]  # (N, P): the pairings that can win
        scores, best = pair.topk(C, dim=-1)  # (N, C), best first
        entries = i1.gather(1, self.pair_rows[best]) * self.side + i2.gather(1, self.pair_cols[best])
        return scores, entries

    def value_table(self, embedding_weight):
        """The token embedding table projected to knowledge_dim, padding row zeroed: (V, kd).

        Recomputed whenever gradients are on; during inference it is cached until the model
        counts a weight update (`MiniMindLM.weights_updated`: every optimizer step, every state
        load). The tensors' version counters alone do not tell: ZeRO-2 writes its updated
        weights through `.data` copies, which move neither the version nor the address. They
        stay in the key for in-place edits by hand between two steps.
        """
        if torch.is_grad_enabled():
            return self._project(embedding_weight)
        key = (self.weight_updates,
               *((w.data_ptr(), w._version, w.dtype) for w in (embedding_weight, self.value.weight)))
        if key != self._table_key:
            self._table, self._table_key = self._project(embedding_weight), key
        return self._table

    def _project(self, embedding_weight):
        table = self.value(embedding_weight)
        assert PAD_ID == 0  # the zero row is prepended: padding then adds nothing to a read
        return torch.cat([table.new_zeros(1, table.shape[1]), table[1:]])

    def read(self, entries, weights, bank, embedding_weight):
        """Weighted mean-embedding read of the candidate entries: (N, C) -> (N, kd)."""
        table = self.value_table(embedding_weight)  # (V, kd)
        N, C = entries.shape
        tokens = bank.index_select(0, entries.flatten()).view(N, C, -1)  # (N, C, L) compact ints
        lengths = torch.count_nonzero(tokens, dim=-1).clamp(min=1)  # (N, C): real (non-padding) tokens
        # each token of candidate c weighs weight_c / length_c; padding rows of the table are zero
        per_token = (weights / lengths)[..., None].expand(tokens.shape).reshape(N, -1)  # (N, C*L)
        # One bag of C*L tokens per query. Padding is handled by the zero row, not padding_idx,
        # which would leave embedding_bag's fast (fbgemm) kernel: 5x slower on CPU.
        return WeightedBagSum.apply(tokens.view(N, -1), per_token.to(table.dtype), table)

    def forward(self, h_attn, bank, embedding_weight, real=None):
        """real (B, T) bool: positions holding a token, not padding (None: all of them)."""
        B, T, dim = h_attn.shape
        x = self.norm(h_attn).reshape(B * T, dim)  # (N, dim)
        query = self.query(x)  # (N, kd)
        scores, entries = self.lookup(query)  # (N, C)
        weights = scores.softmax(dim=-1)  # (N, C), fp32 as the scores: differentiable w.r.t. keys and query
        read = self.read(entries, weights, bank, embedding_weight)  # (N, kd)
        out = self.down(F.silu(self.gate(x)) * self.up(read.to(x.dtype)))  # (N, dim)
        aux = self.auxiliary_loss(query, entries)
        self.record(x, entries, weights, h_attn.new_ones(B, T, dtype=torch.bool) if real is None else real)
        return out.view(B, T, dim), aux

    def auxiliary_loss(self, query, entries):
        """similarity: pull each query toward its best key; diversity: penalise queries that all
        point the same way (|mean unit query|^2 is the mean pairwise cosine, 1 when collapsed)."""
        aux = query.new_zeros((), dtype=torch.float32)
        if self.similarity_loss_weight > 0:
            best = entries[:, 0]
            key = torch.cat([self.keys[0][best // self.side], self.keys[1][best % self.side]], dim=-1)  # (N, kd)
            aux = aux + self.similarity_loss_weight * (1 - F.cosine_similarity(query.float(), key.float(), dim=-1)).mean()
        if self.diversity_loss_weight > 0:
            aux = aux + self.diversity_loss_weight * F.normalize(query.float(), dim=-1).mean(0).pow(2).sum()
        return aux

    @torch.no_grad()
    def record(self, x, entries, weights, real):
        """Statistics for the window and, in training, the query sums the next EMA update uses."""
        if self.capture is not None:  # inspection is not traffic: it neither counts nor trains
            self.capture.append((entries, weights))
            return
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)  # (N,) nats: spread of one token's candidates
        self.entropy_sum.add_(entropy.double().sum())
        self.token_count.add_(entries.shape[0])
        self.usage.index_add_(0, entries.flatten(), torch.ones(entries.numel(), dtype=self.usage.dtype, device=entries.device))
        best = entries[:, 0]  # the token's best entry is the one it "selected"
        windows = selection_window_sums(best, real)
        if windows is not None:
            self.selection_sums.add_(windows)
        if self.training:
            self.ema.add(best, x.detach().float(), torch.ones_like(best))

    _WINDOW = ("entropy_sum", "token_count", "selection_sums")

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        device = self.query.weight.device  # the window and the store follow the module's device, never its dtype
        for name in self._WINDOW:
            setattr(self, name, getattr(self, name).to(device))
        self.ema.to(device)
        return self

    def take_pending(self):
        """The EMA store's rows since the last update, or None; empties it (EmaStore.take)."""
        return self.ema.take()

    # Compatibility: until minimind f738959 (labs such as tests/fixtures/lab_dc717c6) the
    # EMA store was this list attribute, and their checkpoints save it as `memory_pending`;
    # training/checkpoint.py and training/ddp.py read and assign it on every model file.
    @property
    def pending(self) -> list:
        """The EMA store as the list of (entry ids, sums, counts) this attribute once was."""
        held = self.ema.held(int(self.ema.used()))
        return [] if held is None else [held]

    @pending.setter
    def pending(self, parts) -> None:
        self.ema.replace(parts)

    def stats(self, reset: bool) -> dict:
        """Window statistics; O(knowledge_num), so only at report time."""
        usage = self.usage.double()
        total, used = usage.sum().item(), int((usage > 0).sum())
        out = {"coverage": used / usage.numel(), "dead": float(usage.numel() - used),
               "hot": float((usage > HOT_FACTOR * total / max(used, 1)).sum()) if used else 0.0}
        if self.token_count:
            p = usage[usage > 0] / total
            out["candidate_entropy"] = (self.entropy_sum / self.token_count).item()
            out["kl_uniform"] = (p * (p * usage.numel()).log()).sum().item()
        entropy_sum, distinct_sum, windows = self.selection_sums.tolist()
        if windows:
            out["selection_entropy"] = entropy_sum / windows
            out["selection_distinct"] = distinct_sum / windows
        if reset:
            self.usage.zero_()
            self.entropy_sum.zero_()
            self.token_count.zero_()
            self.selection_sums.zero_()
        return out


class Block(nn.Module):
    """Attention, then what the preset adds: FFN (or MoE), memory, both or nothing."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        spec = PRESETS[config.preset]
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.use_moe = config.use_moe
        if spec.feed_forward:
            self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
            self.feed_forward = MOEFeedForward(config) if config.use_moe else FeedForward(config)
        else:
            self.ffn_norm = self.feed_forward = None
        self.memory = MemoryLayer(config) if spec.memory else None

    def forward(self, x, cos, sin, past_kv, use_cache, bank, embedding_weight, real=None):
        h_attn, new_kv = self.attention(self.attention_norm(x), cos, sin, past_kv, use_cache)
        h = x + h_attn
        aux = x.new_zeros((), dtype=torch.float32)
        if self.feed_forward is not None:
            if self.use_moe:
                ffn, moe_aux = self.feed_forward(self.ffn_norm(h))
                aux = aux + moe_aux
            else:
                ffn = self.feed_forward(self.ffn_norm(h))
            h = h + ffn
        if self.memory is not None:
            memory, memory_aux = self.memory(h_attn, bank, embedding_weight, real)
            h, aux = h + memory, aux + memory_aux
        return h, new_kv, aux


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor  # scalar: MoE balance + memory auxiliary losses, 0 when none
    past_key_values: list | None  # per layer (k, v), each (B, S, n_kv_heads, head_dim), when use_cache


class MiniMindLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.tok_embeddings.weight = self.output.weight  # tied, as in MiniMind2
        cos, sin = rope_tables(config.dim // config.n_heads, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # recomputable: not in checkpoints
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # residual outputs start small (GPT-2's scaled init)
            if name.endswith(("wo.weight", "w2.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.has_memory:
            # One bank shared by every memory layer; saved in checkpoints (it is what the model knows).
            g = torch.Generator().manual_seed(config.memory_seed)
            shape = (config.knowledge_num, config.knowledge_length)
            # a model works without a knowledge file: random valid (non-padding) token ids, seeded
            self.register_buffer("memory_bank", torch.randint(1, config.vocab_size, shape, generator=g,
                                                              dtype=bank_dtype(config.vocab_size)))
            self.register_buffer("memory_frozen", self._random_freeze(g))
        self.last_ema_updated = 0
        self.weight_updates = 0  # optimizer steps and state loads seen: what cached projections are keyed on
        self.register_load_state_dict_post_hook(MiniMindLM._state_loaded)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _random_freeze(self, generator):
        n = self.config.knowledge_num
        frozen = torch.zeros(n, dtype=torch.bool)
        frozen[torch.randperm(n, generator=generator)[:round(self.config.freeze_ratio * n)]] = True
        return frozen

    def memory_layers(self) -> list[tuple[int, MemoryLayer]]:
        return [(i, block.memory) for i, block in enumerate(self.layers) if block.memory is not None]

    def forward(self, input_ids, past_key_values=None, use_cache=False) -> ModelOutput:
        B, T = input_ids.shape
        start = past_key_values[0][0].shape[1] if past_key_values else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}")
        h = self.dropout(self.tok_embeddings(input_ids))  # (B, T, dim)
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        bank = self.memory_bank if self.config.has_memory else None
        aux = h.new_zeros((), dtype=torch.float32)
        new_cache = []
        real = input_ids != PAD_ID  # (B, T): padding positions do not count in the selection statistics
        for i, layer in enumerate(self.layers):
            past_kv = past_key_values[i] if past_key_values else None
            h, kv, layer_aux = layer(h, cos, sin, past_kv, use_cache, bank, self.tok_embeddings.weight, real)
            new_cache.append(kv)
            aux = aux + layer_aux
        logits = self.output(self.norm(h))  # (B, T, V)
        return ModelOutput(logits, aux, new_cache if use_cache else None)

    @torch.inference_mode()
    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_p=1.0, repetition_penalty=1.0,
                 eos_token_id=2, use_cache=True):
        """Prompt followed by up to max_new_tokens tokens: (B, T + new). temperature 0 is greedy.

        With use_cache each step feeds only the newest token and reuses the keys/values of
        the earlier ones; use_cache=False recomputes the whole sequence (the reference the
        cached path must match). A row that has produced eos_token_id is padded with 0
        until every row has (None: never stop early). Generation also stops at max_seq_len.
        """
        tokens, past = input_ids, None
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(min(max_new_tokens, self.config.max_seq_len - input_ids.shape[1])):
            step_input = tokens[:, -1:] if past is not None else tokens
            out = self(step_input, past_key_values=past, use_cache=use_cache)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()  # (B, V)
            if repetition_penalty != 1.0:  # CTRL-style: make every token already in the row less likely
                seen = logits.gather(1, tokens)
                logits = logits.scatter(1, tokens, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
            next_token = self._pick(logits, temperature, top_p)  # (B,)
            next_token = torch.where(done, torch.full_like(next_token, PAD_ID), next_token)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if eos_token_id is not None:
                done |= next_token == eos_token_id
                if done.all():
                    break
        return tokens

    @staticmethod
    def _pick(logits, temperature, top_p):
        if temperature == 0.0:
            return logits.argmax(dim=-1)
        probs = (logits / temperature).softmax(dim=-1)
        if top_p < 1.0:  # nucleus: keep the smallest set of likeliest tokens whose mass reaches top_p
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > top_p
            probs = torch.zeros_like(probs).scatter(1, order, sorted_probs.masked_fill(outside, 0.0))
        return torch.multinomial(probs, 1).squeeze(1)

    # ------------------------------------------------------------------ 3. the memory API

    def _require_memory(self):
        if not self.config.has_memory:
            raise ValueError(f"preset {self.config.preset!r} has no memory layers")

    @torch.no_grad()
    def load_memory_bank(self, token_ids, importance=None):
        """Replace the bank with (knowledge_num, knowledge_length) token ids (0 pads).

        With freeze_policy "importance", the freeze_ratio entries of highest importance
        (one score per entry) are frozen; with "random", the seeded random set is kept.
        """
        self._require_memory()
        cfg = self.config
        ids = torch.as_tensor(token_ids)
        if tuple(ids.shape) != (cfg.knowledge_num, cfg.knowledge_length):
            raise ValueError(f"memory bank must have shape ({cfg.knowledge_num}, {cfg.knowledge_length}) "
                             f"(knowledge_num, knowledge_length), got {tuple(ids.shape)}")
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise ValueError(f"memory bank must hold integer token ids, got {ids.dtype}")
        ids = ids.to(torch.int32)  # also widens uint16 from numpy, which has few torch ops
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= cfg.vocab_size):
            raise ValueError(f"memory bank token ids must be in [0, {cfg.vocab_size}), got {int(ids.min())}..{int(ids.max())}")
        if cfg.freeze_policy == "importance":
            if importance is None:
                raise ValueError("freeze_policy 'importance' needs importance scores for load_memory_bank")
            scores = torch.as_tensor(importance, dtype=torch.float32).flatten()
            if scores.numel() != cfg.knowledge_num:
                raise ValueError(f"importance must have {cfg.knowledge_num} scores, got {scores.numel()}")
            frozen = torch.zeros(cfg.knowledge_num, dtype=torch.bool)
            frozen[scores.topk(round(cfg.freeze_ratio * cfg.knowledge_num)).indices] = True
            self.memory_frozen.copy_(frozen)
        self.memory_bank.copy_(ids)
        for _, layer in self.memory_layers():
            layer.pending = []

    @staticmethod
    def _state_loaded(module, incompatible_keys) -> None:
        module.weights_updated()

    def weights_updated(self) -> None:
        """Count a weight update the tensors may not show (an optimizer step, a state load):
        the memory layers' cached value tables are then projected again."""
        self.weight_updates += 1
        for _, layer in self.memory_layers():
            layer.weight_updates = self.weight_updates

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> dict:
        """Every ema_update_freq steps: EMA-update the unfrozen entries selected since the last update.

        Every step, first counts the optimizer's weight update (weights_updated).
        Returns {"updated": entries updated, "changed": entries whose text changed, a 0-dim
        tensor}. Two numbers are read from the device (how many entries each layer holds,
        how many may change): the rest stays there, so a GPU never waits on the update."""
        self.weights_updated()
        if not self.config.has_memory or step % self.config.ema_update_freq:
            return {}
        layers = [layer for _, layer in self.memory_layers()]
        held = torch.stack([layer.ema.used() for layer in layers]).tolist()
        pending = [p for layer, used in zip(layers, held) if (p := layer.ema.held(used)) is not None]
        for layer in layers:
            layer.ema.clear()
        updated, changed = 0, torch.zeros((), dtype=torch.long, device=self.memory_bank.device)
        if pending:
            ids, sums, _ = (torch.cat(parts) for parts in zip(*pending))  # layers share the bank
            # distinct ids in ascending order and their summed rows, in row order (as unique() would)
            segment, unique, groups = group_equal(ids, fill=0)
            sums = torch.zeros_like(sums).index_add_(0, segment, sums)
            distinct = torch.arange(len(ids), device=ids.device) < groups
            keep = distinct & ~self.memory_frozen[unique]  # frozen entries never change
            rows = (~keep).to(torch.uint8).argsort(stable=True)  # the kept ones first, in id order
            updated = int(keep.sum())
            unique, sums = unique[rows[:updated]], sums[rows[:updated]]
            changed = ema_update(self.memory_bank, unique, sums, self.tok_embeddings.weight, self.config.ema_decay)
        self.last_ema_updated = updated
        return {"updated": updated, "changed": changed}

    @torch.no_grad()
    def memory_stats(self, reset: bool = True) -> dict[str, float]:
        """Flat statistics of the window since the last reset: means over memory layers, plus
        per layer `l{i}/...`; the bank's frozen count/ratio and entries the last EMA updated.

        `selection_entropy` (nats, over windows of SELECTION_WINDOW positions: how spread the
        entries the positions chose are) and `selection_distinct` (the share of distinct
        chosen entries per window) are the worst layer's, not the mean: one collapsed layer is
        the failure the memory-entropy guardrail watches. Absent when no full window was seen.
        `candidate_entropy` (nats, mean over tokens of the entropy of the softmax over its
        num_candidates candidates, at most ln num_candidates) says how evenly a token weighs
        its candidates, not which entries are chosen; it and kl_uniform are absent when no
        token was seen."""
        layers = self.memory_layers()
        if not layers:
            return {}
        out, per_layer = {}, []
        for i, layer in layers:
            stats = layer.stats(reset)
            per_layer.append(stats)
            out.update({f"l{i}/{k}": v for k, v in stats.items()})
        for key in per_layer[0]:
            values = [s[key] for s in per_layer if key in s]
            out[key] = min(values) if key in WORST_LAYER else sum(values) / len(values)
        frozen = int(self.memory_frozen.sum())
        out.update(frozen=float(frozen), frozen_ratio=frozen / self.config.knowledge_num, updated=float(self.last_ema_updated))
        return out

    @torch.no_grad()
    def inspect_memory(self, input_ids, top: int = 5) -> list[list[list[tuple[int, float]]]]:
        """For each token of one sequence, for each memory layer, its `top` (entry, weight), best first."""
        self._require_memory()
        ids = torch.as_tensor(input_ids)
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"inspect_memory takes one sequence, got shape {tuple(ids.shape)}")
        layers = [layer for _, layer in self.memory_layers()]
        was_training = self.training
        self.eval()
        try:
            for layer in layers:
                layer.capture = []
            self(ids.to(self.tok_embeddings.weight.device))
            captured = [layer.capture[0] for layer in layers]  # (T, C) entries and weights per layer
        finally:
            for layer in layers:
                layer.capture = None
            self.train(was_training)
        return [[list(zip(entries[t, :top].tolist(), weights[t, :top].tolist())) for entries, weights in captured]
                for t in range(ids.shape[1])]

    def _check_entry(self, i: int):
        self._require_memory()
        if not 0 <= i < self.config.knowledge_num:
            raise ValueError(f"memory entry must be in [0, {self.config.knowledge_num}), got {i}")

    def memory_entry(self, i: int) -> list[int]:
        """Entry i's token ids, padding removed."""
        self._check_entry(i)
        return [t for t in self.memory_bank[i].tolist() if t != PAD_ID]

    @torch.no_grad()
    def set_memory_entry(self, i: int, token_ids) -> None:
        """Replace entry i's text (a human edit: allowed on frozen entries too); 0-padded to knowledge_length."""
        self._check_entry(i)
        ids = [int(t) for t in token_ids]
        cfg = self.config
        if len(ids) > cfg.knowledge_length:
            raise ValueError(f"memory entry has {len(ids)} tokens, more than knowledge_length={cfg.knowledge_length}")
        if any(not 0 <= t < cfg.vocab_size for t in ids):
            raise ValueError(f"memory entry token ids must be in [0, {cfg.vocab_size})")
        row = torch.full((cfg.knowledge_length,), PAD_ID, dtype=self.memory_bank.dtype)
        row[:len(ids)] = torch.tensor(ids, dtype=self.memory_bank.dtype)
        self.memory_bank[i] = row.to(self.memory_bank.device)


# The EMA step's text update, used by MiniMindLM.after_optimizer_step.


@torch.no_grad()
def ema_update(bank, entry_ids, targets, embedding_weight, decay: float, chunk: int = 1024) -> int:
    """Move each entry's text toward its target vector and write it back as token ids.

    For entry e with target t (the mean query input that selected it) rescaled to the norm
    of e's token embeddings, position l becomes the token nearest to
    decay * E[token_l] + (1 - decay) * t. The nearest is searched among the old token and
    the 8 tokens nearest to t (exact when decay is 0; a cheap, close approximation otherwise),
    so an update costs O(entries * (V + L) * dim), never O(knowledge_num). Padding stays
    padding and nothing becomes padding, so every entry stays readable text.
    Returns the number of entries whose text changed, as a 0-dim tensor (no host read).
    """
    E = embedding_weight.float()  # (V, dim)
    E_sq = E.pow(2).sum(-1)  # (V,)
    changed = torch.zeros((), dtype=torch.long, device=bank.device)
    for start in range(0, len(entry_ids), chunk):
        ids, target = entry_ids[start:start + chunk], targets[start:start + chunk]  # (u,), (u, dim)
        old = bank[ids].long()  # (u, L)
        real = old != PAD_ID
        old_emb = E[old]  # (u, L, dim)
        scale = (old_emb.norm(dim=-1) * real).sum(-1) / real.sum(-1).clamp(min=1)  # (u,)
        target = F.normalize(target, dim=-1) * scale[:, None]  # (u, dim)
        near = E_sq[None, :] - 2 * target @ E.T  # (u, V): squared distance to target, minus |target|^2
        near[:, PAD_ID] = float("inf")
        cand = near.topk(min(8, E.shape[0] - 1), dim=-1, largest=False).indices  # (u, K)
        # squared distance (minus |p|^2) of each candidate v to p_l = decay*E[old_l] + (1-decay)*t
        cand_emb = E[cand]  # (u, K, dim)
        cand_dot = decay * cand_emb @ old_emb.transpose(1, 2) + (1 - decay) * (cand_emb @ target[:, :, None])  # (u, K, L)
        cand_dist = E_sq[cand][:, :, None] - 2 * cand_dot
        old_dot = decay * E_sq[old] + (1 - decay) * (old_emb @ target[:, :, None]).squeeze(-1)  # (u, L)
        old_dist = E_sq[old] - 2 * old_dot
        best_dist, best = cand_dist.min(dim=1)  # (u, L)
        new = torch.where((best_dist < old_dist) & real, cand.gather(1, best), old)
        changed += (new != old).any(-1).sum()
        bank[ids] = new.to(bank.dtype)
    return changed


# ----------------------------------------------------------------------------- 4. the baseline parts (MiniMind2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x_float = x.float()  # normalise in fp32 even under bf16: the mean of squares underflows otherwise
        return self.weight * (x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angle of each position and frequency: (max_seq_len, head_dim/2)."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(max_seq_len).float(), freqs)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x (B, T, H, D): MiniMind2's complex-number RoPE."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, H, D/2) each
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, D/2)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    """Grouped-query causal self-attention with an optional KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.dim // config.n_heads
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.dropout = config.dropout
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn

    def forward(self, x, cos, sin, past_kv=None, use_cache=False):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past_kv is not None:  # the cache holds rotated keys, so old positions are never recomputed
            k, v = torch.cat([past_kv[0], k], dim=1), torch.cat([past_kv[1], v], dim=1)  # (B, S, H_kv, D)
        new_kv = (k, v) if use_cache else None
        S = k.shape[1]
        # each group of n_heads/n_kv_heads query heads shares one key/value head (MiniMind2's repeat_kv)
        n_rep = self.n_heads // self.n_kv_heads
        q = q.transpose(1, 2)  # (B, H, T, D)
        k = k.repeat_interleave(n_rep, dim=2).transpose(1, 2)  # (B, H, S, D)
        v = v.repeat_interleave(n_rep, dim=2).transpose(1, 2)
        # query i sits at position S-T+i and sees keys 0..S-T+i
        mask = None if T == 1 else torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
        if self.flash:
            is_causal = T == S and T > 1  # the kernel's own causal mask is aligned top-left: only right when T == S
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if is_causal else mask, is_causal=is_causal,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            y = self.attn_dropout(F.softmax(scores.float(), dim=-1).type_as(q)) @ v  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, -1)
        return self.resid_dropout(self.wo(y)), new_kv


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class MoEGate(nn.Module):
    """MiniMind2's router: softmax scores, top-k experts, load-balancing auxiliary loss."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.alpha, self.seq_aux, self.norm_topk_prob = config.aux_loss_alpha, config.seq_aux, config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.dim))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        B, T, _ = x.shape
        scores = F.linear(x.reshape(B * T, -1), self.weight).softmax(dim=-1)  # (N, E)
        weight, expert = scores.topk(self.top_k, dim=-1, sorted=False)  # (N, k)
        if self.top_k > 1 and self.norm_topk_prob:
            weight = weight / (weight.sum(dim=-1, keepdim=True) + 1e-20)
        aux = scores.new_zeros(())
        if self.training and self.alpha > 0.0:
            if self.seq_aux:  # per sequence: expert load (scaled so uniform = 1) times mean router score
                load = torch.zeros(B, self.n_experts, device=x.device)
                load.scatter_add_(1, expert.view(B, -1), torch.ones(B, T * self.top_k, device=x.device))
                load /= T * self.top_k / self.n_experts
                aux = (load * scores.view(B, T, -1).mean(dim=1)).sum(dim=1).mean() * self.alpha
            else:
                load = F.one_hot(expert.view(-1), self.n_experts).float().mean(0) * self.n_experts
                aux = (scores.mean(0) * load).sum() * self.alpha
        return expert, weight, aux


class MOEFeedForward(nn.Module):
    """Routed experts (each token goes to its top-k) plus an optional shared expert."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_routed_experts))
        self.gate = MoEGate(config)
        self.shared_experts = FeedForward(config) if config.n_shared_experts else None

    def forward(self, x):
        B, T, dim = x.shape
        expert, weight, aux = self.gate(x)  # (N, k) each
        flat = x.reshape(B * T, dim)
        token = torch.arange(B * T, device=x.device).repeat_interleave(expert.shape[1])  # (N*k,)
        expert, weight = expert.reshape(-1), weight.reshape(-1)
        y = torch.zeros_like(flat)
        for e, ffn in enumerate(self.experts):  # every expert runs, even on no tokens, so all get gradients
            chosen = (expert == e).nonzero().squeeze(1)
            y = y.index_add(0, token[chosen], ffn(flat[token[chosen]]) * weight[chosen, None].to(flat.dtype))
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view(B, T, dim), aux


# ----------------------------------------------------------------------------- 5. the kernels and their references


def topk_by_groups(scores, k: int, block: int = 4):
    """scores.topk(k, dim=-1) for (M, W) scores, about 1.5x faster on CPU for W >> k.

    Reference: `scores.topk(k, dim=-1)`. The values are equal, best first; so are the
    indices wherever values do not tie. Among tied values torch.topk's own order is
    unspecified, and so is which of the tied elements at the k-th place it keeps; here too.

    Split each row into W/block groups of `block` elements. The best k elements lie in at
    most k groups, and those are among the k groups with the largest maxima (any other
    group's maximum is beaten by k elements). So: group maxima, their top k, then the top k
    of those groups' k*block elements. Group g is {g, g + W/block, g + 2W/block, ...}:
    strided, so the maxima are an elementwise max of `block` contiguous slices.
    """
    M, W = scores.shape
    if W % block or W <= 4 * k * block:
        return scores.topk(k, dim=-1)
    n_groups = W // block
    groups = scores.view(M, block, n_groups)
    top = groups.amax(1).topk(k, dim=-1, sorted=False).indices  # (M, k) group ids
    inside = groups.gather(2, top[:, None, :].expand(M, block, k)).flatten(1)  # (M, block*k)
    values, position = inside.topk(k, dim=-1)  # position = member * k + slot
    return values, top.gather(1, position % k) + (position // k) * n_groups


@contextlib.contextmanager
def exact_fp32_matmul():
    """fp32 matmuls inside run in full fp32, not TF32 (10-bit mantissas on Ampere and
    later), whatever the caller enabled; the caller's setting is restored after. For the
    sub-key scores only: about 2 * N * sqrt(knowledge_num) * knowledge_dim flops, which costs
    nothing measurable next to the rest of the step."""
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def group_equal(ids, fill: int):
    """Equal ids grouped without unique() or nonzero(): fixed shapes, nothing read by the host.

    Reference: `unique, segment = ids.unique(return_inverse=True)`. Returns (segment (M,):
    each row's group, groups numbered in ascending id order; group_ids (M,): the id of
    group g at place g, `fill` after the last group; groups: their number, a 0-dim tensor).
    """
    order = ids.argsort(stable=True)
    ordered = ids[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    segment_sorted = starts.cumsum(0) - 1  # (M,) in sorted order: the group of each row
    segment = torch.empty_like(segment_sorted).scatter_(0, order, segment_sorted)
    return segment, torch.full_like(ids, fill).scatter_(0, segment_sorted, ordered), starts.sum()


def selection_window_sums(chosen, real, W: int = SELECTION_WINDOW):
    """(entropy sum, distinct-share sum, windows) over every full window of W real positions,
    a (3,) float64 tensor, or None when no sequence is W long (cached decoding, prompts).

    chosen (N,) is each token's best entry, real (B, T) which positions hold tokens. In a
    window of W positions where position t's entry was chosen c_t times, the entropy of the
    chosen entries is ln W - mean_t ln c_t and the share of distinct entries sum_t (1/c_t) / W:
    O(N * W) work, never O(knowledge_num), and nothing read back to the host. Windows with
    padding add nothing.
    """
    B, T = real.shape
    n = T // W
    if not n:
        return None
    chosen = chosen.view(B, T)[:, :n * W].reshape(B * n, W)  # (B*n, W)
    full = real[:, :n * W].reshape(B * n, W).all(-1)  # (B*n,) windows without padding
    count = (chosen[:, :, None] == chosen[:, None, :]).sum(-1).double()  # (B*n, W): c_t; float64 so one entry reads 0
    entropy = math.log(W) - count.log().mean(-1)  # (B*n,) nats
    distinct = count.reciprocal().sum(-1) / W  # (B*n,) in (0, 1]
    window = torch.stack([entropy, distinct, torch.ones_like(entropy)])  # (3, B*n)
    return (window * full).sum(-1)


class EmaStore:
    """Per selected entry, the sum and count of the query inputs that picked it first, since
    the last EMA update: what MiniMindLM.after_optimizer_step moves the entries toward.

    Fixed shapes throughout (no unique(), no nonzero()): under torch.compile one graph
    serves every micro-batch of a shape, and nothing waits for the host. `capacity` slots
    (free: id `free_id`, sums 0, count 0) and one last slot that takes what does not fit
    (reset by every update of the store). Plain tensors, not buffers (see MemoryLayer).
    """

    def __init__(self, entries: int, dim: int, capacity: int):
        self.capacity, self.free_id = capacity, entries
        self.ids = torch.full((capacity + 1,), entries, dtype=torch.long)
        self.sums = torch.zeros(capacity + 1, dim)
        self.counts = torch.zeros(capacity + 1, dtype=torch.long)

    def to(self, device) -> None:
        """Moves the store to `device`, keeping its dtypes."""
        self.ids, self.sums, self.counts = (t.to(device) for t in (self.ids, self.sums, self.counts))

    @torch.no_grad()
    def add(self, ids, sums, counts):
        """Add (entry ids (n,), query-input sums (n, dim), counts (n,)), in place.

        Each entry's sum continues in row order, so the store holds exactly the sums a single
        index_add over all rows since the last update would give. When more than `capacity`
        entries are pending, the most selected (by count) keep their slots: a memory bound,
        not a goal.
        """
        K, free = self.capacity, self.free_id
        held = self.ids[:K]
        every = torch.cat([held, ids])  # (M,) M = K + n: the store's slots, then the new rows
        segment, seg_id, _ = group_equal(every, fill=free)  # one segment per distinct id (free last)
        seg_count = torch.zeros_like(every).index_add_(0, segment, torch.cat([self.counts[:K], counts.long()]))
        # the K most selected segments stay or enter (among equal counts, topk's order decides)
        keep = torch.zeros_like(every, dtype=torch.bool).scatter_(0, seg_count.topk(K).indices, True) & (seg_count > 0)
        M = every.shape[0]
        held_segment = segment[:K]
        stays = keep[held_segment] & (held != free)  # (K,) slots whose entry is kept
        slot_of = torch.full((M + 1,), K, dtype=torch.long, device=every.device)  # K: the overflow slot
        slot_of.scatter_(0, torch.where(stays, held_segment, M), torch.arange(K, device=every.device))
        slot_of = slot_of[:M]
        entering = keep & (slot_of == K)  # kept entries without a slot yet
        freed = ~stays
        # the i-th entering entry (in id order) takes the i-th freed slot
        freed_rank = torch.where(freed, freed.cumsum(0) - 1, K)
        slot_by_rank = torch.full((K + 1,), K, dtype=torch.long, device=every.device).scatter_(
            0, freed_rank, torch.arange(K, device=every.device))
        slot_of = torch.where(entering, slot_by_rank[(entering.cumsum(0) - 1).clamp(0, K)], slot_of)
        self.sums[:K].masked_fill_(freed[:, None], 0.0)
        self.counts[:K].masked_fill_(freed, 0)
        self.ids[:K].masked_fill_(freed, free)
        self.ids.scatter_(0, torch.where(entering, slot_of, K), seg_id)
        new_slot = slot_of[segment[K:]]  # (n,)
        self.sums.index_add_(0, new_slot, sums.to(self.sums.dtype))
        self.counts.index_add_(0, new_slot, counts.long())
        self.ids[K] = free
        self.sums[K].zero_()
        self.counts[K].zero_()

    def used(self):
        """How many slots hold an entry: a 0-dim tensor, left on the device."""
        return (self.ids[:self.capacity] != self.free_id).sum()

    def held(self, used: int):
        """(entry ids (U,) ascending, query-input sums (U, dim), counts (U,)) of the `used` held entries, or None."""
        if not used:
            return None
        rows = self.ids[:self.capacity].argsort()[:used]  # free slots sort last
        return self.ids[rows], self.sums[rows], self.counts[rows]

    def take(self):
        """held() of everything since the last EMA update; empties the store. Reads one number
        from the device (how many entries)."""
        taken = self.held(int(self.used()))
        self.clear()
        return taken

    def clear(self):
        self.ids.fill_(self.free_id)
        self.sums.zero_()
        self.counts.zero_()

    def replace(self, parts) -> None:
        """Replace the store by parts of (entry ids, sums, counts), raw rows or merged ones,
        as older checkpoints and MemoryLayer.pending give them; merged in the order given."""
        self.clear()
        parts = [part for part in parts if len(part[0])]
        if parts:
            device = self.ids.device
            ids, sums, counts = (torch.cat([p[i].to(device) for p in parts]) for i in range(3))
            self.add(ids.long(), sums.float(), counts.long())


def bag_chunk_elements(device: torch.device) -> int:
    """Elements of one (rows, V) fp32 coefficient chunk in WeightedBagSum's backward: 256 MiB
    on CUDA, 64 MiB elsewhere. A plain function of the device, not a class attribute, so that
    torch.compile traces the backward without a graph break."""
    return 2**26 if device.type == "cuda" else 2**24


class SubKeyScores(torch.autograd.Function):
    """The chosen sub-key scores with their gradient: (2, N, C) `scores` (computed without a
    graph), (2, N, kd/2) query halves, (2, sqrt(N), kd/2) sub-keys, (2, N, C) chosen indices.

    Reference: `torch.bmm(halves.float(), keys.transpose(1, 2)).gather(2, indices)`, whose
    values `scores` are and whose gradients for halves and keys these are. Autograd through
    the reference keeps the whole fp32 score tensor for backward (gather keeps its input):
    8 KiB per token per layer at MiniMind2 size. Here backward scatters the (2, N, C)
    gradient into that shape for the two products, which exist only while it runs; what is
    kept is the halves in the query's own dtype and the indices as int32.
    """

    @staticmethod
    def forward(ctx, scores, halves, keys, indices):
        ctx.save_for_backward(halves, keys, indices.int())
        return scores.clone()

    @staticmethod
    def backward(ctx, grad):
        halves, keys, indices = ctx.saved_tensors
        dense = torch.zeros(*grad.shape[:2], keys.shape[1], dtype=torch.float32, device=grad.device)
        dense.scatter_(2, indices.long(), grad.float())  # (2, N, sqrt(N)), zero where not chosen
        grad_halves = torch.bmm(dense, keys.float()).to(halves.dtype) if ctx.needs_input_grad[1] else None
        grad_keys = torch.bmm(dense.transpose(1, 2), halves.float()).to(keys.dtype) if ctx.needs_input_grad[2] else None
        return None, grad_halves, grad_keys, None


class WeightedBagSum(torch.autograd.Function):
    """out[n] = sum_k weight[n, k] * table[ids[n, k]]: (N, K) ids and weights, (V, d) table -> (N, d).

    Reference: `F.embedding_bag(ids, table, mode="sum", per_sample_weights=weight)`, whose
    forward this is, with the same gradients for weight and table (ids get none). The ids
    may be any integer dtype (the bank's own, int16 for MiniMind2's vocabulary): they are
    kept for backward in that dtype and widened only where a kernel needs it.

    The forward is embedding_bag's fused kernel. Its own backward sorts all N*K ids, which
    on CPU costs 10x the forward; here the backward builds the (rows, V) matrix of summed
    weights per token id, a chunk of rows at a time (bounded memory), and uses two matmuls:
    grad_weight[n, k] = (grad @ table.T)[n, ids[n, k]] and grad_table = coeff.T @ grad.
    grad_table sums over every token of the batch, so it is accumulated in at least fp32
    (a bf16 sum of that many terms loses the small ones) and cast to the table's dtype last.
    """

    @staticmethod
    def forward(ctx, ids, weight, table):
        ctx.save_for_backward(ids, weight, table)
        wide = ids if ids.dtype in (torch.int32, torch.int64) else ids.int()  # embedding_bag's index dtypes
        return F.embedding_bag(wide, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad):
        ids, weight, table = ctx.saved_tensors
        accumulate = torch.promote_types(table.dtype, torch.float32)
        grad_weight = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        grad_table = torch.zeros_like(table, dtype=accumulate) if ctx.needs_input_grad[2] else None
        rows = max(1, bag_chunk_elements(table.device) // table.shape[0])
        for start in range(0, ids.shape[0], rows):
            chunk_ids, g = ids[start:start + rows].long(), grad[start:start + rows]  # (n, K), (n, d)
            if grad_weight is not None:
                grad_weight[start:start + rows] = (g.to(table.dtype) @ table.T).gather(1, chunk_ids)  # (n, V) -> (n, K)
            if grad_table is not None:
                coeff = torch.zeros(len(g), table.shape[0], dtype=accumulate, device=table.device)
                coeff.scatter_add_(1, chunk_ids, weight[start:start + rows].to(accumulate))
                grad_table += coeff.T @ g.to(accumulate)  # (V, d)
        return None, grad_weight, None if grad_table is None else grad_table.to(table.dtype)


# ----------------------------------------------------------------------------- 6. config validation


def _validate_fields(config: ModelConfig) -> None:
    """Each field on its own: type, range, choices; ints become floats where a float is meant."""
    for f in dataclasses.fields(config):
        setattr(config, f.name, _validated(f, getattr(config, f.name)))


def _validate_combination(config: ModelConfig) -> None:
    """The constraints between fields, each with a message naming the fields."""
    c = config
    side = math.isqrt(c.knowledge_num)
    for ok, message in (
        (c.dim % c.n_heads == 0, f"dim must be divisible by n_heads, got dim={c.dim}, n_heads={c.n_heads}"),
        ((c.dim // c.n_heads) % 2 == 0, f"dim/n_heads must be even for rotary embeddings, got {c.dim // c.n_heads}"),
        (c.n_heads % c.n_kv_heads == 0, f"n_kv_heads must divide n_heads, got n_kv_heads={c.n_kv_heads}, n_heads={c.n_heads}"),
        (side ** 2 == c.knowledge_num, f"knowledge_num must be a perfect square, got {c.knowledge_num}"),
        (c.knowledge_dim % 2 == 0, f"knowledge_dim must be even, got {c.knowledge_dim}"),
        (c.num_candidates <= side, f"num_candidates must be at most sqrt(knowledge_num)={side}, got {c.num_candidates}"),
        (c.num_experts_per_tok <= c.n_routed_experts,
         f"num_experts_per_tok must be at most n_routed_experts={c.n_routed_experts}, got {c.num_experts_per_tok}"),
    ):
        if not ok:
            raise ValueError(message)


def _field_type(f) -> tuple[type, bool]:
    """(base type, accepts None) of a config field: `int | None` -> (int, True)."""
    args = [a for a in typing.get_args(f.type) if a is not type(None)]
    return (args[0], True) if args else (f.type, False)


def _validated(f, value):
    kind, nullable = _field_type(f)
    if value is None:
        if nullable:
            return None
        raise ValueError(f"{f.name} must not be None")
    # bool is a subclass of int: refuse it where a number is meant, and numbers where a bool is.
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{f.name} must be a bool, got {value!r}")
    if kind is int and not (is_number and isinstance(value, int)):
        raise ValueError(f"{f.name} must be an int, got {value!r}")
    if kind is float:
        if not is_number or not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        value = float(value)
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{f.name} must be a string, got {value!r}")
    lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ValueError(f"{f.name} must be between {lo} and {hi}, got {value!r}")
    if choices is not None and value not in choices:
        raise ValueError(f"{f.name} must be one of {', '.join(choices)}, got {value!r}")
    return value
