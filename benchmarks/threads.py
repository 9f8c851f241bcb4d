"""Intra-op threads versus problem size: where does a second thread start to pay?

Times one forward pass (no hooks, the fast path) of ``gd`` (linear attention, folded) and
``relu_gd`` (ReLU attention, scores first) at d = 20, n = 40 and 10 layers, for batches from 1
to 4096 prompts, with 1 thread and with all of torch's threads; prints the FLOPs of one block
call, the best-of-N times and their ratio.  ``--load`` runs a busy process on one core
meanwhile (the machine a user shares).  The crossover sets
``constructions.fastpath.THREAD_MIN_FLOPS`` (docs/performance.md).

    python benchmarks/threads.py [--load] [--repeat 7]
"""
import argparse
import multiprocessing as mp
import time

import torch

from constructions import fastpath
from verify.bench import _case


def _busy(stop):
    x = 0
    while not stop.is_set():
        x += 1


def best(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--load", action="store_true", help="keep one core busy with another process")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    stop = mp.Event()
    busy = mp.Process(target=_busy, args=(stop,)) if args.load else None
    if busy:
        busy.start()
    all_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {all_threads} threads{', one core loaded' if busy else ''}; "
          f"best of {args.repeat}; d = 20, n = 40, 10 layers, float64")
    print("| construction | B | FLOPs per block call | 1 thread | all threads | all/1 |")
    print("|---|---|---|---|---|---|")
    try:
        with fastpath.threads(None):  # the policy off: the thread count is set by hand below
            for name in ("gd", "relu_gd"):
                for B in (1, 4, 16, 64, 256, 1024, 4096):
                    c, prep, h = _case(name, 20, 40, B, torch.float64, torch.device("cpu"))
                    n = prep.X.shape[1]
                    flops = B * fastpath.model_flops(c.model, c.n_keys(n), h.shape[1]) // c.model.n_layers
                    run = lambda: c.model(h, c.n_keys(n), norm=n)  # noqa: E731
                    with torch.no_grad():
                        torch.set_num_threads(1)
                        t1 = best(run, args.repeat)
                        torch.set_num_threads(all_threads)
                        tn = best(run, args.repeat)
                    print(f"| {name} | {B} | {flops:.3g} | {t1 * 1e3:.3f} ms | {tn * 1e3:.3f} ms | {tn / t1:.2f} |",
                          flush=True)
    finally:
        torch.set_num_threads(all_threads)
        if busy:
            stop.set()
            busy.join()


if __name__ == "__main__":
    main()
