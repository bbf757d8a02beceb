#!/usr/bin/env python3
"""Example data-parallel training job for sup (Python 3, standard library only).

It is the demo and end-to-end workload: it behaves like a real torchrun job where it
matters to a supervisor, with none of the weight.

* Ranks meet at MASTER_ADDR:MASTER_PORT and run a real collective over TCP: every step
  each rank computes the gradient of its share of the global batch and an all-reduce
  (gather at rank 0, sum, broadcast) gives every rank the same update. A dead peer
  makes the others block, as NCCL does, until sup stops them.
* The parameter vector is saved as shards, one per rank, into
  ``<checkpoint_dir>/step-<N>/``; rank 0 writes ``metadata.json`` and then a
  ``COMPLETE`` marker last, so a crash mid-save leaves a torn checkpoint.
* A resume reads the full vector back from the shards of any old world size
  (resharding), so a job can come back on fewer or more ranks.
* Everything that feeds back into training is integer arithmetic on data indexed by
  global sample id, so the final parameters are bit-identical whatever the world
  sizes and restarts along the way; ``final.bin`` lets two runs compare byte for byte.

See README.md next to this file for the command line and environment contract.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import struct
import sys
import time
from array import array
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sup_progress import Reporter  # noqa: E402  (sits next to this file)

# ---------------------------------------------------------------------------
# Exit codes

EXIT_USAGE = 2  # bad arguments, environment or checkpoint
EXIT_COLLECTIVE = 1  # rendezvous or collective failed (timeout, lost peer)
EXIT_STALE = 3  # a newer generation of this job is running: this rank is stale
EXIT_CRASH_HOOK = 17  # SUP_TRAINER_CRASH_* fault hooks

CHECKPOINT_FORMAT = "sup-example-trainer/1"
MARKER = "COMPLETE"

# ---------------------------------------------------------------------------
# The model: a toy sparse linear regression in 16.16 fixed point.

SCALE = 1 << 16  # fixed point: the real value v is stored as round(v * SCALE)
MASK64 = (1 << 64) - 1
# Parameters are clamped so every intermediate fits the int64 wire format whatever
# happens; with the step size below the clamp never triggers in practice.
PARAM_LIMIT = 1 << 40
MAX_BATCH = 1 << 16

# Independent hash streams derived from the seed.
STREAM_TARGET, STREAM_INIT, STREAM_SAMPLE = 1, 2, 3


def mix64(z: int) -> int:
    """splitmix64 finalizer: a fast, well-mixed, portable 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def round_div(a: int, d: int) -> int:
    """a / d rounded to nearest (halves up), exact on integers of any size."""
    return (2 * a + d) // (2 * d)


class Model:
    """y = <w*, x> + noise, with x a sparse ±1 vector over k consecutive coordinates.

    Sample ``g`` (a global sample id) is a pure function of (seed, g), and its gradient a
    pure integer function of (sample, params). Batch gradients are integer sums, which
    are exact and order independent: how the batch is split across ranks cannot change
    a single bit of the update. The loss is computed from an integer sum too and is
    only reported, never fed back.
    """

    def __init__(self, params: int, batch: int, seed: int) -> None:
        self.P = params
        self.B = batch
        self.seed = seed
        self.k = min(8, params)  # coordinates touched by a sample
        # Step size as an exact rational: the summed batch gradient is divided by
        # `denom`. Each coordinate is touched ~B*k/P times per step, each time with
        # |x| = 1 over k coordinates, so this keeps an SGD step well inside the
        # stable range for any P and B while still converging in tens of steps.
        touches = max(1, -(-batch * self.k // params))
        self.denom = 2 * self.k * touches
        base = mix64(seed & MASK64)
        self._key_target = mix64(base ^ STREAM_TARGET)
        self._key_init = mix64(base ^ STREAM_INIT)
        self._key_sample = mix64(base ^ STREAM_SAMPLE)

    def target(self, i: int) -> int:
        """w*[i], uniform in [-1, 1)."""
        return mix64(self._key_target ^ i) % (2 * SCALE) - SCALE

    def initial_params(self) -> array:
        """w0[i], uniform in [-0.5, 0.5)."""
        key, half = self._key_init, SCALE // 2
        return array("q", (mix64(key ^ i) % SCALE - half for i in range(self.P)))

    def sample(self, g: int) -> Tuple[List[int], List[int], int]:
        """(indices, signs, y) of global sample g."""
        h1 = mix64(self._key_sample ^ (g & MASK64))
        h2 = mix64(h1)
        start = h1 % self.P
        idx = [(start + t) % self.P for t in range(self.k)]
        xs = [1 if (h2 >> t) & 1 else -1 for t in range(self.k)]
        noise = mix64(h2) % (SCALE // 8) - SCALE // 16  # uniform in [-1/16, 1/16)
        y = sum(x * self.target(i) for i, x in zip(idx, xs)) + noise
        return idx, xs, y

    def local_gradient(self, params: array, step: int, rank: int, world: int) -> Tuple[Dict[int, int], int]:
        """Summed gradient of 0.5*(<w,x> - y)^2 over this rank's samples of the step
        (sparse: index -> value), and the summed squared error (both fixed point)."""
        grad: Dict[int, int] = {}
        err2 = 0
        first = step * self.B
        for j in range(rank, self.B, world):  # sample j of the global batch is rank j % W's
            idx, xs, y = self.sample(first + j)
            err = sum(x * params[i] for i, x in zip(idx, xs)) - y
            err2 += err * err
            for i, x in zip(idx, xs):
                grad[i] = grad.get(i, 0) + err * x
        return grad, err2

    def apply(self, params: array, total: array) -> None:
        """w -= G / denom for the reduced sparse gradient (pairs index, value)."""
        d = self.denom
        for n in range(0, len(total), 2):
            i = total[n]
            v = params[i] - round_div(total[n + 1], d)
            params[i] = max(-PARAM_LIMIT, min(PARAM_LIMIT, v))

    def loss(self, err2_total: int) -> float:
        """Mean of 0.5*err^2 over the global batch, in real units (report only)."""
        return err2_total / (2.0 * self.B * SCALE * SCALE)


# ---------------------------------------------------------------------------
# Byte encodings (little endian on disk and on the wire, whatever the host).


def to_le(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array("q", values)
        values.byteswap()
    return values.tobytes()


def from_le(data: bytes) -> array:
    values = array("q")
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


# ---------------------------------------------------------------------------
# Messages and the collective.


class PeerLost(Exception):
    """The connection to a peer closed or broke (the peer died)."""


class Fatal(Exception):
    """An unrecoverable problem, with the exit code to use."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


_LEN = struct.Struct("<Q")
MAX_MESSAGE = 1 << 34


def send_msg(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)))
    if payload:
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    # recv may return any part of what was sent: loop until the whole message is in.
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise PeerLost("connection closed")
        got += k
    return bytes(buf)


def recv_msg(sock: socket.socket) -> bytes:
    (n,) = _LEN.unpack(recv_exact(sock, _LEN.size))
    if n > MAX_MESSAGE:
        raise PeerLost(f"implausible message length {n}")
    return recv_exact(sock, n) if n else b""


class CollectiveError(Exception):
    def __init__(self, peer: int, cause: BaseException) -> None:
        super().__init__(f"rank {peer}: {cause!r}")
        self.peer = peer
        self.timed_out = isinstance(cause, TimeoutError)


class Group:
    """A star-shaped process group: rank 0 holds one connection per peer."""

    def __init__(self, rank: int, world: int, peers: Dict[int, socket.socket]) -> None:
        self.rank = rank
        self.world = world
        self.peers = peers  # rank 0: {peer rank: socket}; others: {0: socket}

    def _io(self, peer: int, fn, *args):
        try:
            return fn(self.peers[peer], *args)
        except (PeerLost, OSError) as e:  # TimeoutError is an OSError too
            raise CollectiveError(peer, e) from e

    def gather(self, payload: bytes) -> Optional[List[bytes]]:
        """Rank 0 gets every rank's payload, in rank order; the others get None."""
        if self.rank != 0:
            self._io(0, send_msg, payload)
            return None
        return [payload] + [self._io(r, recv_msg) for r in range(1, self.world)]

    def broadcast(self, payload: Optional[bytes]) -> bytes:
        """Every rank gets rank 0's payload."""
        if self.rank != 0:
            return self._io(0, recv_msg)
        assert payload is not None
        for r in range(1, self.world):
            self._io(r, send_msg, payload)
        return payload

    def barrier(self) -> None:
        self.gather(b"")
        self.broadcast(b"")

    def close(self) -> None:
        for sock in self.peers.values():
            try:
                sock.close()
            except OSError:
                pass


def _listen(port: int, deadline: float) -> socket.socket:
    # The previous generation's rank 0 may still be dying and hold the port: retry.
    # SO_REUSEADDR (set by create_server) lets us bind over its TIME_WAIT leftovers.
    dual = socket.has_dualstack_ipv6()
    said = False
    while True:
        try:
            return socket.create_server(
                ("", port),
                family=socket.AF_INET6 if dual else socket.AF_INET,
                dualstack_ipv6=dual,
                backlog=128,
                reuse_port=False,
            )
        except OSError as e:
            if time.monotonic() > deadline:
                raise Fatal(f"rendezvous: cannot listen on port {port}: {e}", EXIT_COLLECTIVE)
            if not said:  # once: a port held by something else stalls the whole job
                print(f"trainer: rendezvous: cannot listen on port {port} yet ({e}); retrying",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(0.2)


def _reply(sock: socket.socket, **fields) -> None:
    try:
        send_msg(sock, json.dumps(fields).encode())
    except OSError:
        pass


def rendezvous(rank: int, world: int, addr: str, port: int, hello: dict, timeout_s: float,
               collective_timeout_s: float) -> Group:
    """Connects the ranks of one generation: rank 0 listens, the others connect.

    Only ranks of the same job and generation are admitted, so a stale rank of an old
    generation (or a new rank that reached a dying old rank 0) can never join the
    wrong group. Rank 0 stops listening once everyone is in, which frees the port for
    the next generation.
    """
    if world == 1:
        return Group(rank, world, {})
    deadline = time.monotonic() + timeout_s
    gen = hello["generation"]
    if rank == 0:
        listener = _listen(port, deadline)
        listener.settimeout(0.5)
        peers: Dict[int, socket.socket] = {}
        try:
            while len(peers) < world - 1:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(1, world)) - set(peers))
                    raise Fatal(f"rendezvous timed out after {timeout_s:.0f}s; missing ranks {missing}",
                                EXIT_COLLECTIVE)
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, socket.timeout):
                    continue
                conn.settimeout(10.0)
                try:
                    peer = json.loads(recv_msg(conn))
                    peer_rank = int(peer["rank"])
                except (PeerLost, OSError, ValueError, KeyError, TypeError):
                    conn.close()  # not one of ours, or it died while saying hello
                    continue
                if peer.get("job") != hello["job"]:
                    _reply(conn, ok=False, why="job", generation=gen)
                    conn.close()
                    continue
                if peer.get("generation") != gen:
                    _reply(conn, ok=False, why="generation", generation=gen)
                    conn.close()
                    continue
                # Same job and generation: any disagreement is a launch bug; fail loudly.
                for key in ("world_size", "start_step", "config"):
                    if peer.get(key) != hello[key]:
                        _reply(conn, ok=False, why="mismatch", generation=gen)
                        raise Fatal(f"rendezvous: rank {peer_rank} has {key}={peer.get(key)!r}, "
                                    f"rank 0 has {hello[key]!r}")
                if not 0 < peer_rank < world or peer_rank in peers:
                    _reply(conn, ok=False, why="mismatch", generation=gen)
                    raise Fatal(f"rendezvous: invalid or duplicate rank {peer_rank}")
                _reply(conn, ok=True)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.settimeout(collective_timeout_s)
                peers[peer_rank] = conn
        except BaseException:
            for conn in peers.values():
                conn.close()
            raise
        finally:
            listener.close()
        return Group(rank, world, peers)

    hello_bytes = json.dumps(hello).encode()
    last_error = "no attempt"
    while time.monotonic() < deadline:
        try:
            conn = socket.create_connection((addr, port), timeout=5.0)
        except OSError as e:
            last_error = repr(e)
            time.sleep(0.2)
            continue
        try:
            conn.settimeout(10.0)
            send_msg(conn, hello_bytes)
            reply = json.loads(recv_msg(conn))
        except (PeerLost, OSError, ValueError) as e:
            last_error = repr(e)
            conn.close()
            time.sleep(0.2)
            continue
        if reply.get("ok"):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(collective_timeout_s)
            return Group(rank, world, {0: conn})
        conn.close()
        why, their_gen = reply.get("why"), reply.get("generation")
        if why == "generation" and isinstance(their_gen, int) and their_gen > gen:
            raise Fatal(f"rendezvous: generation {their_gen} of this job is running; "
                        f"this rank (generation {gen}) is stale", EXIT_STALE)
        if why == "mismatch":
            raise Fatal("rendezvous: rank 0 rejected this rank (world size, start step or "
                        "configuration differ; see rank 0's log)")
        # An older generation's rank 0 or another job on the port: wait for ours.
        last_error = f"rejected by {addr}:{port} ({why}, generation {their_gen})"
        time.sleep(0.2)
    raise Fatal(f"rendezvous with {addr}:{port} timed out after {timeout_s:.0f}s: {last_error}",
                EXIT_COLLECTIVE)


def all_reduce_gradient(group: Group, step: int, grad: Dict[int, int], err2: int) -> Tuple[array, int]:
    """Sums the sparse gradients and squared errors of all ranks; every rank gets the
    total as index/value pairs sorted by index."""
    pairs = array("q")
    for i in sorted(grad):
        pairs.append(i)
        pairs.append(grad[i])
    # The step travels along so a desynchronised peer is an error, not silent garbage.
    payload = struct.pack("<q", step) + err2.to_bytes(16, "little") + to_le(pairs)
    parts = group.gather(payload)
    if parts is not None:
        total: Dict[int, int] = {}
        err2_total = 0
        for r, part in enumerate(parts):
            (their_step,) = struct.unpack_from("<q", part)
            if their_step != step:
                raise Fatal(f"collective out of step: rank {r} is at step {their_step}, rank 0 at {step}",
                            EXIT_COLLECTIVE)
            err2_total += int.from_bytes(part[8:24], "little")
            theirs = from_le(part[24:])
            for n in range(0, len(theirs), 2):
                total[theirs[n]] = total.get(theirs[n], 0) + theirs[n + 1]
        out = array("q")
        for i in sorted(total):
            out.append(i)
            out.append(total[i])
        payload = struct.pack("<q", step) + err2_total.to_bytes(16, "little") + to_le(out)
    payload = group.broadcast(payload)
    return from_le(payload[24:]), int.from_bytes(payload[8:24], "little")


# ---------------------------------------------------------------------------
# Checkpoints.


def slice_bounds(params: int, world: int, rank: int) -> Tuple[int, int]:
    """Rank r owns [r*P//W, (r+1)*P//W): W nearly equal contiguous slices."""
    return rank * params // world, (rank + 1) * params // world


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the whole file or nothing: write a private tmp file, then rename."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


_SHARD_RE = re.compile(r"^shard-(\d+)-of-(\d+)\.bin")


def save_checkpoint(ctx: "Context", group: Group, params: array, step: int) -> None:
    d = ctx.checkpoint_dir / f"step-{step}"
    rank, world, P = group.rank, group.world, ctx.model.P
    if rank == 0:
        d.mkdir(parents=True, exist_ok=True)
        # A rollback can make us save a step again. The directory must stop claiming
        # to be complete before anyone overwrites a shard in it.
        for name in (MARKER, "metadata.json"):
            try:
                (d / name).unlink()
            except FileNotFoundError:
                pass
        fsync_dir(d)
    group.barrier()
    d.mkdir(parents=True, exist_ok=True)
    lo, hi = slice_bounds(P, world, rank)
    data = to_le(params[lo:hi])
    name = f"shard-{rank}-of-{world}.bin"
    write_atomic(d / name, data)
    info = {"rank": rank, "file": name, "start": lo, "end": hi, "sha256": hashlib.sha256(data).hexdigest()}
    # The gather is the barrier: when rank 0 has every rank's entry, every shard is on disk.
    infos = group.gather(json.dumps(info).encode())
    if infos is None:
        return
    shards = [json.loads(x) for x in infos]
    for f in d.iterdir():  # shards left there by an earlier save at another world size
        m = _SHARD_RE.match(f.name)
        if m and int(m.group(2)) != world:
            try:
                f.unlink()
            except FileNotFoundError:
                pass
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "world_size": world,
        "params": P,
        "batch": ctx.model.B,
        "seed": ctx.model.seed,
        "dtype": "int64",
        "byteorder": "little",
        "fixed_point_scale": SCALE,
        "job": ctx.job,
        "generation": ctx.generation,
        "shards": shards,
    }
    write_atomic(d / "metadata.json", (json.dumps(meta, indent=1) + "\n").encode())
    if ctx.hook_applies(ctx.crash_during_save, step, rank_hook=False) and rank == 0:
        ctx.log(f"fault hook: dying during the save of step {step}, before {MARKER}")
        os._exit(EXIT_CRASH_HOOK)
    write_atomic(d / MARKER, b"")


def load_checkpoint(path: Path, model: Model, expect_step: Optional[int]) -> Tuple[array, int]:
    """Rebuilds the full parameter vector from the shards of any world size."""
    if not path.is_dir():
        raise Fatal(f"resume: checkpoint {path} does not exist")
    if not (path / MARKER).is_file():
        raise Fatal(f"resume: checkpoint {path} is torn (no {MARKER} marker); refusing to resume from it")
    try:
        meta = json.loads((path / "metadata.json").read_text())
    except (OSError, ValueError) as e:
        raise Fatal(f"resume: cannot read {path / 'metadata.json'}: {e}")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise Fatal(f"resume: {path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    # Resuming with other data or another model would silently change the result.
    for key, ours in (("params", model.P), ("batch", model.B), ("seed", model.seed)):
        if meta.get(key) != ours:
            raise Fatal(f"resume: checkpoint has {key}={meta.get(key)!r} but this run has {key}={ours}")
    step = meta.get("step")
    if not isinstance(step, int) or step < 0:
        raise Fatal(f"resume: bad step {step!r} in {path / 'metadata.json'}")
    if expect_step is not None and expect_step != step:
        raise Fatal(f"resume: SUP_RESUME_STEP={expect_step} but {path} holds step {step}")
    full = array("q", bytes(8 * model.P))
    covered = 0
    try:
        shards = sorted(meta["shards"], key=lambda s: int(s["start"]))
        for shard in shards:
            lo, hi, digest = int(shard["start"]), int(shard["end"]), str(shard["sha256"])
            f = path / Path(str(shard["file"])).name  # never a path outside the checkpoint
            if lo != covered or hi < lo or hi > model.P:
                raise Fatal(f"resume: shards of {path} do not tile [0, {model.P}) (at {lo}..{hi})")
            try:
                data = f.read_bytes()
            except OSError as e:
                raise Fatal(f"resume: cannot read shard {f}: {e}")
            if len(data) != 8 * (hi - lo) or hashlib.sha256(data).hexdigest() != digest:
                raise Fatal(f"resume: shard {f} is corrupt (size or sha256 mismatch)")
            full[lo:hi] = from_le(data)
            covered = hi
    except (KeyError, TypeError, ValueError) as e:
        raise Fatal(f"resume: malformed shard list in {path / 'metadata.json'}: {e!r}")
    if covered != model.P:
        raise Fatal(f"resume: shards of {path} cover [0, {covered}) of [0, {model.P})")
    return full, step


# ---------------------------------------------------------------------------
# The job.


def env_int(name: str, default: Optional[int] = None) -> Optional[int]:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise Fatal(f"environment: {name}={value!r} is not an integer")


class Context:
    """What this rank is, read from the torchrun-compatible and SUP_* environment."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rank = env_int("RANK", 0)
        self.world = env_int("WORLD_SIZE", 1)
        self.local_rank = env_int("LOCAL_RANK", self.rank)
        if not (self.world >= 1 and 0 <= self.rank < self.world):
            raise Fatal(f"environment: RANK={self.rank} WORLD_SIZE={self.world} is not a valid rank")
        self.master_addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.master_port = env_int("MASTER_PORT", 29500)
        self.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0)
        self.job = os.environ.get("SUP_JOB", "example-trainer")
        self.generation = env_int("SUP_GENERATION", 0)
        env_dir = os.environ.get("SUP_CHECKPOINT_DIR", "").strip()
        if env_dir and args.checkpoint_dir and os.path.abspath(env_dir) != os.path.abspath(args.checkpoint_dir):
            # sup's catalog looks in the job spec's directory, so that one wins.
            print(f"trainer: warning: SUP_CHECKPOINT_DIR={env_dir} overrides --checkpoint-dir", file=sys.stderr)
        self.checkpoint_dir = Path(env_dir or args.checkpoint_dir or "checkpoints")
        self.resume_from = os.environ.get("SUP_RESUME_FROM", "").strip() or None
        self.resume_step = env_int("SUP_RESUME_STEP")
        self.crash_at = env_int("SUP_TRAINER_CRASH_AT_STEP")
        self.crash_rank = env_int("SUP_TRAINER_CRASH_RANK")
        self.crash_generation = env_int("SUP_TRAINER_CRASH_GENERATION")
        self.crash_during_save = env_int("SUP_TRAINER_CRASH_DURING_SAVE")
        # Knobs for sup's detectors (README: "Detection drills").
        self.node_id = os.environ.get("SUP_NODE_ID", "")
        self.slowdown = 1.0
        slow_node = os.environ.get("SUP_EXAMPLE_SLOW_NODE", "").strip()
        if slow_node and slow_node == self.node_id:
            raw = os.environ.get("SUP_EXAMPLE_SLOWDOWN", "").strip() or "1"
            try:
                self.slowdown = float(raw)
            except ValueError:
                raise Fatal(f"environment: SUP_EXAMPLE_SLOWDOWN={raw!r} is not a number")
            if not (self.slowdown >= 1.0 and self.slowdown < 1000):
                raise Fatal(f"environment: SUP_EXAMPLE_SLOWDOWN={raw!r} must be in [1, 1000)")
        # "Generation 0" is the job's first run: sup's generations come from a global
        # counter, so the restart count (TORCHELASTIC_RESTART_COUNT) tells it apart.
        self.first_run = not self.restart_count
        self.hang_at = env_int("SUP_EXAMPLE_HANG_AT_STEP")
        self.loss_spike_at = env_int("SUP_EXAMPLE_LOSS_SPIKE_AT_STEP")
        self.sup_seed = env_int("SUP_SEED", 0)
        lr_raw = os.environ.get("SUP_LR_SCALE", "").strip()
        self.lr_scale = lr_raw or "1"
        self.model = Model(args.params, args.batch, args.seed)

    def hook_applies(self, hook_step: Optional[int], step: int, rank_hook: bool) -> bool:
        if hook_step is None or hook_step != step:
            return False
        if self.crash_generation is not None and self.crash_generation != self.generation:
            return False
        if rank_hook and self.crash_rank is not None and self.crash_rank != self.rank:
            return False
        return True

    def log(self, message: str) -> None:
        print(f"trainer[{self.rank}/{self.world}]: {message}", flush=True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, required=True, help="total number of steps of the job")
    p.add_argument("--checkpoint-every", type=int, required=True, help="save every K steps (0: never)")
    p.add_argument("--step-time", type=float, default=0.0, help="simulated compute per step, in seconds")
    p.add_argument("--params", type=int, required=True, help="number of parameters P")
    p.add_argument("--batch", type=int, default=64, help="global samples per step (default 64)")
    p.add_argument("--seed", type=int, default=0, help="data and initialisation seed (default 0)")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints and final.bin go when SUP_CHECKPOINT_DIR is unset "
                        "(default ./checkpoints)")
    p.add_argument("--rendezvous-timeout", type=float, default=120.0,
                   help="seconds to wait for all ranks to meet (default 120)")
    p.add_argument("--collective-timeout", type=float, default=1800.0,
                   help="seconds a collective may block, e.g. on a dead peer, before giving up "
                        "(default 1800, like NCCL's long timeouts)")
    args = p.parse_args(argv)
    if args.steps < 0 or args.checkpoint_every < 0 or args.step_time < 0:
        p.error("--steps, --checkpoint-every and --step-time must not be negative")
    if args.params < 1:
        p.error("--params must be at least 1")
    if not 1 <= args.batch <= MAX_BATCH:
        p.error(f"--batch must be in [1, {MAX_BATCH}]")
    return args


def _on_signal(signum: int, _frame) -> None:
    # Exit at once, even from inside a blocked collective or a save: sup's stop is
    # SIGTERM then SIGKILL, and a torn save is exactly what the marker is for.
    try:
        sys.stdout.flush()
        sys.stderr.write(f"trainer: got signal {signum}, exiting\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)


def train(args: argparse.Namespace) -> int:
    ctx = Context(args)
    model = ctx.model
    progress = Reporter.from_env()
    rank, world = ctx.rank, ctx.world

    if ctx.resume_from:
        progress.report(step=ctx.resume_step or 0, tokens=None, loss=None, step_time_s=None,
                        phase="checkpoint_load")
        params, start = load_checkpoint(Path(ctx.resume_from), model, ctx.resume_step)
        origin = f"resumed from {ctx.resume_from} at step {start}"
    else:
        params, start = model.initial_params(), 0
        origin = "fresh start"
    ctx.log(f"job {ctx.job} generation {ctx.generation} restart {ctx.restart_count} "
            f"local_rank {ctx.local_rank}; params {model.P} batch {model.B} seed {model.seed} "
            f"steps {args.steps}; {origin}")
    if start > args.steps:
        raise Fatal(f"resume: checkpoint step {start} is past --steps {args.steps}")

    hello = {
        "rank": rank,
        "world_size": world,
        "job": ctx.job,
        "generation": ctx.generation,
        "start_step": start,
        "config": {"params": model.P, "batch": model.B, "seed": model.seed, "steps": args.steps},
    }
    group = rendezvous(rank, world, ctx.master_addr, ctx.master_port, hello,
                       args.rendezvous_timeout, args.collective_timeout)
    if world > 1:
        ctx.log(f"rendezvous done at {ctx.master_addr}:{ctx.master_port}")
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    if ctx.slowdown != 1.0:
        ctx.log(f"detection knob: node {ctx.node_id} runs {ctx.slowdown}x slower")
    if ctx.sup_seed or ctx.lr_scale != "1":
        ctx.log(f"rollback: SUP_SEED={ctx.sup_seed} SUP_LR_SCALE={ctx.lr_scale}")
    for step in range(start, args.steps):
        t0 = time.monotonic()
        grad, err2 = model.local_gradient(params, step, rank, world)
        if args.step_time > 0:
            time.sleep(args.step_time * ctx.slowdown)
        # Time outside the collective: what tells a slow rank from the ones waiting for it.
        compute = time.monotonic() - t0
        total, err2_total = all_reduce_gradient(group, step, grad, err2)
        model.apply(params, total)
        done = step + 1
        dt = time.monotonic() - t0
        loss = model.loss(err2_total)
        if ctx.loss_spike_at is not None and done >= ctx.loss_spike_at and not ctx.sup_seed:
            # Only the reported loss: the parameters (and final.bin) stay deterministic.
            loss = loss * 100.0 + 10.0
        # The job's cumulative samples (one sample counts as one token), the same on every
        # rank: sup reads it as the job's total, whichever rank's line comes last.
        tokens = done * model.B
        print(f"step {done}/{args.steps} loss {loss:.6f} tokens {tokens} step_time {dt:.3f}s", flush=True)
        progress.report(step=done, tokens=tokens, loss=loss, step_time_s=round(dt, 6),
                        compute_time_s=round(compute, 6), phase="train")

        if ctx.hang_at is not None and done == ctx.hang_at and ctx.first_run:
            ctx.log(f"detection knob: hanging at step {done} (first run only)")
            while True:  # like a rank stuck in a collective; SIGTERM still ends it
                time.sleep(3600)
        if ctx.hook_applies(ctx.crash_at, done, rank_hook=True):
            ctx.log(f"fault hook: crashing at step {done} with exit code {EXIT_CRASH_HOOK}")
            os._exit(EXIT_CRASH_HOOK)
        if args.checkpoint_every and done % args.checkpoint_every == 0:
            progress.report(step=done, tokens=tokens, loss=loss, step_time_s=round(dt, 6),
                            phase="checkpoint_save")
            t1 = time.monotonic()
            save_checkpoint(ctx, group, params, done)
            ctx.log(f"saved step-{done} ({time.monotonic() - t1:.3f}s)")

    if rank == 0:
        write_atomic(ctx.checkpoint_dir / "final.bin", to_le(params))
        ctx.log(f"wrote {ctx.checkpoint_dir / 'final.bin'}")
    group.barrier()  # no rank reports success before final.bin exists
    group.close()
    progress.close()
    ctx.log("done")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    args = parse_args(argv)
    try:
        return train(args)
    except Fatal as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        return e.code
    except CollectiveError as e:
        if e.timed_out:
            print(f"trainer: error: collective timed out after {args.collective_timeout:.0f}s waiting "
                  f"on rank {e.peer}", file=sys.stderr, flush=True)
            return EXIT_COLLECTIVE
        # Like NCCL, do not exit on a lost peer: the supervisor sees the peer's own
        # exit and restarts the whole generation. Block until it stops us (or give up
        # after the collective timeout, as NCCL's watchdog would).
        print(f"trainer: lost the connection to rank {e.peer} ({e.__cause__!r}); blocking until "
              f"stopped (at most {args.collective_timeout:.0f}s)", file=sys.stderr, flush=True)
        time.sleep(args.collective_timeout)
        print("trainer: error: gave up waiting for the lost peer", file=sys.stderr, flush=True)
        return EXIT_COLLECTIVE


if __name__ == "__main__":
    sys.exit(main())
