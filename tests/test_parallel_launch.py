"""The launcher: results by rank, a failing rank becomes an error (never a hang), timeouts, torchrun detection."""

from __future__ import annotations

import importlib
import os
import time

import pytest

from labkit import parallel
from labkit.parallel import workers

launch_module = importlib.import_module("labkit.parallel.launch")  # the module, not the function


def test_failing_rank_raises_worker_error_quickly_and_cleans_up():
    start = time.monotonic()
    with pytest.raises(parallel.WorkerError, match=r"(?s)rank 1 of 2 failed.*deliberate failure on rank 1") as info:
        parallel.launch(workers.fail_on_rank, 2, 1, timeout=30)
    assert info.value.rank == 1
    assert time.monotonic() - start < 60  # start-up included; the barrier on rank 0 never completes on its own


def test_cluster_runs_in_every_rank_then_times_out_and_stays_closed():
    cluster = parallel.Cluster(2, timeout=30)
    try:
        reports = cluster.run(workers.report_environment)
        assert [r["rank"] for r in reports] == [0, 1]
        assert {r["world_size"] for r in reports} == {2} and {r["backend"] for r in reports} == {"gloo"}
        assert reports[0]["pid"] != reports[1]["pid"] and {r["threads"] for r in reports} == {1}
        processes = list(cluster._processes)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="did not finish"):
            cluster.run(time.sleep, 60, timeout=1.5)
        assert time.monotonic() - start < 15
        assert all(not p.is_alive() for p in processes)
        with pytest.raises(RuntimeError, match="closed"):
            cluster.run(workers.report_environment)
    finally:
        cluster.close()


def test_functions_that_spawned_workers_cannot_import_are_refused_before_starting():
    with pytest.raises(ValueError, match="importable module"):
        parallel.launch(lambda: 1, 2)

    def local():
        return 1

    with pytest.raises(ValueError, match="importable module"):
        parallel.launch(local, 2)
    with pytest.raises(ValueError, match="world_size must be an int >= 1"):
        parallel.Cluster(0)
    with pytest.raises(TypeError, match="callable"):
        parallel.launch(3, 2)


def test_backend_choice_and_free_port(monkeypatch):
    assert parallel.choose_backend(2) in ("gloo", "nccl")
    assert parallel.choose_backend(2, "gloo") == "gloo"
    with pytest.raises(ValueError, match="'gloo', 'nccl'"):
        parallel.choose_backend(2, "mpi")
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert parallel.choose_backend(2) == "gloo"
    with pytest.raises(ValueError, match="one GPU per rank"):
        parallel.choose_backend(2, "nccl")
    port = parallel.free_port()
    assert 0 < port < 65536


def test_torchrun_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert not parallel.is_torchrun()
    with pytest.raises(RuntimeError, match="missing RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT"):
        parallel.init_from_env()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(parallel.free_port()))
    assert parallel.is_torchrun()
    import torch.distributed as dist

    try:
        assert parallel.init_from_env(timeout=10) == (0, 1)  # a group of one, through env://
        assert parallel.init_from_env() == (0, 1)  # already initialised: joined once
    finally:
        dist.destroy_process_group()


def test_timeout_must_be_positive(monkeypatch):
    with pytest.raises(ValueError, match="positive number of seconds"):
        launch_module._timeout_s(0)
    monkeypatch.setenv(launch_module.TIMEOUT_ENV, "7")
    assert launch_module._timeout_s(None) == 7.0
    assert os.environ[launch_module.TIMEOUT_ENV] == "7"


def test_a_port_taken_after_it_was_chosen_is_retried(monkeypatch):
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        real_free_port = launch_module.free_port
        monkeypatch.setattr(launch_module, "free_port", lambda host: next(ports, None) or real_free_port(host))
        with parallel.Cluster(2, timeout=30) as cluster:
            assert cluster.port != taken.getsockname()[1]
            assert [r["rank"] for r in cluster.run(workers.report_environment)] == [0, 1]
