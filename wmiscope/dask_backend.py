"""`--dask ADDRESS`: the host-pair split of dissectors.parallel run on a Dask cluster.

Each shard is one task: it reads the whole capture (every worker must see it at the
same path: a shared file system or the same copy on every machine), analyses the
connections of its host pairs and returns its keyed output, compressed. The client
merges the shards' outputs in the single run's order, exactly as the local workers'
are merged. What scales: the shards (host pairs) spread over the cluster's workers;
what does not: each shard's read of the capture, and the merge on the client.

Needs the optional dependency `distributed` (pip install 'wmiscope[dask]').
"""

from __future__ import annotations

import pickle
import zlib

from .dissectors import parallel


def _shard_task(source, shard, shards, nonce, analysis_kwargs, make_renderer):
    """Runs on a Dask worker: the shard's batches, each pickled and compressed, and its stats."""
    gen = parallel.shard_stream(source, shard, shards, nonce, analysis_kwargs, make_renderer, batch=4096)
    chunks = []
    while True:
        try:
            batch = next(gen)
        except StopIteration as stop:
            return chunks, stop.value, parallel.cache_stats()
        chunks.append(zlib.compress(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL), 1))


def _batches(chunks):
    for chunk in chunks:
        yield pickle.loads(zlib.decompress(chunk))


class DaskRun:
    """Same interface as parallel.LocalRun: iterate `text()` or `chunks()`, then read `stats` and `cache`."""

    def __init__(self, address: str, source, shards: int, analysis_kwargs: dict, make_renderer):
        from wmiscope.cli import InputError, UsageError

        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--dask needs the 'distributed' package (pip install 'wmiscope[dask]')") from None
        try:
            self.client = Client(address, timeout="10s")
        except OSError as e:
            raise InputError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        if shards <= 0:
            shards = max(1, len(self.client.scheduler_info().get("workers", {})))
        self.nonce = parallel.new_nonce()
        self.futures = [self.client.submit(_shard_task, source, k, shards, self.nonce, analysis_kwargs,
                                           make_renderer, pure=False, key=f"wmiscope-shard-{self.nonce}-{k}")
                        for k in range(shards)]
        self.stats = None
        self.cache = []

    def text(self):
        yield from self._merged(parallel.merge)

    def chunks(self):
        yield from self._merged(parallel.merge_bytes)

    def _merged(self, merge):
        results = self.client.gather(self.futures)
        yield from merge([_batches(chunks) for chunks, _, _ in results], self.nonce)
        self.stats = parallel.merge_stats([stats for _, stats, _ in results])
        self.cache = [cache for _, _, cache in results]

    def close(self) -> None:
        self.client.close()
