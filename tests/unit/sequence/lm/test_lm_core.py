"""The language-model core without gRPC: corpus, PTB resolution, checkpoints, exact resume, perplexity,
sampling filters, embedding distances."""

import gzip

import pytest
import torch
from nnprobe_services.errors import FailedPrecondition, NotFound
from nnprobe_services.sequence.lm import checkpoints, corpus, embeddings, sampling
from nnprobe_services.sequence.lm.model import TrainingConfig
from nnprobe_services.sequence.lm.training import Trainer, steps_per_epoch


def test_tokenisation_follows_the_notebook():
    c = corpus.from_texts("c", "c", {"train": "a b\n\nb c\n", "valid": "a z\n"}, "/")
    assert c.words == ["a", "b", "<eos>", "c", "<unk>"]
    assert c.splits["train"].ids.tolist() == [0, 1, 2, 1, 3, 2]
    assert c.splits["valid"].ids.tolist() == [0, 4, 2] and c.splits["valid"].unknown == 1


def test_notebook_batches_per_epoch():
    assert steps_per_epoch(929_589, 20, 30) == 1549
    assert corpus.batchify(torch.arange(10), 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_ptb_checksums_and_counts(shared_dir):
    paths = corpus.resolve_ptb(shared_dir / "data/ptb", shared_dir, shared_dir, download_timeout=0)
    assert corpus.verify_ptb_checksums(paths) == {"train": True, "valid": True, "test": True}
    ptb = corpus.load_ptb(paths)
    assert ptb.vocab_size == 10_000 and ptb.words[26] == "<unk>"
    assert {k: v.tokens for k, v in ptb.splits.items()} == {"train": 929_589, "valid": 73_760, "test": 82_430}


def test_missing_ptb_names_files_and_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "ptb_search_dirs", lambda *a: [tmp_path / "one", tmp_path / "two"])
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "ptb.train.txt.gz").write_bytes(gzip.compress(b"x\n"))
    with pytest.raises(FailedPrecondition) as info:
        corpus.resolve_ptb(None, tmp_path, tmp_path, download_timeout=0)
    message = str(info.value)
    assert "ptb.valid.txt.gz, ptb.test.txt.gz" in message and str(tmp_path / "two") in message


def test_tampered_ptb_is_refused(tmp_path):
    for split in corpus.SPLITS:
        (tmp_path / f"ptb.{split}.txt.gz").write_bytes(gzip.compress(b"a b\n"))
    paths = corpus.resolve_ptb(tmp_path, tmp_path, tmp_path, download_timeout=0)
    with pytest.raises(FailedPrecondition, match="sha256"):
        corpus.load_ptb(paths)


def test_unknown_upload_is_not_found(tmp_path):
    store = corpus.CorpusStore(tmp_path, tmp_path, None, 0)
    with pytest.raises(NotFound):
        store.get("corpus-nope")
    saved = store.save("n", {"train": "a b\n"})
    fresh = corpus.CorpusStore(tmp_path, tmp_path, None, 0)
    assert fresh.get(saved.corpus_id).words == saved.words


def test_checkpoint_round_trip_and_corruption(tmp_path):
    path = tmp_path / "c.pt"
    checkpoints.save(path, {"x": torch.arange(5)})
    assert checkpoints.load(path)["x"].tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match="corrupted"):
        checkpoints.load(path)


def tiny_data():
    g = torch.Generator().manual_seed(0)
    return {
        "train": torch.randint(0, 30, (2_000,), generator=g),
        "valid": torch.randint(0, 30, (300,), generator=g),
        "test": torch.randint(0, 30, (300,), generator=g),
    }


CONFIG = TrainingConfig(
    embed_size=8,
    hidden_size=12,
    num_layers=2,
    epochs=2,
    batch_size=4,
    sequence_length=7,
    dropout=0.25,
    log_interval=4,
    checkpoint_interval=9,
    eval_batch_size=3,
)


def test_resume_from_any_checkpoint_is_bit_identical():
    vocab = [str(i) for i in range(30)]
    data = tiny_data()
    saved = {}
    events = []
    full = Trainer(CONFIG, vocab, data, torch.device("cpu"))
    assert full.run(events.append, on_checkpoint=lambda t: saved.setdefault(t.step, t.checkpoint()))
    for step in (9, full.per_epoch, 81):  # mid-epoch, epoch end (71), second epoch
        resumed_events = []
        resumed = Trainer(CONFIG, vocab, data, torch.device("cpu"), checkpoint=saved[step])
        assert resumed.run(resumed_events.append)
        for name, value in full.model.state_dict().items():
            assert torch.equal(value, resumed.model.state_dict()[name]), name
        tail = [(e.kind, e.step, e.loss, e.grad_norm, e.valid_perplexity) for e in events if e.step > step]
        assert [(e.kind, e.step, e.loss, e.grad_norm, e.valid_perplexity) for e in resumed_events] == tail


def test_learning_rate_schedule():
    config = TrainingConfig(learning_rate=20, lr_decay=0.5, lr_decay_start_epoch=4)
    assert [config.learning_rate_at(e) for e in range(1, 8)] == [20, 20, 20, 20, 10, 5, 2.5]


def test_sampling_filters():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(sampling.filter_logits(logits, 1.0, 2, 1.0)[2:]).all()
    kept = sampling.filter_logits(logits, 1.0, 0, 0.7).exp()
    assert kept[:2].tolist() == pytest.approx([0.5, 0.3]) and kept[2:].sum() == 0
    hot = sampling.filter_logits(logits, 2.0, 0, 1.0).exp()
    root = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).sqrt()
    assert hot.tolist() == pytest.approx((root / root.sum()).tolist(), rel=1e-6)


def test_embedding_distances_closed_form():
    table = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [-3.0, -4.0]])
    d = embeddings.distance(table, 0, 2)
    assert (d.euclidean, d.cosine_similarity, d.norm_a, d.norm_b) == (5.0, 1.0, 5.0, 10.0)
    assert embeddings.distance(table, 0, 3).cosine_similarity == -1.0
    assert embeddings.nearest(table, 0, 2, "euclidean") == [(1, 5.0), (2, 5.0)]
    with pytest.raises(NotFound, match="army"):
        embeddings.word_id({"army": 0, "arms": 1}, "armyy", "word_a")


def test_the_largest_seed_is_accepted():
    """Seeds are uint64 on the wire; the per-rank mixing must not overflow the generator's seed."""
    from nnprobe_services.sequence.lm.model import TrainingConfig
    from nnprobe_services.sequence.lm.training import Trainer

    words = ["a", "b", "c", "<eos>"] * 50
    ids = torch.tensor([i % 4 for i in range(200)])
    config = TrainingConfig(embed_size=4, hidden_size=4, batch_size=2, sequence_length=3, seed=2**64 - 1)
    Trainer(config, words[:4], {"train": ids, "valid": ids, "test": ids}, torch.device("cpu"), None)
