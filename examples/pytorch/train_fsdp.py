#!/usr/bin/env python3
"""A PyTorch FSDP training script that runs under sup (or torchrun) unchanged.

What it shows (see README.md next to this file):

* the process group comes from the torchrun-compatible environment sup sets
  (``init_process_group`` with the default ``env://``);
* progress goes to sup's agent through ``sup_progress`` (examples/trainer/);
* checkpoints are sharded with torch.distributed.checkpoint (DCP) into
  ``$SUP_CHECKPOINT_DIR/step-<N>/``; DCP writes ``.metadata`` last, which is what makes a
  checkpoint complete for sup (``checkpoint_layout = "dcp"``);
* a restart resumes from ``$SUP_RESUME_FROM`` with DCP's resharding load, so a
  checkpoint written by N ranks loads on M ranks;
* the data of step s is indexed by global sample id, so the samples a job sees do not
  depend on the world size it happens to run at;
* after a loss-spike rollback, ``$SUP_SEED`` changes the data order and ``$SUP_LR_SCALE``
  the learning rate (applied after the checkpoint's optimizer state is loaded).

Run in sup's CI on CPU (gloo) with a tiny model, under real supd and agents:
tests/e2e/tests/pytorch_dcp.rs. Uses FSDP2 (``fully_shard``) where PyTorch has it (2.6
and later) and FSDP1 otherwise; needs PyTorch >= 2.2 (``dcp.save`` / ``dcp.load`` with
``checkpoint_id`` and ``torch.distributed.checkpoint.state_dict``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict,
                                                     set_state_dict)
from torch.distributed.checkpoint.stateful import Stateful
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

try:  # FSDP2, PyTorch >= 2.6; older versions use FSDP1 (FullyShardedDataParallel)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
except ImportError:  # pragma: no cover
    fully_shard = None

# sup_progress is a single standard-library file: copy it next to your script or put
# examples/trainer on PYTHONPATH. Without it the script runs, just without reports.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer"))
try:
    from sup_progress import Reporter
except ImportError:  # pragma: no cover
    class Reporter:  # type: ignore[no-redef]
        @classmethod
        def from_env(cls):
            return cls()

        def report(self, **_kw):
            return False


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--global-batch", type=int, default=64, help="sequences per step, all ranks together")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float64"), default="float32",
                   help="parameter dtype; float64 makes runs at different world sizes agree to "
                        "~1e-12 (float32's reduction-order differences, amplified by Adam, do not)")
    p.add_argument("--checkpoint-dir", default="checkpoints", help="used when SUP_CHECKPOINT_DIR is unset")
    p.add_argument("--fsdp", type=int, choices=(1, 2), default=2 if fully_shard else 1,
                   help="FSDP version (default 2 where this PyTorch has it)")
    # What sup's CI checks (tests/e2e/tests/pytorch_dcp.rs). Off by default.
    p.add_argument("--record-dir",
                   help="rank 0 appends what it did to DIR/record.jsonl (one JSON object a line: "
                        "start, resumed, step, saved, final; with a digest of the full model and "
                        "optimizer state at each save and load, and each step's samples and loss) "
                        "and writes the final parameters to DIR/final.bin (float64 little-endian, by name)")
    p.add_argument("--test-control",
                   help="fault injection and pacing for tests: every rank reads FILE before each "
                        "step and each save. 'hold N': wait before step N+1 while FILE says so. "
                        "'pause-in-save N R': rank R stops inside dcp.save of step N, after writing "
                        "its own shard and before the coordinator can write .metadata, writes "
                        "FILE.paused and waits there to be killed (a torn save)")
    p.add_argument("--spike-at", type=int,
                   help="fault injection: from this step on the reported loss is 10 times the "
                        "real one (a loss spike), unless SUP_SEED is set (after a rollback)")
    return p.parse_args()


class TinyLM(nn.Module):
    """A small decoder-only transformer; each block is one FSDP unit."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(seq_len, dim))
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(seq_len), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.size(1)
        h = self.embed(tokens) + self.pos[:n]
        for block in self.blocks:
            h = block(h, src_mask=self.causal[:n, :n], is_causal=True)
        return self.head(self.norm(h))


def rank_batch(step: int, args: argparse.Namespace, seed: int, rank: int, world: int):
    """This rank's sequences of the step, with their global sample ids: step*B + j for
    the j with j % world == rank.

    Each sequence is an arithmetic progression mod vocab (learnable, unlike noise) drawn
    from a generator seeded by its global id, so the job's data stream is the same
    whatever the world size and however often it restarted (a new seed after a
    loss-spike rollback gives a new stream).
    """
    ids, rows = [], []
    for j in range(rank, args.global_batch, world):
        sample = step * args.global_batch + j
        g = torch.Generator().manual_seed(seed * 1_000_003 + sample)
        start, stride = torch.randint(0, args.vocab, (2,), generator=g).tolist()
        ids.append(sample)
        rows.append((start + (stride | 1) * torch.arange(args.seq_len + 1)) % args.vocab)
    return ids, torch.stack(rows)


class AppState(Stateful):
    """What a checkpoint holds. DCP calls state_dict() on save and load_state_dict() after
    a load; get/set_state_dict give sharded (per-rank) model and optimizer state, which
    is what lets DCP reshard on load."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.step = 0
        self.loss = float("nan")  # the loss of the last step taken

    def state_dict(self):
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        # Tensors, not Python numbers: tensors are what DCP saves and loads most reliably.
        return {"model": model_sd, "optim": optim_sd, "step": torch.tensor(self.step),
                "loss": torch.tensor(self.loss, dtype=torch.float64)}

    def load_state_dict(self, state_dict) -> None:
        set_state_dict(self.model, self.optimizer,
                       model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])
        self.step = int(state_dict["step"])
        self.loss = float(state_dict["loss"])


def shard_model(model: TinyLM, version: int, device: torch.device, world: int) -> nn.Module:
    """Each transformer block is one FSDP unit; the rest belongs to the root unit."""
    if version == 2:
        model.to(device)
        mesh = init_device_mesh(device.type, (world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    return FSDP(model, auto_wrap_policy=ModuleWrapPolicy({nn.TransformerEncoderLayer}),
                device_id=device if device.type == "cuda" else None, use_orig_params=True)


def barrier(device: torch.device) -> None:
    # With NCCL, name the rank's GPU: otherwise the barrier guesses the device.
    dist.barrier(device_ids=[device.index] if device.type == "cuda" else None)


class Record:
    """--record-dir: what rank 0 did, for tests to compare runs. Every rank calls the
    collective parts (digests); only rank 0 writes."""

    def __init__(self, directory: str | None, rank: int, **common) -> None:
        self.on = directory is not None
        self.dir = Path(directory) if directory and rank == 0 else None
        self.common = common
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if self.dir is None:
            return
        line = json.dumps({"event": event, **self.common, **fields}) + "\n"
        # One write on an O_APPEND file: lines of successive generations never interleave.
        fd = os.open(self.dir / "record.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def full_state(self, state: AppState):
        """The whole (unsharded) model and optimizer state on rank 0; a collective."""
        if not self.on:
            return {}, {}
        return get_state_dict(state.model, state.optimizer,
                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def digest(self, state: AppState) -> str | None:
        """sha256 of every value of the full model and optimizer state, by name: the same
        for the same state whatever the world size or sharding. A collective."""
        model_sd, optim_sd = self.full_state(state)
        if self.dir is None:
            return None
        h = hashlib.sha256()

        def walk(prefix: str, value) -> None:
            if isinstance(value, dict):
                for key in sorted(value, key=str):
                    walk(f"{prefix}/{key}", value[key])
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    walk(f"{prefix}/{i}", item)
            elif isinstance(value, torch.Tensor):
                t = value.detach().cpu().contiguous()
                h.update(f"{prefix}:{t.dtype}:{list(t.shape)}:".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(f"{prefix}={value!r};".encode())

        walk("model", model_sd)
        walk("optim", optim_sd)
        return h.hexdigest()

    def step(self, step: int, ids: list[int], rows: torch.Tensor, **fields) -> None:
        """The step's global samples, as every rank trained on them; a collective."""
        if not self.on:
            return
        mine = {i: hashlib.sha256(r.numpy().tobytes()).hexdigest() for i, r in zip(ids, rows)}
        everyone: list = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        if self.dir is None:
            return
        samples = {i: h for part in everyone for i, h in part.items()}
        order = sorted(samples)
        data = hashlib.sha256("".join(samples[i] for i in order).encode()).hexdigest()[:16]
        self.write("step", step=step, samples=[order[0], order[-1], len(order)], data=data, **fields)

    def final(self, state: AppState) -> None:
        digest = self.digest(state)
        model_sd, _ = self.full_state(state)
        if self.dir is None:
            return
        tmp = self.dir / "final.bin.tmp"
        with open(tmp, "wb") as f:
            for name in sorted(model_sd):
                f.write(model_sd[name].detach().cpu().double().contiguous().numpy().tobytes())
        os.replace(tmp, self.dir / "final.bin")
        self.write("final", step=state.step, digest=digest, params=sorted(model_sd))


class PausingWriter(FileSystemWriter):
    """--test-control 'pause-in-save': DCP's file writer that, once this rank's shard is written,
    stops before the write results are gathered, so the coordinator can never write
    .metadata: the save stays torn until the rank is killed."""

    def __init__(self, path: Path, marker: Path, info: dict) -> None:
        super().__init__(path)
        self.marker = marker
        self.info = info

    def write_data(self, plan, planner):
        written = super().write_data(plan, planner)
        written.wait()
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_text(json.dumps({**self.info, "pid": os.getpid()}) + "\n")
        os.replace(tmp, self.marker)
        print(f"pausing inside dcp.save of step {self.info['step']} after writing this rank's shard "
              f"(fault injection); waiting to be killed", flush=True)
        while True:
            time.sleep(60)


class Control:
    """--test-control FILE: one command, read before each step and each save."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def command(self) -> list[str]:
        if self.path is None:
            return []
        try:
            return self.path.read_text().split()
        except FileNotFoundError:
            return []

    def hold(self, step: int) -> None:
        """'hold N': wait here, after N steps, until FILE says something else."""
        said = False
        while self.command() == ["hold", str(step)]:
            if not said:
                print(f"holding after step {step} (--test-control)", flush=True)
                said = True
            time.sleep(0.1)

    def pauses_in_save(self, step: int, rank: int) -> bool:
        return self.command() == ["pause-in-save", str(step), str(rank)]


def save_checkpoint(root: Path, state: AppState, rank: int, device: torch.device,
                    control: Control, record: Record, generation: int) -> None:
    path = root / f"step-{state.step}"
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        # A step saved again (after a resume from an older one, or a rollback) must not
        # look complete, by a stale .metadata, while its new shards are being written.
        # (sup sets such directories aside before a resumed generation starts; this is
        # for runs without it, e.g. under plain torchrun.)
        stale = path / ".metadata"
        if stale.exists():
            stale.unlink()
            print(f"removed a stale .metadata from {path}", flush=True)
            record.write("stale_metadata_removed", step=state.step)
    barrier(device)
    # Every rank writes its own __<rank>_<n>.distcp files; after a gather, the
    # coordinator (rank 0) writes .metadata (tmp + rename): complete only then.
    if control.pauses_in_save(state.step, rank):
        marker = control.path.with_name(control.path.name + ".paused")
        info = {"step": state.step, "rank": rank, "generation": generation}
        dcp.save({"app": state}, storage_writer=PausingWriter(path, marker, info))
    else:
        dcp.save({"app": state}, checkpoint_id=str(path))


def main() -> int:
    args = parse_args()

    # The torchrun-compatible environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
    # MASTER_PORT are read by init_process_group's default env:// rendezvous.
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        # sup sets CUDA_VISIBLE_DEVICES per rank, so a rank usually sees one device
        # (index 0); under plain torchrun it sees them all (index LOCAL_RANK).
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    # NCCL's default collective timeout is 10 min; sup detects hangs much sooner from
    # progress reports, so this is only the last resort.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))
    if args.global_batch < world:
        raise SystemExit(f"--global-batch {args.global_batch} is smaller than WORLD_SIZE {world}")

    generation = int(os.environ.get("SUP_GENERATION", 0))
    ckpt_root = Path(os.environ.get("SUP_CHECKPOINT_DIR") or args.checkpoint_dir)
    resume_from = os.environ.get("SUP_RESUME_FROM")
    # Loss-spike rollback: sup restarts from an earlier checkpoint with SUP_SEED (the
    # rollback count), for a new data order past the spike, and SUP_LR_SCALE.
    sup_seed = int(os.environ.get("SUP_SEED") or 0)
    seed = args.seed + 10_007 * sup_seed
    lr = args.lr * float(os.environ.get("SUP_LR_SCALE") or 1.0)
    progress = Reporter.from_env()
    record = Record(args.record_dir, rank, generation=generation, world=world)
    control = Control(args.test_control)
    record.write("start", resume_from=resume_from, resume_step=os.environ.get("SUP_RESUME_STEP"),
                 sup_seed=os.environ.get("SUP_SEED"), sup_lr_scale=os.environ.get("SUP_LR_SCALE"),
                 seed=seed, lr=lr)

    torch.manual_seed(args.seed)  # same initial weights on every rank before sharding
    model = TinyLM(args.vocab, args.dim, args.layers, args.heads, args.seq_len).to(getattr(torch, args.dtype))
    model = shard_model(model, args.fsdp, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    state = AppState(model, optimizer)

    if resume_from:
        progress.report(step=int(os.environ.get("SUP_RESUME_STEP") or 0), phase="checkpoint_load")
        # DCP's resharding load: each rank asks for the slices of its own (new) shards
        # and reads them from whichever old files hold them, so any world size works.
        dcp.load({"app": state}, checkpoint_id=resume_from)
        loaded = record.digest(state)
        # The optimizer state brought the saved learning rate back: apply this run's
        # (SUP_LR_SCALE after a rollback).
        for group in optimizer.param_groups:
            group["lr"] = lr
        if rank == 0:
            print(f"resumed from {resume_from} at step {state.step} (generation {generation})", flush=True)
        record.write("resumed", step=state.step, loss=state.loss, digest=loaded, path=resume_from,
                     lr=optimizer.param_groups[0]["lr"])

    global_tokens = args.global_batch * args.seq_len
    model.train()
    while state.step < args.steps:
        control.hold(state.step)
        t0 = time.monotonic()
        ids, rows = rank_batch(state.step, args, seed, rank, world)
        data = rows.to(device)
        inputs, targets = data[:, :-1], data[:, 1:]
        logits = model(inputs)
        # At least float32 for the loss (bfloat16 is too coarse for it).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        loss_sum = F.cross_entropy(logits.reshape(-1, args.vocab), targets.reshape(-1), reduction="sum")
        # FSDP averages gradients over ranks; ranks may hold unequal shares of the
        # batch, so scale to get exactly the gradient of the global mean.
        (loss_sum * world / global_tokens).backward()
        if args.fsdp == 2:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        else:
            model.clip_grad_norm_(1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        reported = loss_sum.detach()
        dist.all_reduce(reported)  # the global mean loss, for the log and progress only
        state.loss = loss = reported.item() / global_tokens
        if args.spike_at is not None and state.step + 1 >= args.spike_at and not sup_seed:
            loss *= 10.0  # fault injection: what a diverging run reports
        state.step += 1
        tokens = state.step * global_tokens  # the job's total, the same on every rank
        dt = time.monotonic() - t0
        if rank == 0:
            print(f"step {state.step}/{args.steps} loss {loss:.4f} tokens {tokens}", flush=True)
        record.step(state.step, ids, rows, loss=state.loss, reported=loss)
        progress.report(step=state.step, tokens=tokens, loss=loss, step_time_s=dt, phase="train")

        if args.checkpoint_every and state.step % args.checkpoint_every == 0:
            progress.report(step=state.step, tokens=tokens, loss=loss, step_time_s=dt, phase="checkpoint_save")
            digest = record.digest(state)
            save_checkpoint(ckpt_root, state, rank, device, control, record, generation)
            record.write("saved", step=state.step, loss=state.loss, digest=digest)

    record.final(state)
    barrier(device)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
