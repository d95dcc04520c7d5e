"""NumPy files named on the command line (``--inputs x.npy``, ``--weights w.npz``): read without unpickling,
and every file that cannot be used is a usage error naming its option."""

from __future__ import annotations

import zipfile

import numpy as np

from nnprobe.cli.parsing import UsageError


def _load(path: str, option: str) -> object:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UsageError(f"{option}: no such file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{option}: {path} is a folder; give a .npy or .npz file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        reason = "it holds Python objects" if "allow_pickle" in str(error) else str(error)
        raise UsageError(
            f"{option}: {path} is not a NumPy file nnprobe can read ({reason}); save numbers with numpy.save"
        ) from None


def load_array(path: str, option: str) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` given with ``option``. ``UsageError`` naming ``option`` when
    the file is missing, is no NumPy file, holds Python objects (never unpickled) or is an ``.npz``
    archive."""
    loaded = _load(path, option)
    if not isinstance(loaded, np.ndarray):
        loaded.close()  # type: ignore[attr-defined]
        raise UsageError(f"{option}: {path} is an .npz archive; give one array saved with numpy.save (.npy)")
    return loaded


def load_archive(path: str, option: str) -> dict[str, np.ndarray]:
    """The named arrays of the ``.npz`` archive ``path`` given with ``option``; ``UsageError`` naming
    ``option`` as ``load_array`` does, or when ``path`` is a single ``.npy`` array."""
    loaded = _load(path, option)
    if isinstance(loaded, np.ndarray):
        raise UsageError(f"{option}: {path} is one array; give an .npz archive saved with numpy.savez")
    with loaded as archive:  # type: ignore[attr-defined]
        try:
            return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            reason = "it holds Python objects" if "allow_pickle" in str(error) else str(error)
            raise UsageError(f"{option}: {path} has an array nnprobe cannot read ({reason})") from None
