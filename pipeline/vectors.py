"""The embeddings part of the run report: what a run's `embedding` column holds, in bounded
memory, whatever the run's size.

Every vector's norm is counted (min, mean, max); a uniform sample of at most `SAMPLE_SIZE`
vectors (a fixed-seed bottom-k sample, so the same run gives the same report) is kept for the
rest: the histogram of norms, a 2-D projection by PCA (numpy's SVD of the centred sample),
and the near-duplicate pairs, the pairs of sampled images whose cosine similarity is at
least `NEAR_DUPLICATE_COSINE`. The page says how many vectors were sampled of how many.
"""
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.charts import column_chart, E, table, thumbnail_scatter

SAMPLE_SIZE = 2000
NEAR_DUPLICATE_COSINE = 0.95
MAX_PAIRS = 12
SCATTER_THUMBNAILS = 80
NORM_BINS = 20
PAIR_THUMBNAIL_PX = 96
EMBEDDING_COLUMN = "embedding"


class Pair(NamedTuple):
    cosine: float
    first: str
    second: str


class VectorTally:
    """Norms of every vector and a fixed-size uniform sample of (key, vector)."""

    def __init__(self, sample_size: int = SAMPLE_SIZE, seed: int = 0):
        self.sample_size = sample_size
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.other_lengths = 0  # vectors of another length than the first batch's commonest
        self.dimension: Optional[int] = None
        self.norm_min, self.norm_max, self.norm_sum = np.inf, 0.0, 0.0
        self.keys = np.empty(0, dtype=object)
        self.vectors = np.empty((0, 0), dtype=np.float32)
        self.priority = np.empty(0)

    def add(self, batch: pa.RecordBatch):
        """Count and sample the vectors of one record batch (rows without one are left out)."""
        if EMBEDDING_COLUMN not in batch.schema.names:
            return
        column = batch.column(EMBEDDING_COLUMN)
        lengths = pc.list_value_length(column)
        present = pc.fill_null(pc.is_valid(column), False)
        if self.dimension is None:
            first = pc.filter(lengths, present).to_numpy()
            if not len(first):
                return
            self.dimension = int(np.bincount(first).argmax())  # the commonest length
        same = pc.and_(present, pc.fill_null(pc.equal(lengths, self.dimension), False))
        self.other_lengths += int(pc.sum(present).as_py() or 0) - int(pc.sum(same).as_py() or 0)
        chosen = pc.filter(column, same)
        if not len(chosen):
            return
        vectors = chosen.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = vectors.reshape(len(chosen), self.dimension)
        keys = pc.filter(batch.column("key"), same).to_numpy(zero_copy_only=False)
        norms = np.linalg.norm(vectors, axis=1)
        self.count += len(vectors)
        self.norm_min = min(self.norm_min, float(norms.min()))
        self.norm_max = max(self.norm_max, float(norms.max()))
        self.norm_sum += float(norms.sum())
        self.keep(keys, vectors)

    def keep(self, keys: np.ndarray, vectors: np.ndarray):
        priority = np.concatenate([self.priority, self.rng.random(len(keys))])
        if not len(self.keys):
            self.vectors = np.empty((0, vectors.shape[1]), dtype=np.float32)
        keys = np.concatenate([self.keys, keys])
        vectors = np.concatenate([self.vectors, vectors])
        if len(priority) > self.sample_size:
            kept = np.argpartition(priority, self.sample_size)[:self.sample_size]
            kept.sort()
            priority, keys, vectors = priority[kept], keys[kept], vectors[kept]
        self.priority, self.keys, self.vectors = priority, keys, vectors


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def near_duplicates(keys: np.ndarray, vectors: np.ndarray,
                    threshold: float = NEAR_DUPLICATE_COSINE) -> Tuple[int, List[Pair]]:
    """(how many pairs of the sample have a cosine similarity >= `threshold`, up to
    `MAX_PAIRS` of them most similar first: when there are more, the most similar half and
    the least similar half, so that the borderline pairs are seen too)."""
    if len(vectors) < 2:
        return 0, []
    unit = unit_rows(vectors.astype(np.float64))
    cosine = unit @ unit.T
    first, second = np.triu_indices(len(vectors), k=1)
    similar = cosine[first, second]
    above = np.nonzero(similar >= threshold)[0]
    ranked = above[np.argsort(-similar[above], kind="stable")]
    best = ranked if len(ranked) <= MAX_PAIRS else np.concatenate(
        [ranked[:MAX_PAIRS // 2], ranked[-(MAX_PAIRS - MAX_PAIRS // 2):]])
    return len(above), [Pair(float(similar[i]), str(keys[first[i]]), str(keys[second[i]]))
                        for i in best]


def projection(vectors: np.ndarray) -> Tuple[np.ndarray, float]:
    """(the sample's coordinates on its first two principal components, the share of the
    variance they hold)."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred @ components[:2].T
    if coordinates.shape[1] < 2:
        coordinates = np.column_stack([coordinates, np.zeros(len(coordinates))])
    total = float((singular ** 2).sum())
    share = float((singular[:2] ** 2).sum()) / total if total else 0.0
    return coordinates, share


def norm_histogram(norms: np.ndarray) -> List[Tuple[str, int]]:
    low, high = float(norms.min()), float(norms.max())
    if high - low < 1e-9 * max(1.0, high):
        return [(f"{low:.3g}", len(norms))]
    counts, edges = np.histogram(norms, bins=NORM_BINS, range=(low, high))
    return [(f"{edges[i]:.3g}", int(n)) for i, n in enumerate(counts)]


Thumbnail = Callable[[str, int], Optional[str]]


def section(tally: VectorTally, thumbnail: Thumbnail) -> str:
    """The report's embeddings section ('' for a run without vectors)."""
    if not tally.count:
        return ""
    sampled = len(tally.keys)
    mean = tally.norm_sum / tally.count
    parts = [
        "<h2>Embeddings</h2>",
        f'<p>{tally.count:,} vectors of {tally.dimension:,} numbers; norm min '
        f'{tally.norm_min:.4g}, mean {mean:.4g}, max {tally.norm_max:.4g}. '
        + (f"The plots below use all {sampled:,}." if sampled == tally.count else
           f"The plots and pairs below use a uniform sample of {sampled:,} of the "
           f"{tally.count:,} vectors.") + "</p>",
    ]
    if tally.other_lengths:
        parts.append(f'<p class="bad-text">{tally.other_lengths:,} vectors had another length '
                     'and are left out</p>')
    parts += ["<h3>Vector norms</h3>",
              column_chart(norm_histogram(np.linalg.norm(tally.vectors, axis=1)),
                           "vectors by norm", "vectors", label_every=4, x_title="norm")]
    parts += projection_html(tally, thumbnail)
    parts += pairs_html(tally, thumbnail)
    return "".join(parts)


def projection_html(tally: VectorTally, thumbnail: Thumbnail) -> List[str]:
    if len(tally.keys) < 3:
        return []
    coordinates, share = projection(tally.vectors)
    shown = min(SCATTER_THUMBNAILS, len(tally.keys))
    points = [(float(x), float(y), thumbnail(str(key), 48) if i < shown else None, str(key))
              for i, ((x, y), key) in enumerate(zip(coordinates, tally.keys))]
    return ["<h3>2-D projection (PCA)</h3>",
            thumbnail_scatter(points[shown:] + points[:shown], "embeddings projected on "
                              "their first two principal components"),
            f'<p class="muted">each image at its coordinates on the sample\'s first two '
            f'principal components ({share:.0%} of its variance); '
            + ("each drawn as its thumbnail" if shown == len(points) else
               f"{shown:,} drawn as thumbnails, the other {len(points) - shown:,} as dots")
            + '</p>']


def pairs_html(tally: VectorTally, thumbnail: Thumbnail) -> List[str]:
    found, pairs = near_duplicates(tally.keys, tally.vectors)
    head = f"<h3>Near-duplicate pairs (cosine similarity ≥ {NEAR_DUPLICATE_COSINE:g})</h3>"
    if not pairs:
        return [head, f'<p class="empty">none among the {len(tally.keys):,} sampled '
                      'vectors</p>']
    rows = []
    for pair in pairs:
        cells = []
        for key in (pair.first, pair.second):
            uri = thumbnail(key, PAIR_THUMBNAIL_PX)
            picture = (f'<img src="{uri}" alt="{E(key)}">' if uri
                       else '<div class="missing">not readable now</div>')
            cells.append(f'<figure>{picture}<figcaption class="key">{E(key)}</figcaption>'
                         '</figure>')
        rows.append((f"{pair.cosine:.4f}", *cells))
    shown = (f"the {len(pairs) // 2} most and the {len(pairs) - len(pairs) // 2} least "
             "similar of them" if found > len(pairs) else "all")
    return [head, f'<p>{found:,} pairs among the {len(tally.keys):,} sampled vectors; '
                  f'{shown} shown</p>',
            f'<div class="pairs">{table(("cosine", "image", "image"), rows)}</div>']
