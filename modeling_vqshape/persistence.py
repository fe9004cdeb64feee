"""Persistence images of time series, the input of the topology teacher (`modeling_persistence_image.py`).

Computed with GUDHI (`pip install "vqshape[tda]"`), a maintained TDA library, per channel:

1. `sublevel_diagram`: the 0-dimensional persistence diagram of the sublevel-set filtration of the series (the lower-
   star filtration of the path graph, GUDHI's `CubicalComplex(vertices=...)`): a component is born at each local
   minimum and dies, when it merges with an older one, at the value of the maximum between them (elder rule). The one
   component that never dies (born at the global minimum) is given the series' maximum as its death, so its
   persistence is the range. This is the usual filtration of a 1-D signal; Jeon et al. (2024) distil persistence
   images of the series into a time-series student in the same way.
2. `persistence_images`: each channel is standardised first (its mean and standard deviation; a constant channel
   stays 0), so that images of series of any scale share one grid; its diagram in (birth, persistence) coordinates
   becomes a persistence image (Adams et al., JMLR 2017, GUDHI's `PersistenceImage`): Gaussians of `bandwidth`
   weighted by persistence (the linear ramp), evaluated on a `resolution x resolution` grid spanning births
   `birth_range` and persistences `[0, max_persistence]`; points outside that window add what their Gaussian reaches.

Images: `(batch_size, num_channels, resolution, resolution)`, rows = persistence (increasing), columns = birth.
"""

import numpy as np
import torch


def _gudhi():
    try:
        import gudhi
        import gudhi.representations
    except ImportError as error:
        raise ImportError('persistence images need GUDHI: pip install "vqshape[tda]" (or gudhi)') from error
    return gudhi


def sublevel_diagram(series) -> np.ndarray:
    """The 0-dimensional sublevel-set persistence diagram of a 1-D series, `(num_points, 2)` (birth, death), sorted
    by birth; the essential component dies at the series' maximum. Points of zero persistence are left out."""
    values = np.asarray(series, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("a persistence diagram needs a non-empty series of finite values.")
    complex_ = _gudhi().CubicalComplex(vertices=values)
    complex_.compute_persistence(homology_coeff_field=2, min_persistence=0.0)
    diagram = np.asarray(complex_.persistence_intervals_in_dimension(0), dtype=np.float64).reshape(-1, 2)
    diagram[np.isinf(diagram[:, 1]), 1] = values.max()
    diagram = diagram[diagram[:, 1] > diagram[:, 0]]
    return diagram[np.lexsort((diagram[:, 1], diagram[:, 0]))]


def persistence_image(diagram: np.ndarray, resolution: int = 16, bandwidth: float = 0.25,
                      birth_range=(-3.0, 3.0), max_persistence: float = 6.0) -> np.ndarray:
    """The persistence image of a diagram `(num_points, 2)` (birth, death), `(resolution, resolution)` float32: rows
    are persistence from 0 to `max_persistence`, columns birth over `birth_range`, each pixel the persistence-weighted
    sum of Gaussians of `bandwidth` centred on the points (birth, death - birth)."""
    from gudhi.representations import PersistenceImage

    _gudhi()
    imager = PersistenceImage(bandwidth=bandwidth, weight=lambda point: point[1], resolution=[resolution, resolution],
                              im_range=[birth_range[0], birth_range[1], 0.0, max_persistence])
    diagram = np.asarray(diagram, dtype=np.float64).reshape(-1, 2)
    if len(diagram) == 0:
        return np.zeros((resolution, resolution), dtype=np.float32)
    # GUDHI flattens "persistence birth -> (persistence birth)"
    return imager.fit_transform([diagram])[0].reshape(resolution, resolution).astype(np.float32)


def persistence_images(past_values, resolution: int = 16, bandwidth: float = 0.25, birth_range=(-3.0, 3.0),
                       max_persistence: float = 6.0) -> torch.Tensor:
    """Persistence images of every channel of `past_values` `(batch_size, sequence_length)` or `(batch_size,
    sequence_length, num_channels)`, each channel standardised first: `(batch_size, num_channels, resolution,
    resolution)` float32, on the CPU (no gradient: the diagram is combinatorial)."""
    values = torch.as_tensor(past_values).detach().cpu().double()
    if values.ndim == 2:  # univariate: "batch time -> batch time 1"
        values = values.unsqueeze(-1)
    if values.ndim != 3:
        raise ValueError(f"past_values must be (batch_size, sequence_length[, channels]), got {tuple(values.shape)}.")
    mean, std = values.mean(1, keepdim=True), values.std(1, unbiased=False, keepdim=True)
    standardised = ((values - mean) / torch.where(std > 1e-8, std, torch.ones_like(std))).numpy()
    batch_size, _, num_channels = standardised.shape
    images = np.stack([
        np.stack([persistence_image(sublevel_diagram(standardised[row, :, channel]), resolution, bandwidth,
                                    birth_range, max_persistence) for channel in range(num_channels)])
        for row in range(batch_size)
    ]) if batch_size else np.zeros((0, num_channels, resolution, resolution), dtype=np.float32)
    return torch.from_numpy(images)


__all__ = ["persistence_image", "persistence_images", "sublevel_diagram"]
