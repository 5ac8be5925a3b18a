"""`python -m dcgan COMMAND ...`: the same as the `dcgan` console script (see dcgan.cli)."""

from dcgan.cli import main

if __name__ == "__main__":
    main()
