"""`python -m dcgan COMMAND ...`: the same as the `dcgan` console script (see dcgan.tools.cli)."""

from dcgan.tools.cli import main

if __name__ == "__main__":
    main()
