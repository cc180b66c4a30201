"""Corpora, tokenizers, packing into blocks, and splits across clients."""

from flowerbed.data.blocks import Blocks
from flowerbed.data.documents import DataError, Domain
from flowerbed.data.prepare import ClientShard, FederatedSplits, prepare_splits
from flowerbed.data.tokenizer import byte_tokenizer, load_tokenizer

__all__ = [
    "Blocks",
    "ClientShard",
    "DataError",
    "Domain",
    "FederatedSplits",
    "byte_tokenizer",
    "load_tokenizer",
    "prepare_splits",
]
