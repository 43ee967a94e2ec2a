"""Parallel training on ``torch.distributed``: launcher, collectives, DDP, ZeRO-1, tensor and pipeline parallelism.

Everything runs on CPU processes with gloo and on GPUs with NCCL, launched from a notebook
(:func:`launch`, :class:`Cluster`) or by ``torchrun`` (:func:`init_from_env`).
"""

from labkit.parallel.collectives import (bus_bandwidth, fit_alpha_beta, naive_all_reduce, naive_all_reduce_time,
                                         ring_all_reduce, ring_all_reduce_time, ring_bytes_per_rank,
                                         simulate_ring_reduce_scatter)
from labkit.parallel.ddp import DistributedDataParallel, allreduce_gradients_per_parameter, assign_buckets
from labkit.parallel.launch import (Cluster, WorkerError, choose_backend, free_port, init_from_env, is_torchrun,
                                    launch, rank_device)
from labkit.parallel.pipeline import bubble_fraction, gpipe_schedule, run_pipeline_step, timeline_bubble
from labkit.parallel.tensor_parallel import ColumnParallelLinear, RowParallelLinear, TensorParallelMLP
from labkit.parallel.zero import ZeroRedundancyOptimizer, zero_memory_per_rank

__all__ = ["launch", "Cluster", "WorkerError", "free_port", "choose_backend", "init_from_env", "is_torchrun",
           "rank_device", "ring_all_reduce", "naive_all_reduce", "ring_all_reduce_time", "naive_all_reduce_time",
           "ring_bytes_per_rank", "fit_alpha_beta", "bus_bandwidth", "simulate_ring_reduce_scatter",
           "DistributedDataParallel", "assign_buckets", "allreduce_gradients_per_parameter",
           "ZeroRedundancyOptimizer", "zero_memory_per_rank", "ColumnParallelLinear", "RowParallelLinear",
           "TensorParallelMLP", "bubble_fraction", "gpipe_schedule", "timeline_bubble", "run_pipeline_step"]
