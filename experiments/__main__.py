from common.errors import run_main
from experiments.runner import main

if __name__ == "__main__":
    import sys

    run_main(main, sys.argv[1:])
