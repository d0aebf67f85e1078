"""A small PyTorch model trained with Ray Train's TorchTrainer (DDP) on synthetic data.

This is not rayfleet code: any Ray Train script runs the same way with

    rayfleet submit --working-dir examples/own-code -- python train.py --epochs 3

Each worker trains on its shard of a synthetic regression set (y = x·w + noise),
DDP averages the gradients, rank 0 saves a checkpoint every epoch (the last 2 are
kept) and the script prints the final validation loss. Checkpoints go to
--storage-path, default $RAYFLEET_STORAGE (the cluster's shared storage, which
`rayfleet submit` sets; every node must see it when workers run on several nodes).
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

import torch
from torch import nn

import ray.train
from ray.train import Checkpoint, CheckpointConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer, prepare_model

FEATURES = 8


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1.0, 1.0, FEATURES).unsqueeze(1)
    x = torch.randn(n, FEATURES, generator=g)
    return x, x @ w + 0.05 * torch.randn(n, 1, generator=g)


def train_loop(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    print(f"worker {rank}/{world} on {socket.gethostname()} ({ray.util.get_node_ip_address()})", flush=True)
    torch.manual_seed(0)
    model = prepare_model(nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    x, y = make_data(config["samples"], seed=1)
    x, y = x[rank::world], y[rank::world]          # this worker's shard
    vx, vy = make_data(512, seed=2)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:                                  # resumed after a failure
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "model.pt")
            model.load_state_dict(state["model"])
            start = state["epoch"]
    loss_fn = nn.MSELoss()
    for epoch in range(start, config["epochs"]):
        model.train()
        for i in range(0, len(x), config["batch_size"]):
            opt.zero_grad()
            loss = loss_fn(model(x[i:i + config["batch_size"]]), y[i:i + config["batch_size"]])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = loss_fn(model(vx), vy).item()
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save({"model": model.state_dict(), "epoch": epoch + 1}, Path(d) / "model.pt")
                ckpt = Checkpoint.from_directory(d)
                print(f"epoch {epoch + 1}/{config['epochs']}: validation loss {val:.4f}", flush=True)
            ray.train.report({"epoch": epoch + 1, "val_loss": val}, checkpoint=ckpt)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=1, help="DDP workers (1 CPU each).")
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--storage-path", default=os.environ.get("RAYFLEET_STORAGE") or str(Path.home() / "ray_results"))
    args = p.parse_args()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"epochs": args.epochs, "samples": args.samples, "batch_size": args.batch_size,
                           "lr": args.lr},
        scaling_config=ScalingConfig(num_workers=args.num_workers, use_gpu=False),
        run_config=RunConfig(name="own-code-regression", storage_path=args.storage_path,
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    print(f"final validation loss: {result.metrics['val_loss']:.4f}")
    print(f"checkpoint: {result.checkpoint.path}")


if __name__ == "__main__":
    main()
