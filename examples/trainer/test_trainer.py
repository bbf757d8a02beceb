"""Tests of the example trainer: real rank processes talking over loopback.

    python3 -m unittest discover -s examples/trainer -p 'test_*.py'

Every process is started in its own session and killed on cleanup, also when a test
fails, so a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "train.py"
sys.path.insert(0, str(HERE))

import sup_progress  # noqa: E402

# Small but not trivial: 101 parameters never split evenly, 12 samples per step
# split unevenly over 5 ranks, checkpoints every 5 steps.
STEPS, EVERY, PARAMS, BATCH = 24, 5, 101, 12
ARGS = ["--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--params", str(PARAMS),
        "--batch", str(BATCH), "--seed", "7", "--rendezvous-timeout", "30"]
WAIT_S = 60.0

# Variables a test run must not inherit from whoever runs the tests.
_SCRUB = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """Rank processes of one generation of a job (all ranks, or the ones asked for)."""

    def __init__(self, procs: Dict[int, subprocess.Popen], logs: Dict[int, Path]) -> None:
        self.procs = procs
        self.logs = logs

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")

    def all_logs(self) -> str:
        return "\n".join(f"--- rank {r} ---\n{self.log(r)[-3000:]}" for r in sorted(self.logs))

    def wait(self, rank: int, timeout: float = WAIT_S) -> int:
        try:
            return self.procs[rank].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank {rank} still running after {timeout}s\n{self.all_logs()}")

    def wait_all(self, timeout: float = WAIT_S) -> List[int]:
        deadline = time.monotonic() + timeout
        return [self.wait(r, max(0.1, deadline - time.monotonic())) for r in sorted(self.procs)]


class TrainerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sup-trainer-test-"))
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.t0 = time.monotonic()

    def launch(self, world: int, ckpt: Path, generation: int = 0, env: Optional[Dict[str, str]] = None,
               args: Optional[List[str]] = None, name: Optional[str] = None,
               ranks: Optional[List[int]] = None) -> Run:
        port = free_port()
        name = name or f"{ckpt.name}-gen{generation}"
        procs: Dict[int, subprocess.Popen] = {}
        logs: Dict[int, Path] = {}
        for rank in range(world) if ranks is None else ranks:
            e = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("SUP_")}
            e.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), TORCHELASTIC_RESTART_COUNT=str(generation),
                     SUP_JOB="test-job", SUP_GENERATION=str(generation), SUP_CHECKPOINT_DIR=str(ckpt),
                     PYTHONDONTWRITEBYTECODE="1")
            e.update(env or {})
            log = self.tmp / f"{name}-rank{rank}.log"
            with open(log, "wb") as out:
                p = subprocess.Popen([sys.executable, str(TRAIN)] + (args or ARGS), env=e, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.addCleanup(self._kill, p)
            procs[rank] = p
            logs[rank] = log
        return Run(procs, logs)

    @staticmethod
    def _kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()

    def train_ok(self, world: int, ckpt: Path, **kw) -> Run:
        run = self.launch(world, ckpt, **kw)
        codes = run.wait_all()
        self.assertEqual(codes, [0] * world, run.all_logs())
        return run

    def reference(self) -> bytes:
        run_dir = self.tmp / "reference"
        self.train_ok(1, run_dir)
        return (run_dir / "final.bin").read_bytes()

    def assert_blocked_then_terminate(self, run: Run, rank: int) -> None:
        """A survivor of a dead peer blocks (like NCCL) and exits 143 on SIGTERM."""
        time.sleep(0.5)
        self.assertIsNone(run.procs[rank].poll(), f"rank {rank} should block on its dead peer\n{run.all_logs()}")
        run.procs[rank].send_signal(signal.SIGTERM)
        self.assertEqual(run.wait(rank, timeout=10), 143, run.all_logs())

    # (a)
    def test_world_sizes_give_identical_parameters(self) -> None:
        finals = {}
        for world in (1, 2, 3):
            ckpt = self.tmp / f"w{world}"
            self.train_ok(world, ckpt)
            finals[world] = (ckpt / "final.bin").read_bytes()
            self.assertEqual(len(finals[world]), 8 * PARAMS)
            for step in (5, 10, 15, 20):
                d = ckpt / f"step-{step}"
                self.assertTrue((d / "COMPLETE").is_file(), d)
                meta = json.loads((d / "metadata.json").read_text())
                self.assertEqual((meta["step"], meta["world_size"], meta["params"]), (step, world, PARAMS))
                bounds = [(s["start"], s["end"]) for s in meta["shards"]]
                self.assertEqual(bounds, [(r * PARAMS // world, (r + 1) * PARAMS // world) for r in range(world)])
                for r in range(world):
                    self.assertTrue((d / f"shard-{r}-of-{world}.bin").is_file())
        self.assertEqual(finals[1], finals[2])
        self.assertEqual(finals[1], finals[3])

    # (b)
    def test_crash_then_resume_on_more_and_fewer_ranks(self) -> None:
        expected = self.reference()
        ckpt = self.tmp / "elastic"
        # The hook stays in the environment, as a job spec's [env] would, but is
        # limited to generation 0: the resumed generations must not crash.
        crash = {"SUP_TRAINER_CRASH_AT_STEP": "13", "SUP_TRAINER_CRASH_RANK": "1",
                 "SUP_TRAINER_CRASH_GENERATION": "0"}
        run = self.launch(2, ckpt, generation=0, env=crash)
        self.assertEqual(run.wait(1), 17, run.all_logs())
        self.assert_blocked_then_terminate(run, 0)
        self.assertTrue((ckpt / "step-10" / "COMPLETE").is_file())
        self.assertFalse((ckpt / "step-15").exists())
        self.assertFalse((ckpt / "final.bin").exists())

        # Generation 1: 2 -> 3 ranks from the newest checkpoint.
        resume = dict(crash, SUP_RESUME_FROM=str(ckpt / "step-10"), SUP_RESUME_STEP="10")
        run = self.train_ok(3, ckpt, generation=1, env=resume)
        self.assertIn("at step 10", run.log(0))
        self.assertTrue(run.log(2).splitlines()[2].startswith("step 11/24"), run.log(2))
        self.assertEqual((ckpt / "final.bin").read_bytes(), expected)
        self.assertTrue((ckpt / "step-20" / "shard-2-of-3.bin").is_file())

        # And 3 -> 2 ranks from a checkpoint written by 3 ranks, into a fresh directory.
        other = self.tmp / "shrunk"
        self.train_ok(2, other, generation=2,
                      env={"SUP_RESUME_FROM": str(ckpt / "step-15"), "SUP_RESUME_STEP": "15"})
        self.assertEqual((other / "final.bin").read_bytes(), expected)

    # (c)
    def test_crash_during_save_leaves_a_torn_checkpoint(self) -> None:
        ckpt = self.tmp / "torn"
        run = self.launch(2, ckpt, env={"SUP_TRAINER_CRASH_DURING_SAVE": "10"})
        self.assertEqual(run.wait(0), 17, run.all_logs())
        self.assert_blocked_then_terminate(run, 1)
        torn = ckpt / "step-10"
        self.assertTrue((ckpt / "step-5" / "COMPLETE").is_file())
        self.assertTrue((torn / "shard-0-of-2.bin").is_file())
        self.assertTrue((torn / "shard-1-of-2.bin").is_file())
        self.assertFalse((torn / "COMPLETE").exists())

        # Defensive: the trainer itself refuses a torn or missing checkpoint.
        for path in (torn, ckpt / "step-99"):
            run = self.launch(1, self.tmp / "refuse", env={"SUP_RESUME_FROM": str(path)}, name=path.name)
            self.assertEqual(run.wait(0), 2, run.all_logs())
            self.assertIn("torn" if path == torn else "does not exist", run.log(0))

    # (d)
    def test_progress_reaches_a_listener(self) -> None:
        lines: List[str] = []
        lock = threading.Lock()
        server = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(server.close)
        readers: List[threading.Thread] = []

        def read(conn: socket.socket) -> None:
            with conn, conn.makefile("r") as f:
                for line in f:
                    with lock:
                        lines.append(line)

        def accept() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                t = threading.Thread(target=read, args=(conn,), daemon=True)
                t.start()
                readers.append(t)

        threading.Thread(target=accept, daemon=True).start()
        addr = f"127.0.0.1:{server.getsockname()[1]}"
        args = ["--steps", "8", "--checkpoint-every", "4", "--params", "33", "--batch", "5",
                "--step-time", "0.01"]
        self.train_ok(2, self.tmp / "progress", generation=3, env={"SUP_PROGRESS_ADDR": addr}, args=args)
        for t in list(readers):
            t.join(timeout=10)

        records = [json.loads(line) for line in lines]
        for rank in (0, 1):
            mine = [r for r in records if r["rank"] == rank]
            train = [r for r in mine if r["phase"] == "train"]
            self.assertEqual([r["step"] for r in train], list(range(1, 9)))
            self.assertEqual([r["tokens"] for r in train], [s * 5 for s in range(1, 9)])  # the job's total
            self.assertEqual([r["step"] for r in mine if r["phase"] == "checkpoint_save"], [4, 8])
            for r in mine:
                self.assertEqual(r["generation"], 3)
                self.assertIsInstance(r["loss"], float)
                self.assertGreaterEqual(r["step_time_s"], 0.0)
                # compute_time_s (time outside the collective) comes with train lines only.
                self.assertEqual(set(r) - {"compute_time_s"},
                                 {"rank", "generation", "step", "tokens", "loss", "step_time_s", "phase"})
            for r in train:
                self.assertLessEqual(r["compute_time_s"], r["step_time_s"])

    def test_detection_knobs(self) -> None:
        args = ["--steps", "8", "--checkpoint-every", "4", "--params", "33", "--batch", "5",
                "--step-time", "0.01"]
        knobs = {"SUP_EXAMPLE_HANG_AT_STEP": "3", "SUP_EXAMPLE_LOSS_SPIKE_AT_STEP": "5",
                 "SUP_NODE_ID": "node-a", "SUP_EXAMPLE_SLOW_NODE": "node-a", "SUP_EXAMPLE_SLOWDOWN": "1.5"}
        # The first run (restart count 0) hangs at step 3 on every rank, until stopped.
        hung = self.launch(2, self.tmp / "knobs", generation=0, env=knobs, args=args)
        deadline = time.monotonic() + WAIT_S
        while not all("hanging at step 3" in hung.log(r) for r in (0, 1)):
            self.assertLess(time.monotonic(), deadline, hung.all_logs())
            time.sleep(0.05)
        time.sleep(0.5)
        self.assertEqual([p.poll() for p in hung.procs.values()], [None, None], hung.all_logs())
        self.assertIn("runs 1.5x slower", hung.log(0))
        for p in hung.procs.values():
            p.send_signal(signal.SIGTERM)
        self.assertEqual(hung.wait_all(), [128 + signal.SIGTERM] * 2)

        def losses(run: Run) -> Dict[int, float]:
            out = {}
            for line in run.log(0).splitlines():
                if line.startswith("step "):
                    parts = line.split()
                    out[int(parts[1].split("/")[0])] = float(parts[3])
            return out

        # A restart runs through; the loss spike stays from step 5 on while SUP_SEED is unset.
        spiky = self.train_ok(2, self.tmp / "knobs", generation=1, env=knobs, args=args)
        loss = losses(spiky)
        self.assertTrue(all(loss[s] < 10 for s in range(1, 5)) and all(loss[s] > 10 for s in range(5, 9)), loss)
        # A rollback's new seed avoids it (and the run ends identical).
        clean = self.train_ok(2, self.tmp / "knobs-seed", generation=1, env=dict(knobs, SUP_SEED="1", SUP_LR_SCALE="0.5"),
                              args=args)
        self.assertTrue(all(v < 10 for v in losses(clean).values()), losses(clean))
        self.assertIn("SUP_SEED=1 SUP_LR_SCALE=0.5", clean.log(0))
        self.assertEqual((self.tmp / "knobs" / "final.bin").read_bytes(),
                         (self.tmp / "knobs-seed" / "final.bin").read_bytes())

    def test_stale_generation_is_refused(self) -> None:
        # Rank 1 of generation 1 reaches rank 0 of generation 2: it must not join.
        port = str(free_port())
        ckpt = self.tmp / "stale"
        new = self.launch(2, ckpt, generation=2, env={"MASTER_PORT": port}, name="new", ranks=[0])
        old = self.launch(2, ckpt, generation=1, env={"MASTER_PORT": port}, name="old", ranks=[1])
        self.assertEqual(old.wait(1), 3, old.all_logs() + new.all_logs())
        self.assertIn("stale", old.log(1))
        self.assertIsNone(new.procs[0].poll(), new.all_logs())  # still waiting for its own rank 1


class ReporterTest(unittest.TestCase):
    def test_no_address_is_a_no_op(self) -> None:
        saved = os.environ.pop("SUP_PROGRESS_ADDR", None)
        try:
            r = sup_progress.Reporter.from_env()
        finally:
            if saved is not None:
                os.environ["SUP_PROGRESS_ADDR"] = saved
        self.assertFalse(r.enabled)
        self.assertFalse(r.report(step=1, tokens=2, loss=0.5, step_time_s=0.1))

    def test_unreachable_agent_never_raises_nor_stalls(self) -> None:
        r = sup_progress.Reporter(f"127.0.0.1:{free_port()}", rank=0, generation=0)
        t0 = time.monotonic()
        for step in range(100):
            self.assertFalse(r.report(step=step, loss=float("nan")))
        self.assertLess(time.monotonic() - t0, 2.0)
        self.assertFalse(sup_progress.Reporter("not-an-address").enabled)

    def test_reconnects_after_the_agent_restarts(self) -> None:
        port = free_port()
        r = sup_progress.Reporter(f"127.0.0.1:{port}", rank=1, generation=0, retry_after_s=0.0)
        self.addCleanup(r.close)

        def serve_one(step: int) -> dict:
            # Report until the line arrives: a line written on a connection the agent
            # has just closed is lost (best effort), the next one reconnects.
            with socket.create_server(("127.0.0.1", port)) as server:
                server.settimeout(0.1)
                for _ in range(50):
                    r.report(step=step, loss=float("inf"))
                    try:
                        conn, _ = server.accept()
                    except (TimeoutError, socket.timeout):
                        continue
                    conn.settimeout(5)
                    with conn, conn.makefile("r") as f:
                        return json.loads(f.readline())
            self.fail("no line arrived")

        first = serve_one(1)  # then the agent "restarts": the kept connection is dead
        self.assertEqual((first["rank"], first["generation"], first["step"], first["loss"]), (1, 0, 1, None))
        self.assertEqual(serve_one(2)["step"], 2)

if __name__ == "__main__":
    unittest.main()
