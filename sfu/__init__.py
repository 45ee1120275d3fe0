"""sfu: a media node (SFU) for live-commerce co-streaming.

The data path lives in the private Cython extension ``sfu._native``. There is no
pure-Python fallback: if the extension is missing the import fails loudly.
"""

__version__ = "0.1.0"

try:
    from sfu import _native  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "sfu._native (the Cython engine) is not built. Build it with `make build` "
        "(or `pip install -e .` / `python setup.py build_ext --inplace`) "
        f"from the repository root. Original error: {exc}"
    ) from exc
