"""Where the shared data sets live: the one lookup every module, tool, test and job uses.

The data sets (LFW, MFR2, test photos; see ``SOURCES.md`` there) are never part of the
repository.  They are found, in this order:

1. ``$MASKTHEFACE_DATA`` when set (and then *only* there: pointing it at an empty or absent
   folder is how a test or a user says "no data");
2. ``<checkout>/../shared/data``, beside the repository this package was imported from;
3. ``../shared/data`` relative to the current directory.

A job submitted with ``ray job submit`` runs in a copy of its working directory, where
neither 2 nor 3 exists: set ``MASKTHEFACE_DATA`` in its runtime environment.
"""
from __future__ import annotations

import os
from pathlib import Path

#: the environment variable that points at the data folder
DATA_ENV = "MASKTHEFACE_DATA"
#: what to tell a user when the data is not found
DATA_HINT = f"set {DATA_ENV} or place the data sets in ../shared/data"


def data_candidates() -> tuple[Path, ...]:
    """The folders looked at, in order (see the module docstring)."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return (Path(env).expanduser(),)
    beside_checkout = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    beside_cwd = Path.cwd().parent / "shared" / "data"
    return tuple(dict.fromkeys(p.resolve() for p in (beside_checkout, beside_cwd)))


def shared_data(*parts: str | os.PathLike, required: bool = False) -> Path | None:
    """The data folder (or ``<data>/<parts...>``) as an absolute path, or None when absent.

    ``required=True`` raises FileNotFoundError naming where it looked instead of returning
    None.  E.g. ``shared_data("lfw", "pairs.txt")``.
    """
    cands = data_candidates()
    for root in cands:
        if root.is_dir():
            p = root.joinpath(*parts).resolve() if parts else root.resolve()
            if p.exists():
                return p
            if required:
                raise FileNotFoundError(f"{Path(*parts) if parts else ''} not found in the data folder {root}")
            return None
    if required:
        looked = ", ".join(str(c) for c in cands)
        raise FileNotFoundError(f"shared data folder not found (looked in {looked}); {DATA_HINT}")
    return None


def inside_shared_data(path: str | os.PathLike) -> bool:
    """True when ``path`` lies in (or is) the shared data folder, which nothing may write into."""
    root = shared_data()
    if root is None:
        return False
    p = Path(path).expanduser().resolve()
    return p == root or root in p.parents
