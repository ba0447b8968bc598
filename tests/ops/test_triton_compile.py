"""Every Triton kernel compiled for an sm_90 (H100) target without a GPU, down to PTX, in a
subprocess that does not use the interpreter; fails if any address is formed from a 32-bit
offset (a tensor with B · T · N ≥ 2^31 elements would wrap around), and checks that the
layers' custom ops have fake implementations that torch.compile traces without graph breaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Compiles each kernel variant that the ops launch and prints, per variant, whether PTX came
# out and the TTIR address computations whose offsets are not 64-bit. The integer arguments are
# typed i32, as Triton types any size below 2^31: the kernels must widen them themselves.
COMPILE_SCRIPT = r"""
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from memrnn.ops import _triton as K
from memrnn.ops.brc import triton as brc
from memrnn.ops.src import triton as src

target = GPUTarget("cuda", 90, 32)
variants = [
    (0, False, False), (0, True, True), (0, False, True), (0, True, False),
    (1, False, False), (1, True, False), (2, False, False), (2, True, False),
    (3, False, True), (3, True, True),
]
if sys.argv[1] == "quick":
    variants = [(0, True, True), (1, True, False), (3, True, True)]
ADDPTR = re.compile(r"tt\.addptr (%\S+), (%\S+) : .*, (tensor<\S+?x(i\d+)>|(i\d+)) loc")


def compile_one(kernel, consts):
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name in ("a_ptr", "b_ptr", "drive_ptr") else "*fp32"
        else:
            sig[name] = "i32"
    used = {k: v for k, v in consts.items() if k in kernel.arg_names}
    out = triton.compile(ASTSource(kernel, sig, constexprs=used), target=target)
    narrow = []
    for line in out.asm["ttir"].splitlines():
        m = ADDPTR.search(line)
        # The fields of the small parameter vector are the only 32-bit offsets allowed.
        if m and (m.group(4) or m.group(5)) != "i64" and m.group(1) != "%prm_ptr":
            narrow.append(line.strip()[:160])
    return {"ptx": ".target sm_90" in out.asm["ptx"], "narrow": narrow}


results = {}
if sys.argv[1] != "quick":
    # float64 accumulation (float64 inputs) for the scan, forward and backward.
    for bwd in (False, True):
        consts = dict(MODE=0, BWD=bwd, FLIP=bwd, COMPLEX=False, HAS_H0=not bwd, HC=1, KIND=0,
                      ACC=tl.float64, CHUNK=64, BLOCK=32)
        results[f"_apply_kernel[float64,bwd={bwd}]"] = compile_one(K._apply_kernel, consts)
for mode, bwd, complex_ in variants:
    consts = dict(MODE=mode, BWD=bwd, FLIP=bwd, COMPLEX=complex_, HAS_H0=not bwd,
                  HC=2 if (complex_ and mode == 0) else 1, KIND=0, ACC=tl.float32,
                  CHUNK=64, BLOCK=32, TILE=32)
    for kernel in (K._summary_kernel, K._apply_kernel):
        results[f"{kernel.__name__}[mode={mode},bwd={bwd},complex={complex_}]"] = compile_one(
            kernel, consts)
for complex_ in (False, True):
    consts = dict(HAS_H0=True, COMPLEX=complex_, HC=2 if complex_ else 1, ACC=tl.float32,
                  TILE=32, BLOCK=32)
    results[f"_carry_kernel[complex={complex_}]"] = compile_one(K._carry_kernel, consts)
for dense in (False, True):
    consts = dict(DENSE=dense, ACC=tl.float32, BLOCK=64)
    for kernel in (brc._bistable_forward, brc._bistable_backward):
        results[f"{kernel.__name__}[dense={dense}]"] = compile_one(kernel, consts)
for straight, detach in ((False, False), (True, True)):
    results[f"_src_backward[{straight},{detach}]"] = compile_one(
        src._src_backward, dict(STRAIGHT=straight, DETACH=detach, ACC=tl.float32, BLOCK=64))
results["_src_forward"] = compile_one(src._src_forward, dict(ACC=tl.float32, BLOCK=64))
print(json.dumps(results))
"""


def _compile_all(which: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, which],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_compiled(results: dict) -> None:
    assert results
    for name, result in results.items():
        assert result["ptx"], f"{name}: no sm_90 PTX"
        assert not result["narrow"], f"{name}: 32-bit address offsets: {result['narrow']}"


def test_kernels_compile_for_sm90_with_64bit_addressing() -> None:
    _check_compiled(_compile_all("quick"))


@pytest.mark.slow
def test_every_kernel_variant_compiles_for_sm90_with_64bit_addressing() -> None:
    _check_compiled(_compile_all("all"))


def test_custom_ops_trace_under_fake_tensors(triton_kernels) -> None:
    # Shapes and dtypes from the fake implementations only: no kernel runs.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from memrnn.ops.lru.triton import lru_layer
    from memrnn.ops.mingru.triton import mingru_layer
    from memrnn.ops.mru.triton import mru_layer
    from memrnn.ops.scan.triton import linear_scan

    with FakeTensorMode():
        B, T, D, N = 2, 4096, 8, 16
        x = torch.empty(B, T, D, dtype=torch.bfloat16)
        h = linear_scan(torch.empty(1, T, N), torch.empty(B, T, N), torch.empty(B, N))
        assert h.shape == (B, T, N)
        y, h_last, rate = mru_layer(
            x, torch.empty(2 * N, D), None, torch.empty(B, N), torch.empty(3, N), None,
            0.0, "atan", 1.0,
        )  # fmt: skip
        assert y.shape == (B, T, 3) and h_last.shape == (B, N) and rate.shape == ()
        assert mingru_layer(x.float(), torch.empty(2 * N, D), None, torch.empty(B, N)).shape == (
            B,
            T,
            N,
        )
        y, h_last = lru_layer(
            x.float(), torch.empty(2 * N, D), torch.empty(2, N), torch.empty(N),
            torch.empty(B, 2 * N), torch.empty(D, 2 * N), torch.empty(D),
        )  # fmt: skip
        assert y.shape == (B, T, D) and h_last.shape == (B, 2 * N)


def test_torch_compile_traces_a_layer_without_graph_breaks(
    triton_kernels, triton_reference
) -> None:
    from memrnn.ops.mingru.triton import mingru_layer
    from memrnn.ops.scan.triton import linear_scan

    def model(x, weight, h0):
        h = mingru_layer(x, weight, None, h0, chunk=4, block=8)
        return linear_scan(torch.full_like(h, 0.5), h, h0, chunk=4, block=8).sum()

    gen = torch.Generator().manual_seed(0)
    x, weight, h0 = (
        torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_()
        for s in ((1, 5, 3), (8, 3), (1, 4))
    )
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x, weight, h0)
    grads = torch.autograd.grad(loss, (x, weight, h0))
    h_ref = triton_reference.mingru_layer(x, weight, None, h0)
    loss_ref = triton_reference.scan(torch.full_like(h_ref, 0.5), h_ref, h0).sum()
    ref_grads = torch.autograd.grad(loss_ref, (x, weight, h0))
    torch.testing.assert_close(loss, loss_ref)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)
