"""Dockerfile builds: context, steps, the builder. See ``builder.py`` for the model."""

from __future__ import annotations

from shale.build.builder import Builder, BuildFailed, BuildOptions

__all__ = ["BuildFailed", "BuildOptions", "Builder"]
