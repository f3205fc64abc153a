"""``python -m icg`` (and ``accelerate launch -m icg ...``) runs the command line."""

from icg.cli import main

if __name__ == "__main__":
    main()
