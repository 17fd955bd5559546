"""The demo project that `make run` seeds: a decoy-shapes dataset, partly annotated, and an admin account."""

from __future__ import annotations

from app.settings import Settings


def seed_demo(settings: Settings, if_missing: bool = True) -> int:
    print("demo project: not implemented yet")
    return 0
