"""Data: IMDB, Fashion-MNIST and Tiny Shakespeare reading, tokenizer and vocabulary, compact corpora, length-bucketed batches."""
from .batching import bucket_batches, pad_batch, sorted_batches
from .fashion_mnist import default_fashion_mnist_dir, load_fashion_mnist
from .imdb import DataError, default_imdb_dir, load_imdb
from .shakespeare import default_shakespeare_dir, load_shakespeare
from .text import PAD, UNK, EncodedCorpus, Vocabulary, encode_corpus, tokenize

__all__ = ["DataError", "default_imdb_dir", "load_imdb", "tokenize", "Vocabulary", "EncodedCorpus",
           "encode_corpus", "PAD", "UNK", "bucket_batches", "sorted_batches", "pad_batch",
           "default_fashion_mnist_dir", "load_fashion_mnist", "default_shakespeare_dir",
           "load_shakespeare"]
