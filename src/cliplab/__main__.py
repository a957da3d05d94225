"""``python -m cliplab`` (also what ``torchrun -m cliplab`` runs)."""

from cliplab.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
