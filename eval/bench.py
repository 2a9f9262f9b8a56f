"""Benchmark nfzoo's NFNets against timm's on the same weights; see nfzoo/benchmark.py.

    PYTHONPATH=. python eval/bench.py                 # CPU float32, small defaults (< 5 min on 2 cores)
    PYTHONPATH=. python eval/bench.py --device cuda   # bf16 + channels_last, batch 256 at 256 px
"""
from nfzoo.benchmark import main

if __name__ == "__main__":
    main()
