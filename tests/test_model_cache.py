"""The built-in model cache when several processes fill it at once, or after a killed build.

Each test starts real OS processes (fresh interpreters) on an empty cache root; they meet at a
start line (a file the test creates once all are ready) so that their builds overlap.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ibpo_lightning.models.cache import BUILDS, CACHE_ENV, materialize

_REPO = Path(__file__).resolve().parents[1]

# argv: cache root, log of builds, ready file, start-line file, build seconds
_RACE = """
import json, os, sys, time
from pathlib import Path
from ibpo_lightning.models.cache import materialize
log, ready, go, seconds = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5])

def build(dest):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    (dest / "weights.bin").write_bytes(os.urandom(64))
    time.sleep(seconds)
    (dest / "config.json").write_text(json.dumps({"built_by": os.getpid()}))

ready.touch()
while not go.exists():
    time.sleep(0.01)
print(materialize("racy", build))
"""

# argv: cache root, ready file, start-line file; prints a digest of the weights and our builds
_LOAD = """
import hashlib, sys, time
from pathlib import Path
from ibpo_lightning.models import load_policy
from ibpo_lightning.models.cache import BUILDS
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
model, tok = load_policy("tiny-random-llama")
digest = hashlib.sha256()
for name, weight in sorted(model.state_dict().items()):
    digest.update(name.encode())
    digest.update(weight.detach().contiguous().numpy().tobytes())
print(digest.hexdigest(), BUILDS["tiny-random-llama"], len(tok))
"""


def _start(script: str, root: Path, *args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, **{CACHE_ENV: str(root)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(root), *map(str, args)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _release(procs: list[subprocess.Popen[str]], ready: list[Path], go: Path, timeout: float) -> None:
    """Create the start line once every process has touched its ready file."""
    deadline = time.monotonic() + timeout
    while not all(r.exists() for r in ready):
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"worker exited early:\n{p.communicate()[1]}")
        if time.monotonic() > deadline:
            for p in procs:
                p.kill()
            raise AssertionError("workers never got ready")
        time.sleep(0.02)
    go.touch()


def _finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


def test_concurrent_materialize_builds_once(tmp_path: Path) -> None:
    root, log, go = tmp_path / "cache", tmp_path / "builds.log", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [_start(_RACE, root, log, r, go, 1.0) for r in ready]
    _release(procs, ready, go, timeout=30)
    paths = _finish(procs, timeout=30)

    assert paths == [str(root / "racy")] * 2
    builders = log.read_text().split()
    assert len(builders) == 1, f"built {len(builders)} times"
    config = json.loads((root / "racy" / "config.json").read_text())
    assert config == {"built_by": int(builders[0])}
    assert sorted(p.name for p in root.iterdir()) == [".racy.lock", "racy"]  # no temp dirs left


def test_killed_build_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build killed by SIGKILL releases the lock; its leftovers are swept by the next build."""
    root, log, go = tmp_path / "cache", tmp_path / "builds.log", tmp_path / "go"
    ready = tmp_path / "ready"
    proc = _start(_RACE, root, log, ready, go, 60.0)
    _release([proc], [ready], go, timeout=30)
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:  # the build has started
        time.sleep(0.02)
    assert log.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert [p.name for p in root.glob(".racy.partial-*")], "expected the killed build's temp dir"

    monkeypatch.setenv(CACHE_ENV, str(root))
    builds = BUILDS["racy"]
    final = materialize("racy", lambda dest: (dest / "config.json").write_text("{}"))
    assert final == root / "racy" and (final / "config.json").read_text() == "{}"
    assert BUILDS["racy"] == builds + 1
    assert sorted(p.name for p in root.iterdir()) == [".racy.lock", "racy"]


def test_incomplete_entry_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry without config.json (a build interrupted mid-write by an older version) is
    replaced instead of refused."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"truncated")

    def build(dest: Path) -> None:
        (dest / "config.json").write_text("{}")

    final = materialize("half", build)
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    builds = BUILDS["half"]
    assert materialize("half", build) == final and BUILDS["half"] == builds  # now a cache hit


def test_a_build_leaves_the_global_rng_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded run draws the same numbers whether or not it had to fill the cache first."""
    import torch

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))

    def build(dest: Path) -> None:
        torch.nn.Linear(64, 64)  # random initialisation, as a model build does
        (dest / "config.json").write_text("{}")

    torch.manual_seed(7)
    expected = torch.rand(4)  # no build in between
    torch.manual_seed(7)
    materialize("draws", build)
    assert BUILDS["draws"] == 1 and torch.equal(torch.rand(4), expected)


@pytest.mark.slow
def test_two_processes_load_tiny_random_llama(tmp_path: Path) -> None:
    """Two ranks of a distributed run start on an empty cache: one builds, both load it."""
    root, go = tmp_path / "cache", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [_start(_LOAD, root, r, go) for r in ready]
    _release(procs, ready, go, timeout=120)
    outs = [line.split() for line in _finish(procs, timeout=120)]

    digests, builds, vocab = zip(*outs)
    assert digests[0] == digests[1]
    assert sorted(builds) == ["0", "1"]  # exactly one of the two built it
    assert vocab == ("49152", "49152")
    assert (root / "tiny-random-llama" / "config.json").is_file()
    assert not list(root.glob(".tiny-random-llama.partial-*"))


_RANK_ONE_BUILDS = """
import os, sys, torch.distributed as dist
from pathlib import Path
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=f"file://{sys.argv[2]}", rank=rank, world_size=2)
from ibpo_lightning.models import load_policy
from ibpo_lightning.models.cache import is_cached
if rank == 1:  # rank 1 takes the build, as it does whenever it reaches the lock first
    model, _ = load_policy("tiny-random-llama")
dist.barrier()
if rank == 0:
    assert is_cached("tiny-random-llama")
    model, _ = load_policy("tiny-random-llama")
print(model.config.model_type, sum(p.numel() for p in model.parameters()))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_rank_other_than_zero_builds_a_complete_entry(tmp_path):
    """transformers' save_pretrained writes only on global rank 0 of an initialised process group;
    the cache builds in a fresh process there, so whichever rank builds, the entry is whole."""
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache"), "PYTHONPATH": str(_REPO)}
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", _RANK_ONE_BUILDS, str(rank), str(store)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert outs[0][0].split() == outs[1][0].split() and outs[0][0].split()[0] == "llama"
    config = json.loads((tmp_path / "cache" / "tiny-random-llama" / "config.json").read_text())
    assert config["model_type"] == "llama"
