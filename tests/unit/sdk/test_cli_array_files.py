"""Array files named on the command line: whatever the file holds (random bytes, a pickle, Python objects,
an archive where one array is wanted or the reverse, a folder, nothing), the command stops with a usage
error (exit status 2) naming its option, before any call; good files are read as numpy.load reads them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nnprobe.cli import main
from nnprobe.cli.arrays import load_archive, load_array
from nnprobe.cli.parsing import UsageError

#: Commands that read one .npy file, with the option that names it (the address is never reached).
ARRAY_OPTIONS = [
    (["rnn", "gradients", "--model", "m", "--input-file"], "--input-file"),
    (["rnn", "forward", "--inputs"], "--inputs"),
    (["attention", "equivariance", "--x"], "--x"),
]
UNREACHABLE = ["--address", "127.0.0.1:9", "--timeout", "5"]


def _bad_files(folder):
    objects = folder / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    pickled = folder / "pickled.npy"
    pickled.write_bytes(pickle.dumps([1, 2, 3]))
    archive = folder / "archive.npz"
    np.savez(archive, a=np.ones(3))
    missing = folder / "no"
    return {"objects": objects, "pickle": pickled, "archive": archive, "folder": folder, "missing": missing}


@pytest.mark.parametrize(("command", "option"), ARRAY_OPTIONS, ids=[o for _, o in ARRAY_OPTIONS])
@pytest.mark.parametrize("kind", ["objects", "pickle", "archive", "folder", "missing"])
def test_an_unusable_array_file_is_a_usage_error_naming_its_option(command, option, kind, tmp_path, capsys):
    path = _bad_files(tmp_path)[kind]
    assert main([*command, str(path), *UNREACHABLE]) == 2
    error = capsys.readouterr().err
    assert f"error: {option}" in error and str(path) in error and "Traceback" not in error


def test_weights_want_an_archive_and_say_so(tmp_path, capsys):
    single = tmp_path / "w.npy"
    np.save(single, np.ones(3))
    assert main(["rnn", "forward", "--weights", str(single), *UNREACHABLE]) == 2
    assert "--weights" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"--weights: .* is one array"):
        load_archive(str(single), "--weights")


def test_good_files_are_what_numpy_saved(tmp_path):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", array)
    np.savez(tmp_path / "w.npz", w=array, b=array[0])
    assert np.array_equal(load_array(str(tmp_path / "a.npy"), "--x"), array)
    read = load_archive(str(tmp_path / "w.npz"), "--weights")
    assert set(read) == {"w", "b"} and np.array_equal(read["b"], array[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=400), header=st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04"]))
def test_any_bytes_are_read_or_refused_naming_the_option(content, header, tmp_path):
    path = tmp_path / "any.npy"
    path.write_bytes(header + content)
    for read in (load_array, load_archive):
        try:
            read(str(path), "--opt")
        except UsageError as error:
            assert str(error).startswith("--opt: ")
