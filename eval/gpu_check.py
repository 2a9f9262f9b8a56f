"""The GPU check (issue 16): see nfzoo/gpu_check.py and docs/speed.md ("GPU check").

    PYTHONPATH=. python3 eval/gpu_check.py --out gpu-check-out            # about 5 min on one H100/H200
    PYTHONPATH=. python3 eval/gpu_check.py --out gpu-check-out --quick    # about 2 min, no torch.compile
"""
from nfzoo.gpu_check import main

if __name__ == "__main__":
    main()
