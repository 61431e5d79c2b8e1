"""`python -m zerospeed ...` runs the `zerospeed` command line."""

from zerospeed.launcher.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
