"""``python -m shelfsight.cli`` (and ``torchrun ... -m shelfsight.cli``): the ``shelfsight`` command."""

from shelfsight.cli import main

if __name__ == "__main__":
    main()
