"""``python -m halfclose``."""

from halfclose.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
