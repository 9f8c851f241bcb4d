"""icl-verify bench: structure of the report and the FLOP count (no timing assertions)."""
import pytest
import torch

import constructions
from constructions import registry
from constructions.fastpath import FOLD_GAIN
from constructions.transformer import Attention
from verify import bench
from verify.cli import main


def test_bench_one_reports_every_figure():
    r = bench.bench_one("gd", d=4, n=8, B=16)
    assert r["layers"] == 10 and r["B"] == 16 and r["seconds"] > 0 and r["ref_seconds"] > 0
    assert r["flop_rate"] == pytest.approx(bench.flops(constructions.gd(4, 10, 0.01), 8, 9) * 16 / r["seconds"])
    text = bench.report([r])
    assert "matmul peak" in text and "% of matmul peak" in text and "| gd | 4 | 8 | 16 |" in text


@pytest.mark.parametrize("name", constructions.names())
def test_every_construction_has_a_bench_row(name):
    assert registry.entry(name).bench is not None
    r = bench.bench_one(name, d=3, n=8, B=4)
    assert r["seconds"] > 0 and r["ref_seconds"] > 0 and r["flop_rate"] > 0 and r["mem_bytes"] > 0
    assert r["n"] == (registry.entry(name).bench.n or 8)


def test_flop_count_follows_the_evaluation_order():
    a = constructions.gd(20, 1, 0.01).model.blocks[0].attn  # D = 21, H = 1, E = 20
    T, S = 41, 40
    per_head = 2 * 20 * 21 * (T + 2 * S) + 2 * 20 * 20 * (S + T) + 2 * T * 20 * 21
    folded = 2 * S * 21**2 + 4 * 21**3 + 2 * T * 21**2
    assert a.cost(T, S) == per_head and a.folded_cost(T, S) == folded
    assert a.flops(T, S) == (folded if folded <= FOLD_GAIN * per_head else per_head)
    big = constructions.ridge_sherman_morrison(4, 0.5, 3).blocks  # wide D, thin heads: per-head order
    lin = next(b.attn for b in big if b.attn is not None and b.attn.kind == "linear")
    A = Attention(lin)
    assert A.flops(3, 3) == A.cost(3, 3) < A.folded_cost(3, 3)


def test_cuda_request_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error path does not apply")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["check", "vonoswald23-prop1", "--device", "cuda", "--prompts", "1"]) == 2
