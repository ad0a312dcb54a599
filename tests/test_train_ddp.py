"""Two real CPU processes (gloo DDP) through `accelerate launch --multi_gpu`."""

from __future__ import annotations

from pathlib import Path

import pytest

import helpers_train as h


def _free_port() -> int:
    import socket

    with socket.socket() as sock:  # a fixed port would collide with a test running beside this one
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    return h.make_lab(tmp_path_factory.mktemp("lab"), h.shared_data(tmp_path_factory))


def test_two_process_run_completes_and_writes_metrics_once(lab):
    run_dir = h.write_config(lab, launch={"num_processes": 2}, train={"max_steps": 12, "eval_interval": 6})
    launcher = [h.PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    rc = h.run_train(run_dir, launcher=launcher, timeout=180)
    assert rc == 0, h.tail(run_dir / "train.log")
    steps = [r["step"] for r in h.train_rows(run_dir)]
    assert steps == [2, 4, 6, 8, 10, 12]  # rank 0 alone writes: each step once
    assert [r["step"] for r in h.metrics(run_dir) if "eval/val_loss" in r] == [6, 12]
    log = (run_dir / "train.log").read_text()
    assert "processes: 2" in log
    assert log.count("training finished: 12 steps") == 1
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True)
    assert last["step"] == 12
    # each process reads its own half of the documents: an epoch is half as many batches
    batches = h_batches(run_dir)
    assert batches == -(-(len_train(lab) // 2) // 8)
    assert h.train_rows(run_dir)[-1]["epoch"] == pytest.approx(12 / batches, abs=1e-4)


def len_train(lab: Path) -> int:
    from training.data import split_documents
    from corpus.prepare import TokenCache

    caches = [p for p in (lab / "data" / "cache").iterdir() if (p / "meta.json").exists() and "pretrain" in (p / "meta.json").read_text()]
    train, _ = split_documents(TokenCache(caches[0]).num_docs, 0.05, h.TINY_TRAIN["seed"])
    return len(train)


def h_batches(run_dir: Path) -> int:
    """Batches per epoch per process, as the trainer logged it."""
    for line in (run_dir / "train.log").read_text().splitlines():
        if "batches per epoch per process" in line:
            return int(line.split(" batches per epoch")[0].split()[-1])
    raise AssertionError("no data line in the log")


# --- global memory statistics and EMA over two gloo processes ------------------------

MEM = dict(preset="memory", dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=300, max_seq_len=80,
           knowledge_num=64, knowledge_length=6, knowledge_dim=16, num_candidates=4, ema_update_freq=1, ema_decay=0.0)


def _counting(dist, counter: list) -> None:
    """Count the bytes every collective of this process receives (a reduction's result, each
    gathered part, a broadcast tensor): what the exchange costs a rank."""
    def wrap(name, size):
        real = getattr(dist, name)

        def counted(*args, **kwargs):
            counter.append(size(args[0]))
            return real(*args, **kwargs)
        setattr(dist, name, counted)

    one = lambda t: t.numel() * t.element_size()
    wrap("all_reduce", one)
    wrap("broadcast", one)
    wrap("all_gather", lambda parts: sum(one(t) for t in parts))
    wrap("all_gather_into_tensor", one)


def _memory_round(rank: int, world: int, port: int, out_dir: str) -> None:
    """One training forward on this rank's share of a fixed batch, then what the trainer does at
    an EMA log step: reduce selections, EMA, sync rows, global statistics. Saves the results
    and the bytes this rank received while the selections were exchanged."""
    import torch
    import torch.distributed as dist

    from models.model import MiniMindLM, ModelConfig
    from training.ddp import reduce_memory_window, reduce_pending, sync_bank_rows

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MiniMindLM(ModelConfig(**MEM))
    # enough rows that an all-gather would overflow the store bound, each a selection window long
    batch = torch.randint(1, 300, (32, 70), generator=torch.Generator().manual_seed(1))
    mine = batch.chunk(world)[rank]
    model.train()
    model(mine)
    layers = [layer for _, layer in model.memory_layers()]
    store_bytes = sum(t.numel() * t.element_size() for layer in layers
                      for t in (layer.ema.ids, layer.ema.sums, layer.ema.counts)) // len(layers)
    held = [int(layer.ema.used()) for layer in layers]
    received: list = []
    if world > 1:
        _counting(dist, received)
    rows = reduce_pending(model)
    exchange = sum(received)
    model.after_optimizer_step(1)
    sync_bank_rows(model, rows)
    reduce_memory_window(model)
    stats = model.memory_stats(reset=True)
    torch.save({"bank": model.memory_bank.clone(), "stats": stats, "exchange": exchange,
                "store_bytes": store_bytes, "held": held, "layers": len(layers)},
               f"{out_dir}/rank{rank}_of{world}.pt")
    if world > 1:
        dist.destroy_process_group()


def test_memory_statistics_and_ema_are_global(tmp_path):
    import socket

    import torch
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_memory_round, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    _memory_round(0, 1, port, str(tmp_path))
    one = torch.load(tmp_path / "rank0_of1.pt", weights_only=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}_of2.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0["bank"], r1["bank"])  # every rank ends with the same bank
    assert torch.equal(r0["bank"], one["bank"])  # moved by the whole batch's selections
    initial = None
    torch.manual_seed(0)
    from models.model import MiniMindLM, ModelConfig

    initial = MiniMindLM(ModelConfig(**MEM)).memory_bank
    assert not torch.equal(initial, one["bank"])  # the EMA did change entries: the comparison means something
    assert r0["stats"].keys() == one["stats"].keys() and "selection_entropy" in one["stats"]
    for key, value in one["stats"].items():  # global counts: the statistics of one process on the whole batch
        assert r0["stats"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        assert r1["stats"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    # The exchange is a reduction: each rank receives at most one store's size per memory layer,
    # where gathering every rank's store would bring W stores' worth of held rows.
    for r in (r0, r1):
        assert 0 < r["exchange"] <= r["layers"] * r["store_bytes"], (r["exchange"], r["store_bytes"])
    row_bytes = r0["store_bytes"] // (MEM["knowledge_num"] + 1)
    gathered = 2 * sum(max(a, b) for a, b in zip(r0["held"], r1["held"])) * row_bytes
    assert gathered > r0["layers"] * r0["store_bytes"]  # this batch would overflow the bound with an all-gather


def test_two_node_run_on_localhost_trains_and_finishes(lab):
    """Two accelerate launchers, machine_rank 0 and 1, one process each (gloo), rendezvous
    on 127.0.0.1: the commands lifecycle.running.launch generates for a 2-machine config."""
    import os
    import socket
    import subprocess

    import yaml

    from lifecycle.running.launch import accelerate_config, run_env, train_command
    from minimind.config import load_config
    from minimind.lab import Lab

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = h.write_config(lab, "0.9.0", train={"max_steps": 4, "eval_interval": 0, "save_interval": 4},
                             launch={"num_processes": 2, "num_machines": 2, "main_process_ip": "127.0.0.1",
                                     "main_process_port": port})
    cfg = load_config(run_dir / "config.yaml")
    (run_dir / "accelerate_config.yaml").write_text(yaml.safe_dump(accelerate_config(cfg)))
    env = {**h.env(), **run_env(Lab(lab), cfg)}  # the run script's environment, PYTHONPATH kept
    procs = []
    for rank in (0, 1):
        argv = train_command(Lab(lab), cfg, run_dir, machine_rank=rank)
        assert ("--machine_rank", str(rank)) == tuple(argv[argv.index("--machine_rank"):][:2])
        log = open(run_dir / f"node{rank}.log", "w")
        procs.append(subprocess.Popen(argv, cwd=h.REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
    assert codes == [0, 0], h.tail(run_dir / "node0.log") + "\n---\n" + h.tail(run_dir / "node1.log")
    assert [r["step"] for r in h.train_rows(run_dir)] == [2, 4]
    log = (run_dir / "node0.log").read_text()
    assert "processes: 2" in log and log.count("training finished: 4 steps") == 1
    assert (run_dir / "checkpoints" / "rank1.step4.pth").exists()  # machine 1's rank saved its part
