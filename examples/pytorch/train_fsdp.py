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
  depend on the world size it happens to run at.

Not run in sup's CI (no torch there). Uses FSDP2 (``fully_shard``) where PyTorch has it
(2.6 and later) and FSDP1 otherwise; needs PyTorch >= 2.2 (``dcp.save`` / ``dcp.load``
with ``checkpoint_id`` and ``torch.distributed.checkpoint.state_dict``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
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
    p.add_argument("--checkpoint-dir", default="checkpoints", help="used when SUP_CHECKPOINT_DIR is unset")
    p.add_argument("--fsdp", type=int, choices=(1, 2), default=2 if fully_shard else 1,
                   help="FSDP version (default 2 where this PyTorch has it)")
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


def rank_batch(step: int, args: argparse.Namespace, rank: int, world: int, device: torch.device):
    """This rank's sequences of the step: global sample ids step*B + j with j % world == rank.

    Each sequence is an arithmetic progression mod vocab (learnable, unlike noise) drawn
    from a generator seeded by its global id, so the job's data stream is the same
    whatever the world size and however often it restarted.
    """
    rows = []
    for j in range(rank, args.global_batch, world):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step * args.global_batch + j)
        start, stride = torch.randint(0, args.vocab, (2,), generator=g).tolist()
        rows.append((start + (stride | 1) * torch.arange(args.seq_len + 1)) % args.vocab)
    data = torch.stack(rows).to(device)
    return data[:, :-1], data[:, 1:]


class AppState(Stateful):
    """What a checkpoint holds. DCP calls state_dict() on save and load_state_dict() after
    a load; get/set_state_dict give sharded (per-rank) model and optimizer state, which
    is what lets DCP reshard on load."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.step = 0

    def state_dict(self):
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        # A tensor, not an int: tensors are what DCP saves and loads most reliably.
        return {"model": model_sd, "optim": optim_sd, "step": torch.tensor(self.step)}

    def load_state_dict(self, state_dict) -> None:
        set_state_dict(self.model, self.optimizer,
                       model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"])
        self.step = int(state_dict["step"])


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


def save_checkpoint(root: Path, state: AppState, rank: int, device: torch.device) -> None:
    path = root / f"step-{state.step}"
    if rank == 0:
        path.mkdir(parents=True, exist_ok=True)
        # A rollback may save a step again: the directory must not look complete
        # (a stale .metadata) while the new shards are being written.
        (path / ".metadata").unlink(missing_ok=True)
    barrier(device)
    # Every rank writes its own __<rank>_<n>.distcp files; after a gather, the
    # coordinator (rank 0) writes .metadata (tmp + rename): complete only then.
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
    # Loss-spike rollback: sup restarts from an earlier checkpoint with a new seed and a
    # learning-rate scale.
    seed = int(os.environ.get("SUP_SEED") or 0) or args.seed
    lr = args.lr * float(os.environ.get("SUP_LR_SCALE") or 1.0)
    progress = Reporter.from_env()

    torch.manual_seed(seed)  # same initial weights on every rank before sharding
    model = TinyLM(args.vocab, args.dim, args.layers, args.heads, args.seq_len)
    model = shard_model(model, args.fsdp, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    state = AppState(model, optimizer)

    if resume_from:
        progress.report(step=int(os.environ.get("SUP_RESUME_STEP") or 0), phase="checkpoint_load")
        # DCP's resharding load: each rank asks for the slices of its own (new) shards
        # and reads them from whichever old files hold them, so any world size works.
        dcp.load({"app": state}, checkpoint_id=resume_from)
        if rank == 0:
            print(f"resumed from {resume_from} at step {state.step} (generation {generation})", flush=True)

    global_tokens = args.global_batch * args.seq_len
    model.train()
    while state.step < args.steps:
        t0 = time.monotonic()
        inputs, targets = rank_batch(state.step, args, rank, world, device)
        logits = model(inputs)
        loss_sum = F.cross_entropy(logits.reshape(-1, args.vocab).float(), targets.reshape(-1), reduction="sum")
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
        loss = reported.item() / global_tokens
        state.step += 1
        tokens = state.step * global_tokens  # the job's total, the same on every rank
        dt = time.monotonic() - t0
        if rank == 0:
            print(f"step {state.step}/{args.steps} loss {loss:.4f} tokens {tokens}", flush=True)
        progress.report(step=state.step, tokens=tokens, loss=loss, step_time_s=dt, phase="train")

        if args.checkpoint_every and state.step % args.checkpoint_every == 0:
            progress.report(step=state.step, tokens=tokens, loss=loss, step_time_s=dt, phase="checkpoint_save")
            save_checkpoint(ckpt_root, state, rank, device)

    barrier(device)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
