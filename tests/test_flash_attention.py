"""labkit.flash_attention (tiled attention, online softmax) and its Triton kernel against
F.scaled_dot_product_attention and labkit's naive scaled_dot_product_attention."""

import json
import os
import textwrap

import pytest
import torch
import torch.nn.functional as F

from labkit.attention import scaled_dot_product_attention
from labkit.bench import peak_memory
from labkit.flash_attention import efficient_attention, efficient_attention_backend, flash_attention
from labkit.kernels import flash_attention_triton as triton_kernel

TOL = {torch.float32: dict(atol=3e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}
DTYPES = list(TOL)


def inputs(batch, L, S, E, Ev=None, *, dtype=torch.float64, seed=0, grad=False):
    """Random query (..., L, E), key (..., S, E) and value (..., S, Ev)."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((*batch, L, E), (*batch, S, E), (*batch, S, E if Ev is None else Ev))
    return [torch.randn(shape, generator=g, dtype=dtype).requires_grad_(grad) for shape in shapes]


def reference_gradients(fn, q, k, v, grad_out):
    return torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)


# ---------------------------------------------------------------------------------------------------------------
# forward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("batch,L,S,E,Ev", [((2, 3), 5, 7, 8, 5), ((), 37, 37, 16, 16), ((3,), 1, 9, 4, 4),
                                            ((2,), 50, 20, 8, 8), ((2,), 20, 50, 8, 3)])
def test_forward_matches_torch_and_naive(dtype, is_causal, batch, L, S, E, Ev):
    q, k, v = inputs(batch, L, S, E, Ev, dtype=dtype)
    ours = flash_attention(q, k, v, is_causal=is_causal, block_q=16, block_k=8)  # L, S not multiples of 16 / 8
    assert ours.shape == (*batch, L, Ev) and ours.dtype == dtype
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=is_causal), **TOL[dtype])
    torch.testing.assert_close(ours, scaled_dot_product_attention(q, k, v, is_causal=is_causal), **TOL[dtype])


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("block_q,block_k", [(1, 1), (1, 7), (7, 1), (3, 5), (16, 16), (1000, 1000)])
def test_any_block_size_gives_the_same_result(is_causal, block_q, block_k):
    q, k, v = inputs((2,), 13, 11, 8)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    ours = flash_attention(q, k, v, is_causal=is_causal, block_q=block_q, block_k=block_k)
    torch.testing.assert_close(ours, expected, **TOL[torch.float64])


@pytest.mark.parametrize("is_causal", [False, True])
def test_custom_scale(is_causal):
    q, k, v = inputs((2,), 9, 9, 8)
    for scale in (0.05, 1.0, 3.0):
        torch.testing.assert_close(
            flash_attention(q, k, v, is_causal=is_causal, scale=scale, block_q=4, block_k=4),
            F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale),
        )


def test_batch_dims_broadcast_and_gradients_reduce():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    ours = flash_attention(q, k, v, block_q=4, block_k=2)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours, expected)
    grad_out = torch.randn_like(expected)
    for a, b, t in zip(torch.autograd.grad(ours, (q, k, v), grad_out),
                       torch.autograd.grad(expected, (q, k, v), grad_out), (q, k, v)):
        assert a.shape == t.shape
        torch.testing.assert_close(a, b)


def test_empty_keys_and_queries_behave_like_torch():
    q, k, v = inputs((2,), 3, 0, 4, 5)
    torch.testing.assert_close(flash_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))  # zeros
    q, k, v = inputs((2,), 0, 3, 4, 5)
    assert flash_attention(q, k, v).shape == (2, 0, 5)


def test_large_scores_do_not_overflow():
    """The running max keeps exp() <= 1: scores of several hundred would overflow a plain exp in float32."""
    q, k, v = inputs((1,), 20, 20, 8, dtype=torch.float32)
    q = q * 60.0
    torch.testing.assert_close(flash_attention(q, k, v, block_q=4, block_k=4),
                               F.scaled_dot_product_attention(q, k, v), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_inputs_accumulate_in_float32(dtype, tol):
    q, k, v = inputs((2,), 33, 21, 16, dtype=torch.float32)
    ours = flash_attention(q.to(dtype), k.to(dtype), v.to(dtype), is_causal=True, block_q=8, block_k=8)
    assert ours.dtype == dtype
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours.float(), expected, atol=tol, rtol=tol)


# ---------------------------------------------------------------------------------------------------------------
# backward


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L,S,block_q,block_k", [(13, 13, 4, 4), (10, 23, 3, 8), (23, 10, 8, 3), (6, 6, 64, 64)])
def test_gradients_match_torch(dtype, is_causal, L, S, block_q, block_k):
    q, k, v = inputs((2, 2), L, S, 8, 6, dtype=dtype, grad=True)
    grad_out = torch.randn(2, 2, L, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    ours = reference_gradients(
        lambda *t: flash_attention(*t, is_causal=is_causal, block_q=block_q, block_k=block_k), q, k, v, grad_out)
    expected = reference_gradients(
        lambda *t: F.scaled_dot_product_attention(*t, is_causal=is_causal), q, k, v, grad_out)
    for name, a, b in zip(("dq", "dk", "dv"), ours, expected):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_float64(is_causal):
    q, k, v = inputs((1,), 5, 4, 3, 2, grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: flash_attention(*t, is_causal=is_causal, scale=0.7, block_q=2, block_k=3), (q, k, v))


def test_backward_saves_no_score_matrix():
    """Everything autograd keeps for backward is linear in L and S: (Q, K, V, O, logsumexp), no (L, S) tensor."""
    L, S = 40, 48
    q, k, v = inputs((1,), L, S, 4, grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        flash_attention(q, k, v, is_causal=True, block_q=8, block_k=8)
    assert sorted(saved) == sorted([(1, L, 4), (1, S, 4), (1, S, 4), (1, L, 4), (1, L)])
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        scaled_dot_product_attention(q, k, v, is_causal=True)
    assert max(saved) >= L * S  # the naive path does keep one: the check above can tell the difference


# ---------------------------------------------------------------------------------------------------------------
# memory


def test_peak_memory_grows_linearly_not_quadratically():
    """Doubling n doubles the tiled path's peak memory (output + logsumexp) but quadruples the naive one's (n x n)."""
    peaks = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small matmuls: one thread keeps the profiled run short on a busy 2-core machine
    try:
        for n in (1024, 2048):
            g = torch.Generator().manual_seed(n)
            q, k, v = (torch.randn(n, d, generator=g) for d in (16, 16, 64))
            peaks[n] = (peak_memory(lambda: flash_attention(q, k, v, block_q=32, block_k=128), "cpu", warmup=0),
                        peak_memory(lambda: scaled_dot_product_attention(q, k, v), "cpu", warmup=0))
    finally:
        torch.set_num_threads(threads)
    tiled_ratio = peaks[2048][0] / peaks[1024][0]
    naive_ratio = peaks[2048][1] / peaks[1024][1]
    assert 1.5 <= tiled_ratio <= 2.5, f"tiled peak memory grew {tiled_ratio:.2f}x for 2x the length: {peaks}"
    assert naive_ratio >= 3.5, f"naive peak memory grew {naive_ratio:.2f}x for 2x the length: {peaks}"
    assert peaks[2048][0] < 0.1 * peaks[2048][1], peaks


# ---------------------------------------------------------------------------------------------------------------
# dispatch and bad inputs


def test_efficient_attention_on_cpu_uses_the_pytorch_path():
    q, k, v = inputs((2, 2), 30, 30, 16, dtype=torch.float32, grad=True)
    assert efficient_attention_backend(q, k, v) == "pytorch"
    ours = efficient_attention(q, k, v, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, expected, **TOL[torch.float32])
    grad_out = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(ours, (q, k, v), grad_out),
                    torch.autograd.grad(expected, (q, k, v), grad_out)):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_triton_support_rules():
    q, k, v = inputs((1,), 4, 4, 64, dtype=torch.float16)
    assert triton_kernel.supports(q, k, v)
    assert not triton_kernel.supports(q.double(), k.double(), v.double())  # float64: no
    assert not triton_kernel.supports(*inputs((1,), 4, 4, 48, dtype=torch.float16))  # not a power of two
    assert not triton_kernel.supports(*inputs((1,), 4, 4, 256, dtype=torch.float16))  # too wide
    assert not triton_kernel.supports(q, k, v.float())  # mixed dtypes
    assert not triton_kernel.supports(q, k, "value")


def test_triton_forward_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = inputs((1,), 4, 4, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="CUDA tensors.*TRITON_INTERPRET=1"):
        triton_kernel.flash_attention_triton(q, k, v)
    with pytest.raises(ValueError, match="head dims"):
        triton_kernel.triton_forward(q.double(), k.double(), v.double(), False, 0.25)


def _bad_calls():
    q, k, v = inputs((2,), 4, 5, 8)
    return [
        (lambda: flash_attention(q.numpy(), k, v), TypeError, "query must be a torch.Tensor"),
        (lambda: flash_attention(q.long(), k, v), TypeError, "floating-point"),
        (lambda: flash_attention(q.float(), k, v), TypeError, "same dtype"),
        (lambda: flash_attention(q[0, 0], k, v), ValueError, r"query must have shape \(\.\.\., L, E\)"),
        (lambda: flash_attention(q, k[..., :4], v), ValueError, "same last dim E"),
        (lambda: flash_attention(q, k, v[:, :3]), ValueError, "same length S"),
        (lambda: flash_attention(q, torch.randn(3, 5, 8, dtype=q.dtype), v), ValueError, "must broadcast"),
        (lambda: flash_attention(q, k, v, is_causal=1), TypeError, "is_causal must be a bool"),
        (lambda: flash_attention(q, k, v, scale="0.1"), TypeError, "scale must be a float"),
        (lambda: flash_attention(q, k, v, scale=float("nan")), ValueError, "scale must be finite"),
        (lambda: flash_attention(q, k, v, block_q=0), ValueError, "block_q must be a positive int"),
        (lambda: flash_attention(q, k, v, block_k=2.5), ValueError, "block_k must be a positive int"),
        (lambda: flash_attention(q, k.to("meta"), v), ValueError, "same device"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_inputs_raise_clear_errors(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------
# the Triton kernel: interpreter on the CPU, and CUDA


_INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, os
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch, torch.nn.functional as F
    from labkit.kernels.flash_attention_triton import flash_attention_triton
    errors = {}
    g = torch.Generator().manual_seed(0)
    for is_causal in (False, True):
        for L, S, E, Ev in ((37, 37, 16, 16), (20, 45, 32, 16), (45, 20, 16, 32)):
            q, k, v = (torch.randn(2, n, d, generator=g, requires_grad=True) for n, d in ((L, E), (S, E), (S, Ev)))
            ours = flash_attention_triton(q, k, v, is_causal=is_causal)
            expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
            grad_out = torch.randn(expected.shape, generator=g)
            grads = torch.autograd.grad(ours, (q, k, v), grad_out)
            expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
            key = f"causal={is_causal} L={L} S={S} E={E} Ev={Ev}"
            errors[key] = [(ours - expected).abs().max().item()] + [
                (a - b).abs().max().item() for a, b in zip(grads, expected_grads)]
        q, k, v = (torch.randn(2, 24, 16, generator=g) for _ in range(3))
        half = flash_attention_triton(q.half(), k.half(), v.half(), is_causal=is_causal)
        assert half.dtype == torch.float16
        errors[f"float16 causal={is_causal}"] = [
            (half.float() - F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)).abs().max().item()]
    print(json.dumps(errors))
""")


def test_triton_kernel_under_the_interpreter(triton_interpreter):
    errors = json.loads(triton_interpreter(_INTERPRETER_SCRIPT).strip().splitlines()[-1])
    assert len(errors) == 8
    for case, case_errors in errors.items():
        tolerance = 2e-3 if case.startswith("float16") else 1e-4
        assert max(case_errors) < tolerance, f"{case}: max abs errors (out, dq, dk, dv) {case_errors}"


# largest shared memory one block may use: T4 (sm_75), A100 (sm_80), H100 (sm_90)
SHARED_MEMORY_LIMIT = {(7, 5): 64 * 1024, (8, 0): 163 * 1024, (9, 0): 227 * 1024}


@pytest.mark.parametrize("capability,dtype,head_dim,is_causal", [((7, 5), torch.float16, 128, True),
                                                                 ((8, 0), torch.bfloat16, 64, False),
                                                                 ((9, 0), torch.float32, 128, True)])
def test_triton_kernel_compiles_for_gpus_and_fits_in_shared_memory(capability, dtype, head_dim, is_causal):
    """Ahead-of-time compilation (no GPU needed) checks the CUDA code path that the interpreter does not run."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.skip("TRITON_INTERPRET is set: this process cannot compile for a GPU")
    compiled = triton_kernel.compile_for_gpu(capability, dtype, head_dim, is_causal)
    assert ".entry _flash_forward_kernel" in compiled.asm["ptx"]
    assert 0 < compiled.metadata.shared <= SHARED_MEMORY_LIMIT[capability]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2), (torch.float32, 1e-4)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("L,S,E", [(256, 256, 64), (200, 333, 128), (333, 200, 32)])
def test_triton_kernel_on_cuda(dtype, tol, is_causal, L, S, E):
    pytest.importorskip("triton")
    q, k, v = (t.cuda() for t in inputs((2, 3), L, S, E, dtype=torch.float32))
    low = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    assert efficient_attention_backend(*low) == "triton"
    ours = efficient_attention(*low, is_causal=is_causal)
    assert ours.dtype == dtype
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    torch.testing.assert_close(ours.float(), expected, atol=tol, rtol=tol)
    grad_out = torch.randn_like(expected)
    grads = torch.autograd.grad(ours, low, grad_out.to(dtype))
    reference = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    expected_grads = torch.autograd.grad(
        F.scaled_dot_product_attention(*reference, is_causal=is_causal), reference, grad_out.to(dtype))
    for a, b in zip(grads, expected_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=10 * tol, rtol=10 * tol)
