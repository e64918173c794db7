"""Allow ``python -m occoord``."""

from occoord.cli import main

if __name__ == "__main__":
    main()
