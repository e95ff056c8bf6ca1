"""zstd for stored records, with dictionaries trained from the node's own records.

Small records (a chat turn is a few hundred bytes) compress poorly on their own; a dictionary
trained on earlier records holds the shared vocabulary (JSON keys, chat phrasing) and roughly
doubles the ratio. Dictionaries are versioned: id 0 means "no dictionary", ids 1, 2, ... are rows of
the store's `dictionaries` table, and every record names the id it was compressed with, so records
stay readable after a newer dictionary is trained. Frames are written without the 4-byte magic
number and without a checksum (SQLite pages have their own integrity; the store checks the JSON).

zstandard's compressor and decompressor objects must not be used by two threads at once (a shared
one crashed the process in a 4-thread check), and a node's server reads its store from many
threads: each thread gets its own, built once per dictionary.
"""

from __future__ import annotations

import threading

import zstandard as zstd

NO_DICTIONARY = 0


class Codec:
    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._dicts: dict[int, bytes] = {}
        self._generation = 0          # bumped when a dictionary is added: per-thread caches reset
        self._local = threading.local()

    def _cache(self) -> threading.local:
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.generation = self._generation
            local.compressors = {}
            local.decompressors = {}
        return local

    @staticmethod
    def _params(level: int) -> zstd.ZstdCompressionParameters:
        return zstd.ZstdCompressionParameters.from_level(
            level, format=zstd.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_content_size=1,
            write_dict_id=0)

    def add_dictionary(self, dict_id: int, data: bytes) -> None:
        self._dicts[dict_id] = bytes(data)
        self._generation += 1

    def forget_dictionary(self, dict_id: int) -> None:
        """Drop a dictionary whose row was rolled back (nothing committed can name it)."""
        if self._dicts.pop(dict_id, None) is not None:
            self._generation += 1

    def has(self, dict_id: int) -> bool:
        return dict_id == NO_DICTIONARY or dict_id in self._dicts

    @property
    def latest(self) -> int:
        return max(self._dicts, default=NO_DICTIONARY)

    def compressor(self, dict_id: int, level: int | None = None) -> zstd.ZstdCompressor:
        level = level or self.level
        compressors = self._cache().compressors
        compressor = compressors.get((dict_id, level))
        if compressor is None:
            params = self._params(level)
            dictionary = None
            if dict_id:
                # A dictionary digested once for these parameters, not at every compress() call.
                dictionary = zstd.ZstdCompressionDict(self._dicts[dict_id], dict_type=zstd.DICT_TYPE_AUTO)
                dictionary.precompute_compress(compression_params=params)
            compressor = zstd.ZstdCompressor(dict_data=dictionary, compression_params=params)
            compressors[(dict_id, level)] = compressor
        return compressor

    def decompressor(self, dict_id: int) -> zstd.ZstdDecompressor:
        decompressors = self._cache().decompressors
        decompressor = decompressors.get(dict_id)
        if decompressor is None:
            if dict_id and dict_id not in self._dicts:
                raise KeyError(f"record compressed with dictionary {dict_id}, which the store does not hold")
            dictionary = zstd.ZstdCompressionDict(self._dicts[dict_id], dict_type=zstd.DICT_TYPE_AUTO) \
                if dict_id else None
            decompressor = zstd.ZstdDecompressor(dict_data=dictionary, format=zstd.FORMAT_ZSTD1_MAGICLESS)
            decompressors[dict_id] = decompressor
        return decompressor

    def compress(self, data: bytes, dict_id: int, level: int | None = None) -> bytes:
        return self.compressor(dict_id, level).compress(data)

    def decompress(self, blob: bytes, dict_id: int) -> bytes:
        return self.decompressor(dict_id).decompress(blob)


def train_dictionary(samples: list[bytes], size: int, dict_id: int) -> bytes:
    """A zstd dictionary of at most `size` bytes (and at most a twentieth of the samples' bytes)."""
    total = sum(len(s) for s in samples)
    size = max(1024, min(size, total // 20))
    trained = zstd.train_dictionary(size, samples, dict_id=dict_id, level=3)
    return trained.as_bytes()
