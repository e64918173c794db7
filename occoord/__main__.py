"""Allow ``python -m occoord``."""

from occoord.cli.main import main

if __name__ == "__main__":
    main()
