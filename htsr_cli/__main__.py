"""`python -m htsr_cli ...` (and `torchrun ... -m htsr_cli ...`): the `htsr` command."""

from htsr_cli.cli import main

if __name__ == "__main__":
    main()
