"""shale: a daemonless, Docker-compatible container image engine."""
__version__ = "0.1.0"
