"""``python -m mlca ...`` (and ``torchrun -m mlca train ...``) run the CLI."""

from mlca.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
