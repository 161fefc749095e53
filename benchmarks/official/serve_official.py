"""Runs the OFFICIAL X-VLA server (``deploy.py`` at 2c4fedf: FastAPI ``/act``, PyTorch eager) on CPU.

Executed by the official venv's Python (see ``setup_official_env.sh``), never by ours: it imports
nothing from this project. It only pins the thread count, then hands over to the official
``deploy.py`` unchanged, so what is measured is the official server as its users start it::

    VENV/bin/python benchmarks/official/serve_official.py --code CODE_DIR --threads 2 -- \\
        --model_path CKPT --processor_path PROC --device cpu --host 127.0.0.1 --port 8010 --output_dir LOGDIR
"""

import argparse
import os
import runpy
import sys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", required=True, help="folder with the official deploy.py and models/")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (and OMP/MKL threads)")
    p.add_argument("deploy_args", nargs=argparse.REMAINDER, help="-- then deploy.py's own arguments")
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    print(f"serve_official: torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    deploy_args = args.deploy_args[1:] if args.deploy_args[:1] == ["--"] else args.deploy_args
    code = os.path.abspath(args.code)
    sys.path.insert(0, code)
    os.chdir(code)
    sys.argv = [os.path.join(code, "deploy.py"), *deploy_args]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
