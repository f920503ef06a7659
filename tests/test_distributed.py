"""DDP with two CPU processes (gloo) via torchrun: trains, checkpoints per-rank RNG, resumes exactly."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlalign.config import dump_config
from vlalign.train import checkpoint as ckpt

SETTINGS = ("train.max_steps=5", "train.save_every=2", "train.batch_size=2", "train.tune.llm=lora",
            "train.tune.lora.r=4", "train.tune.lora.dropout=0.2")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(config, env_extra=None, resume=False) -> subprocess.CompletedProcess:
    path = Path(config.train.output_dir).with_suffix(".yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_config(config, path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "vlalign.cli", "train", str(path)] + (["--resume"] if resume else [])
    return subprocess.run(command, env={**os.environ, **(env_extra or {})}, capture_output=True, text=True,
                          timeout=300)


def test_ddp_two_processes_train_and_resume_exactly(tiny_config, tmp_path):
    straight = tiny_config(2, *SETTINGS, f"train.output_dir={tmp_path / 'straight'}")
    result = _torchrun(straight)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = ckpt.latest_checkpoint(tmp_path / "straight")
    assert (checkpoint / "rng_0.pt").is_file() and (checkpoint / "rng_1.pt").is_file()
    # Each rank has its own dropout stream; they must differ or the ranks would be redundant.
    rng = [torch.load(checkpoint / f"rng_{r}.pt", weights_only=False)["rng"]["torch"] for r in (0, 1)]
    assert not torch.equal(*rng)

    interrupted = tiny_config(2, *SETTINGS, f"train.output_dir={tmp_path / 'interrupted'}")
    killed = _torchrun(interrupted, {"VLALIGN_FAULT": "after_step_2"})
    assert killed.returncode != 0 and not (tmp_path / "interrupted" / "final").exists()
    resumed = _torchrun(interrupted, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = load_file(str(tmp_path / "straight" / "final" / ckpt.WEIGHTS_FILE))
    got = load_file(str(tmp_path / "interrupted" / "final" / ckpt.WEIGHTS_FILE))
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
