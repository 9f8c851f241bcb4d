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


def test_end_to_end_and_latency_rows_are_reported():
    r = bench.bench_one("relu_gd", d=3, n=8, B=4, calls=True)
    for k in ("predict_seconds", "unchecked_seconds", "trace_seconds", "naive_seconds"):
        assert r[k] > 0, k
    assert (r["tl_seconds"] > 0) != bool(r["tl_note"])  # timed, or the reason it is not
    lat = bench.latency(d=3, n=8)
    assert lat["numpy_seconds"] > 0 and lat["predict_seconds"] > 0
    text = bench.report([r, lat])
    assert "naive torch / model" in text and "| relu_gd | 4 |" in text and "numpy GD loop" in text


@pytest.mark.parametrize("name", constructions.names())
def test_the_naive_peer_computes_the_same_stream(name):
    """verify.peers.naive_forward (head by head, full scores) is the construction's function too."""
    from verify.peers import naive_forward

    c, prep, h = bench._case(name, 3, 6, 2, torch.float64, torch.device("cpu"))
    n = prep.X.shape[1]
    with torch.no_grad():
        want = c.model(h, c.n_keys(n), norm=n)
        got = naive_forward(c, h, c.n_keys(n), n)
    scale = 1 + want.abs().max()
    assert float((got - want).abs().max()) <= 1e-12 * scale * len(c.blocks)
