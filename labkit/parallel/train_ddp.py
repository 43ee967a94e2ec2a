"""Train the book's GPT data-parallel with labkit's DDP (and optionally ZeRO-1): one script, any launcher.

    python -m labkit.parallel.train_ddp --nproc 2 --steps 20          # spawns 2 local processes itself
    torchrun --nproc_per_node 2 -m labkit.parallel.train_ddp --steps 20
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d \\
             --rdzv_endpoint HOST:29500 -m labkit.parallel.train_ddp     # the same on several nodes

Under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` set) every process joins that group;
otherwise the script launches ``--nproc`` workers on this machine. gloo on CPUs, NCCL when each rank has a GPU.
The global batch (``--batch-size``) is split evenly over the ranks, so the run follows the same trajectory as one
process on the whole batch.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Sequence

import torch
import torch.distributed as dist

from labkit.parallel.launch import init_from_env, is_torchrun, launch, rank_device

__all__ = ["train", "parse_args", "main"]


def train(options: dict[str, Any]) -> dict[str, Any]:
    """Run on every rank: build the book's GPT and data for ``options['profile']``, train ``steps`` steps with labkit
    DDP (+ ZeRO-1 AdamW with ``zero``); returns the losses, step times and this rank's optimizer-state bytes.

    ``options``: profile, steps, batch_size (global), seq_len, lr, bucket_cap_mb, zero, verbose, and optionally
    tokens (1-D LongTensor) with vocab_size, so that a notebook can hand over the tokens it already has."""
    from labkit import zoo
    from labkit.config import get_profile
    from labkit.data import lm_batches
    from labkit.parallel.ddp import DistributedDataParallel
    from labkit.parallel.zero import ZeroRedundancyOptimizer, optimizer_state_bytes
    from labkit.transformer import GPT

    rank, world_size, device = dist.get_rank(), dist.get_world_size(), rank_device()
    profile = get_profile(options.get("profile"))
    batch_size = options.get("batch_size") or profile.batch_size
    if batch_size % world_size:
        raise ValueError(f"the global batch of {batch_size} does not split evenly over {world_size} ranks")
    seq_len = options.get("seq_len") or profile.seq_len
    tokens = options.get("tokens")  # a notebook passes the tokens it has; a script builds them (cached BPE)
    if tokens is None:
        lm = zoo.lm_data(profile)
        tokens, vocab_size = lm.train_tokens, lm.tokenizer.vocab_size
    else:
        vocab_size = options["vocab_size"]
    config = zoo.gpt_config(profile, vocab_size=vocab_size, max_len=seq_len)
    torch.manual_seed(0)
    model = DistributedDataParallel(GPT(config).to(device), bucket_cap_mb=options.get("bucket_cap_mb", 25.0))
    params = list(model.module.parameters())
    lr = options.get("lr") or profile.lr
    optimizer: Any = (ZeroRedundancyOptimizer(params, torch.optim.AdamW, lr=lr, weight_decay=0.1)
                      if options.get("zero") else torch.optim.AdamW(params, lr=lr, weight_decay=0.1))
    batches = lm_batches(tokens, batch_size, seq_len, generator=torch.Generator().manual_seed(0))
    losses, times = [], []
    for step in range(options.get("steps", 20)):
        x, y = next(batches)  # the same global batch on every rank; each takes its slice
        x, y = x.chunk(world_size)[rank].to(device), y.chunk(world_size)[rank].to(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(x, y)
        loss.backward()
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        times.append(time.perf_counter() - start)
        losses.append(float(mean_loss) / world_size)
        if rank == 0 and options.get("verbose", True) and (step % 10 == 0 or step == options.get("steps", 20) - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  {times[-1] * 1e3:.1f} ms/step", flush=True)
    model.remove_hooks()
    return {"rank": rank, "world_size": world_size, "backend": dist.get_backend(), "losses": losses,
            "step_s": sorted(times)[len(times) // 2], "step_times_s": times, "tokens_per_step": batch_size * seq_len,
            "optimizer_state_bytes": (optimizer.state_bytes() if options.get("zero") else optimizer_state_bytes(optimizer)),
            "n_params": sum(p.numel() for p in params)}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes to spawn when not under torchrun")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default: the profile's)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0)
    parser.add_argument("--zero", action="store_true", help="shard AdamW's state with ZeRO-1")
    parser.add_argument("--profile", default=None, help="labkit profile (default: $LABKIT_PROFILE or by device)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before a stuck collective fails")
    parser.add_argument("--json", default=None, help="write rank 0's result to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    options = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "bucket_cap_mb": args.bucket_cap_mb,
               "zero": args.zero, "profile": args.profile}
    if is_torchrun():
        init_from_env(timeout=args.timeout)
        try:
            result = train(options)
        finally:
            dist.destroy_process_group()
    else:
        from labkit.parallel import train_ddp  # by its module name: under ``python -m`` this file is __main__

        result = launch(train_ddp.train, args.nproc, options, timeout=args.timeout or 600.0)[0]
    if result["rank"] == 0:
        print(f"{result['world_size']} ranks ({result['backend']}): final loss {result['losses'][-1]:.4f}, "
              f"median {result['step_s'] * 1e3:.1f} ms/step", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
