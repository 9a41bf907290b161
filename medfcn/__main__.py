"""``python -m medfcn`` (and ``torchrun -m medfcn``) runs the command-line interface."""

from medfcn.cli.main import main

if __name__ == "__main__":
    main()
