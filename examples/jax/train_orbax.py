#!/usr/bin/env python3
"""A multi-process JAX training script with Orbax checkpoints that runs under sup.

What it shows (see README.md next to this file):

* one JAX process per rank, joined with ``jax.distributed.initialize`` from the
  torchrun-compatible environment sup sets (``MASTER_ADDR:MASTER_PORT`` is the
  coordinator, ``RANK`` the process id, ``WORLD_SIZE`` the number of processes); on CPU
  each process gets ``--devices-per-process`` devices (``XLA_FLAGS``) and gloo
  collectives, on GPUs each rank drives the GPU sup gave it;
* the train state (an MLP and its momentum) is sharded over a mesh of every device of
  every process, so a job that shrank to fewer nodes has fewer devices;
* checkpoints are saved with Orbax's ``CheckpointManager`` into
  ``$SUP_CHECKPOINT_DIR/<step>/`` (``checkpoint_layout = "orbax"``): Orbax writes into
  ``<step>.orbax-checkpoint-tmp-<n>/`` and renames it when every process is done, or, with
  ``--atomicity commit_file`` (what Orbax does on object stores), writes ``<step>/`` in
  place and ``commit_success.txt`` last;
* a restart restores ``$SUP_RESUME_FROM`` onto the current mesh: Orbax reads each
  device's slice of the saved arrays, whatever device count wrote them;
* the batch of step s is a function of s (and ``$SUP_SEED``) only, so the data a job
  sees does not depend on how many devices it runs on or how often it restarted;
* progress goes to sup's agent through ``sup_progress`` (examples/trainer/).

Run in sup's CI on CPU under real supd and agents: tests/e2e/tests/jax_orbax.rs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64,
                   help="hidden width; a multiple of every device count the job may run on")
    p.add_argument("--batch", type=int, default=64,
                   help="global batch; a multiple of every device count the job may run on")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--step-time", type=float, default=0.0,
                   help="seconds to sleep per step (pacing, for demos and tests)")
    p.add_argument("--platform", default="cpu", help="JAX platform (cpu, gpu, ...)")
    p.add_argument("--devices-per-process", type=int, default=2,
                   help="on CPU: devices each process gets "
                        "(XLA_FLAGS=--xla_force_host_platform_device_count), unless XLA_FLAGS "
                        "already sets it")
    p.add_argument("--atomicity", choices=("auto", "rename", "commit_file"), default="auto",
                   help="Orbax's save atomicity: auto (rename on a POSIX file system), rename "
                        "(<step>.orbax-checkpoint-tmp-<n> renamed to <step>), commit_file "
                        "(<step> written in place, commit_success.txt last)")
    p.add_argument("--sync-save", action="store_true",
                   help="save synchronously (Orbax's default is asynchronous)")
    p.add_argument("--checkpoint-dir", default="checkpoints",
                   help="used when SUP_CHECKPOINT_DIR is unset")
    # What sup's CI checks (tests/e2e/tests/jax_orbax.rs). Off by default.
    p.add_argument("--record-dir",
                   help="rank 0 appends what it did to DIR/record.jsonl (one JSON object a line: "
                        "start, resumed, step, saved, final), with a sha256 of the whole train "
                        "state at each save and restore")
    p.add_argument("--pause-in-save-file",
                   help="fault injection: when FILE holds STEP, rank 0 (Orbax's primary host, "
                        "which commits) stops inside the save of step STEP once every process "
                        "has written its data and right before Orbax commits it (the rename of "
                        "the tmp directory, or commit_success.txt), writes FILE.paused (JSON "
                        "with its pid and the directory) and waits there to be killed; once: "
                        "not when FILE.paused exists")
    return p.parse_args()


args = parse_args()

# Before JAX is imported: the device count of a CPU process is fixed at start.
if args.platform == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices_per_process}").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

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


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


class Record:
    """--record-dir: what rank 0 did, for tests to check. Only rank 0 writes."""

    def __init__(self, directory: str | None, rank: int, **common) -> None:
        self.dir = Path(directory) if directory and rank == 0 else None
        self.common = common
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        if self.dir is None:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **self.common, **fields}) + "\n"
        # One write on an O_APPEND file: lines of successive generations never interleave.
        fd = os.open(self.dir / "record.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def digest(state: dict) -> str:
    """sha256 of every array of the train state, gathered whole, by name: the same for
    the same values whatever the mesh. Every process must call it (a collective)."""
    h = hashlib.sha256()
    for name in sorted(state):
        whole = np.asarray(multihost_utils.process_allgather(state[name], tiled=True))
        h.update(f"{name}:{whole.dtype}:{list(whole.shape)}:".encode())
        h.update(whole.tobytes())
    return h.hexdigest()


def install_pause(file: str | None, rank: int) -> None:
    """--pause-in-save-file: wraps Orbax's commit of a step (both atomicity classes) on
    rank 0, the process that commits."""
    if not file or rank != 0:
        return
    atomicity = ocp.path.atomicity
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        original = cls.finalize

        async def finalize(self, _original=original):
            final = Path(self.get_final())
            try:
                wanted = Path(file).read_text().split()
            except FileNotFoundError:
                wanted = []
            marker = Path(file + ".paused")
            if wanted == [final.name] and not marker.exists():  # once: not in later generations
                tmp = Path(file + ".paused.tmp")
                tmp.write_text(json.dumps({"pid": os.getpid(), "step": int(final.name),
                                           "writing": str(self.get()), "final": str(final)}) + "\n")
                os.replace(tmp, marker)
                print(f"pausing inside the Orbax save of step {final.name} before its commit "
                      f"(writing {self.get()}; fault injection): waiting to be killed", flush=True)
                while True:  # the whole save stays uncommitted until this process dies
                    time.sleep(60)
            return await _original(self)

        cls.finalize = finalize


def state_shapes() -> dict:
    """(shape, dtype) of each array of the train state: the MLP's parameters, their
    momentum (m_*) and the step."""
    shapes = {"w1": (args.features, args.hidden), "b1": (args.hidden,), "w2": (args.hidden,)}
    out = {k: (s, jnp.float32) for k, s in shapes.items()}
    out.update({f"m_{k}": v for k, v in list(out.items())})
    out["step"] = ((), jnp.int32)
    return out


def main() -> int:
    rank = env_int("RANK", 0)
    world = env_int("WORLD_SIZE", 1)
    generation = env_int("SUP_GENERATION", 0)
    resume_from = os.environ.get("SUP_RESUME_FROM") or None
    ckpt_root = Path(os.environ.get("SUP_CHECKPOINT_DIR") or args.checkpoint_dir).resolve()

    jax.config.update("jax_platforms", args.platform)
    if args.platform == "cpu" and world > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if world > 1:
        addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = os.environ.get("MASTER_PORT", "29500")
        host = f"[{addr}]" if ":" in addr else addr
        jax.distributed.initialize(coordinator_address=f"{host}:{port}", num_processes=world,
                                   process_id=rank)
        # jax.distributed catches SIGTERM (its preemption notifier) and the process runs on
        # until sup's stop grace ends in SIGKILL. sup stops a generation with SIGTERM when
        # another rank failed: end at once, the default. (A job that saves on preemption
        # instead, with multihost_utils.reached_preemption_sync_point, needs a jobs.stop_grace
        # long enough for that save.)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    devices = jax.devices()
    n = len(devices)
    for what, size in (("--hidden", args.hidden), ("--batch", args.batch)):
        if size % n:
            print(f"{what} {size} is not a multiple of the {n} devices", file=sys.stderr)
            return 2
    mesh = Mesh(np.array(devices), ("d",))
    # The MLP's hidden dimension is split over every device (tensor-parallel), and so is
    # the batch (data-parallel): each device holds 1/n of every array.
    shardings = {
        "w1": NamedSharding(mesh, P(None, "d")),
        "b1": NamedSharding(mesh, P("d")),
        "w2": NamedSharding(mesh, P("d")),
    }
    shardings.update({f"m_{k}": v for k, v in list(shardings.items())})
    shardings["step"] = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("d"))

    # SUP_SEED changes the data after a loss-spike rollback; SUP_LR_SCALE the lr.
    sup_seed = env_int("SUP_SEED", 0)
    seed = args.seed + 10_007 * sup_seed
    lr = args.lr * float(os.environ.get("SUP_LR_SCALE") or 1.0)
    progress = Reporter.from_env()
    record = Record(args.record_dir, rank, generation=generation, processes=world, devices=n)
    record.write("start", resume_from=resume_from, resume_step=os.environ.get("SUP_RESUME_STEP"),
                 seed=seed, lr=lr, xla_flags=os.environ.get("XLA_FLAGS"))
    if rank == 0:
        print(f"generation {generation}: {world} process(es), {n} devices "
              f"({jax.local_device_count()} here), mesh {dict(mesh.shape)}", flush=True)

    def make(name: str, value: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(value.shape, shardings[name], lambda idx: value[idx])

    def initial_state() -> dict:
        rng = np.random.default_rng(args.seed)
        host = {
            "w1": rng.normal(0, 1 / np.sqrt(args.features), (args.features, args.hidden)).astype(np.float32),
            "b1": np.zeros(args.hidden, np.float32),
            "w2": rng.normal(0, 1 / np.sqrt(args.hidden), (args.hidden,)).astype(np.float32),
        }
        host.update({f"m_{k}": np.zeros_like(v) for k, v in list(host.items())})
        host["step"] = np.array(0, np.int32)
        return {k: make(k, v) for k, v in host.items()}

    teacher = np.random.default_rng(12345).normal(size=args.features).astype(np.float32)

    def batch(step: int) -> tuple[jax.Array, jax.Array]:
        """The global batch of `step`, the same on every process; each device gets its rows."""
        rng = np.random.default_rng([seed, step])
        x = rng.normal(size=(args.batch, args.features)).astype(np.float32)
        y = np.sin(x @ teacher).astype(np.float32)
        return (jax.make_array_from_callback(x.shape, batch_sharding, lambda idx: x[idx]),
                jax.make_array_from_callback(y.shape, batch_sharding, lambda idx: y[idx]))

    def loss_fn(params, x, y):
        h = jnp.tanh(x @ params["w1"] + params["b1"])
        return jnp.mean((h @ params["w2"] - y) ** 2)

    @jax.jit
    def train_step(state, x, y):
        params = {k: state[k] for k in ("w1", "b1", "w2")}
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        new = dict(state)
        for k, g in grads.items():
            m = args.momentum * state[f"m_{k}"] + g
            new[f"m_{k}"] = m
            new[k] = state[k] - lr * m
        new["step"] = state["step"] + 1
        return new, loss

    mode = {"auto": ocp.options.AtomicityMode.AUTO, "rename": ocp.options.AtomicityMode.ATOMIC_RENAME,
            "commit_file": ocp.options.AtomicityMode.COMMIT_FILE}[args.atomicity]
    install_pause(args.pause_in_save_file, rank)
    manager = ocp.CheckpointManager(
        ckpt_root,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None,
            enable_async_checkpointing=not args.sync_save,
            atomicity_options=ocp.options.AtomicityOptions(mode=mode),
        ),
    )

    if resume_from:
        resume_step = env_int("SUP_RESUME_STEP", -1)
        progress.report(step=max(resume_step, 0), phase="checkpoint_load")
        # Restore exactly the directory sup named, onto this run's mesh: each device reads
        # its own slice, whatever mesh wrote the checkpoint.
        abstract = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
                    for k, (shape, dtype) in state_shapes().items()}
        restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
            Path(resume_from),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                    meta=ocp.args.JsonRestore()),
        )
        state = dict(restored["state"])
        meta = restored["meta"]
        step = int(np.asarray(state["step"].addressable_data(0)))  # replicated on every device
        if resume_step >= 0 and step != resume_step:
            print(f"{resume_from} holds step {step}, SUP_RESUME_STEP says {resume_step}", file=sys.stderr)
            return 3
        loaded = digest(state)
        if rank == 0:
            print(f"resumed from {resume_from} at step {step} on {n} devices "
                  f"(saved on {meta.get('devices')}) (generation {generation})", flush=True)
        record.write("resumed", step=step, digest=loaded, path=resume_from,
                     saved_devices=meta.get("devices"), saved_generation=meta.get("generation"))
    else:
        state = initial_state()
        step = 0

    while step < args.steps:
        t0 = time.monotonic()
        x, y = batch(step)
        state, loss = train_step(state, x, y)
        loss = float(loss)
        step += 1
        if args.step_time:
            time.sleep(args.step_time)
        dt = time.monotonic() - t0
        tokens = step * args.batch
        if rank == 0:
            print(f"step {step}/{args.steps} loss {loss:.6f}", flush=True)
        record.write("step", step=step, loss=loss)
        progress.report(step=step, tokens=tokens, loss=loss, step_time_s=dt, phase="train")

        if args.checkpoint_every and step % args.checkpoint_every == 0:
            progress.report(step=step, tokens=tokens, loss=loss, step_time_s=dt, phase="checkpoint_save")
            saved = digest(state)
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                meta=ocp.args.JsonSave({"step": step, "devices": n, "processes": world,
                                        "generation": generation, "digest": saved}),
            ))
            record.write("saved", step=step, digest=saved)

    manager.wait_until_finished()
    final = digest(state)
    record.write("final", step=step, digest=final)
    manager.close()
    if rank == 0:
        print(f"done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
