"""IMDB reading, tokenizer, vocabulary, encoding and batching."""
import numpy as np
import pytest

from helpers import make_rng, write_jsonl_gz
from qlnumba.data import (PAD, UNK, DataError, Vocabulary, bucket_batches, encode_corpus, load_imdb,
                          pad_batch, sorted_batches, tokenize)


def test_load_from_a_folder_the_test_wrote(tiny_imdb):
    data = load_imdb(tiny_imdb)
    texts, labels = data["train"]
    assert len(texts) == 10 and labels.tolist() == [i % 2 for i in range(10)]
    assert texts[1] == "Review 1<br />Good!"
    assert len(data["test"][0]) == 4
    sample, sample_labels = load_imdb(tiny_imdb, ("train",), limit=4)["train"]
    assert len(sample) == 4 and set(sample) <= set(texts)


def test_environment_variable_points_at_the_data(tiny_imdb, monkeypatch):
    monkeypatch.setenv("QLNUMBA_IMDB_DIR", str(tiny_imdb))
    assert len(load_imdb(splits=("test",))["test"][0]) == 4


def test_missing_and_malformed_data_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_imdb(tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing"):
        load_imdb(tmp_path)
    (tmp_path / "train.jsonl.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="could not read"):
        load_imdb(tmp_path, ("train",))
    write_jsonl_gz(tmp_path / "train.jsonl.gz", [{"review": "x", "label": 0}])
    with pytest.raises(DataError, match="lacks"):
        load_imdb(tmp_path, ("train",))
    write_jsonl_gz(tmp_path / "train.jsonl.gz", [{"text": "x", "label": 3}])
    with pytest.raises(DataError, match="0 or 1"):
        load_imdb(tmp_path, ("train",))


def test_tokenizer():
    assert tokenize("A GREAT film<br /><br />Don't miss it!!") == \
        ["a", "great", "film", "don't", "miss", "it", "!", "!"]
    assert tokenize("Café au lait, 10/10.") == ["café", "au", "lait", ",", "10", "/", "10", "."]
    assert tokenize("   ") == []


def test_vocabulary_frequency_order_size_and_unknowns():
    vocab = Vocabulary.build([["b", "a", "b"], ["c", "b", "a", "d"]], max_size=4, min_freq=1)
    assert vocab.itos == ["<pad>", "<unk>", "b", "a"]
    assert vocab.encode(["a", "zzz", "b"]).tolist() == [3, UNK, 2]
    assert Vocabulary.build([["x", "y", "y"]], min_freq=2).itos == ["<pad>", "<unk>", "y"]
    for bad in (["a", "b"], ["<pad>", "<unk>", "a", "a"], ["<pad>", "<unk>", 3],  # 3: from a JSON file
                ["<pad>", "<unk>", ["a"]]):                                    # was a TypeError
        with pytest.raises(ValueError, match="a vocabulary is strings that start with"):
            Vocabulary(bad)
    # a text where a list of tokens goes: its characters would have been the tokens
    with pytest.raises(ValueError, match=r"each of token_lists must be a list of tokens \(tokenize"):
        Vocabulary.build(["a moving film", "a dull one"])
    with pytest.raises(ValueError, match="tokens must be a list of tokens"):
        vocab.encode("a moving film")
    with pytest.raises(ValueError, match="tokens must be str"):      # were UNK, silently
        vocab.encode(["a", 3])
    with pytest.raises(ValueError, match="tokens must be str"):      # was a TypeError
        Vocabulary.build([[["a"]]])
    with pytest.raises(ValueError, match=r"max_size \(with pad and unk\) must be an integer >= 2, got 2.5"):
        Vocabulary.build([["a"]], max_size=2.5)


def test_encode_truncates_from_either_end_and_never_leaves_a_row_empty():
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b", "c"])
    rows = [["a", "b", "c"], [], ["c"]]
    start = encode_corpus(rows, vocab, max_len=2, keep="start")
    end = encode_corpus(rows, vocab, max_len=2, keep="end")
    assert start.row(0).tolist() == [2, 3] and end.row(0).tolist() == [3, 4]
    assert start.row(1).tolist() == [UNK]
    assert start.lengths.tolist() == [2, 1, 1]
    assert start.ids.dtype == np.int32 and start.offsets.dtype == np.int64


def test_batching_keeps_every_review_exactly_once():
    rng = make_rng(30)
    lengths = rng.integers(1, 300, 1003)
    padding = lambda batches: sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    random_order = np.array_split(rng.permutation(1003), 32)
    for pool_batches in (5, 50):
        batches = bucket_batches(lengths, 32, rng, pool_batches=pool_batches)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1003))
        assert max(len(b) for b in batches) == 32
        # buckets keep padding far below what a random order gives
        assert padding(batches) < 0.5 * padding(random_order)
    assert padding(batches) < 0.05 * lengths.sum()         # one pool holds the whole set
    ev = sorted_batches(lengths, 100)
    assert sorted(np.concatenate(ev).tolist()) == list(range(1003))


def test_pad_batch():
    vocab = Vocabulary(["<pad>", "<unk>", "a", "b"])
    corpus = encode_corpus([["a"], ["a", "b", "b"]], vocab)
    ids, lengths = pad_batch(corpus, np.array([1, 0]))
    assert ids.tolist() == [[2, 3, 3], [2, PAD, PAD]] and lengths.tolist() == [3, 1]
