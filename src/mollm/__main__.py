"""``python -m mollm`` runs the command line (e.g. under ``torchrun -m mollm`` or ``accelerate launch -m mollm``)."""

from mollm.cli import main

if __name__ == "__main__":
    main()
