"""Preprocessing of 2D brain scans: near-white background cleanup, crop to the brain (Otsu or
adaptive threshold, largest component, padded box), per-channel intensity CDFs, MUSICA contrast
amplification (JAX), k-means intensity clusters with k chosen by WCSS / BCSS / silhouette /
Calinski-Harabasz (JAX), colourised cluster masks, and a folder command:

    python -m jaxdiff.preprocess --input DIR --output DIR

Modules: `imageio` (Pillow decoding), `cleanup`, `crop` (scikit-image), `musica`, `kmeans`, `report`
(matplotlib), `batch` (the folder pipeline); import them as
`from jaxdiff.preprocess import crop, kmeans, musica`.
"""
