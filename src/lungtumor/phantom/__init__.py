"""Synthetic chest CT with lung tumours, written in the MSD Task06_Lung layout.

This is the project's built-in demo data: every case is drawn from a seed, so the same seed
always gives the same bytes, and no download is needed. The anatomy is analytic (ellipses,
paraboloids, tubes) and is rendered one axial slice at a time with vectorised NumPy; nothing
loops over voxels (a SMALL case takes ~0.4 s, a FULL 512x512x~250 case ~2 s on 2 cores).

Geometry: ``Volume.array`` is ``[i, j, k]`` with an MSD-like affine ``diag(-sx, +sy, +sz)``
(nibabel axis codes ``('L', 'A', 'S')``): ``i`` runs towards the patient's left, ``j`` towards
anterior, ``k`` towards superior, so ``k = 0`` is the most inferior slice. Arrays are
Fortran-ordered (axial slices contiguous), as nibabel returns them. Internally the
anatomy is described in a body frame in mm: ``u`` towards the patient's left, ``v`` anterior,
``w`` superior (``w = 0`` at slice 0), with ``u = v = 0`` at the centre of the body outline.

Anatomy and Hounsfield units (base value; a smooth texture and Gaussian CT noise,
sigma 12-25 HU, are added everywhere):

======================  =========  =====================================================
tissue                   HU         where
======================  =========  =====================================================
air                      -1000      outside the body, trachea, main bronchi, stomach gas
patient table            150        thin slab under the back
subcutaneous fat         -100       outer band of the body outline (6-20 mm), an ellipse
                                    in front and a flatter superellipse behind
muscle                   45         chest/abdominal wall between the fat and an elliptical
                                    rib cage (thick paraspinal muscles behind), neck
mediastinal fat          -90        between the lungs, around heart and great vessels
lungs                    -880..-830 two lungs, widest near the base, narrowing to the
                                    apices, on a two-dome diaphragm (right dome higher);
                                    dependent (posterior) lung is denser by up to ~50 HU
pulmonary vessels        40         an artery and a vein tree per lung from the hilum,
                                    space-filling (recursive split of random lung points),
                                    radii by Murray's law so they thin towards the
                                    periphery, partial-volume blended into the lung
heart, aorta, SVC        40         heart (rotated ellipsoid, left-anterior), ascending
                                    aorta, arch, descending aorta left of the spine
vertebra                 300 / 900  cancellous body / cortical rim, discs (85), spinal
                                    canal (CSF 12), posterior arch and processes
ribs, sternum, scapula   300 / 900  oblique rib arcs in the chest wall (descending
                                    anteriorly), costal cartilage 120 anteriorly
liver / spleen           60 / 50    below the diaphragm (the 20-30 most inferior slices of
kidneys / stomach        35 / 15    a SMALL case are abdomen with no or little lung)
bowel and fat            25 / -100  rest of the abdomen
tumours                  15..55     0-3 lobulated masses (union of overlapping ellipsoids
                                    with a noisy boundary) inside the lungs, some abutting
                                    the chest wall or mediastinum; the first is 20-50 mm,
                                    others 3-30 mm but at least ~3.5 in-plane voxels
======================  =========  =====================================================

The label is 1 exactly where a tumour replaced lung tissue, 0 elsewhere. Tumours never reach
the :data:`~lungtumor.config.SEED_SKIP_INFERIOR_SLICES` most inferior slices, which the seed's
preprocessing drops. Vessels are as bright as tumours, so a model must learn shape (tubes
versus blobs), not a threshold.

Modules, in import order (each imports only those above it):

- :mod:`~lungtumor.phantom.grid`: phantom sizes and the voxel grid / body frame of a case.
- :mod:`~lungtumor.phantom.anatomy`: the random anatomy of a case and the analytic lung.
- :mod:`~lungtumor.phantom.tissues`: tissue classes, their HU, the per-slice class painter.
- :mod:`~lungtumor.phantom.vessels`: pulmonary vessel trees.
- :mod:`~lungtumor.phantom.tumours`: lobulated tumours.
- :mod:`~lungtumor.phantom.render`: classes to HU with texture, blur and noise.
- :mod:`~lungtumor.phantom.dataset`: :func:`make_case` and :func:`write_phantom_dataset`.
"""

from lungtumor.phantom.dataset import PHANTOM_SIZES, case_ids, make_case, write_phantom_dataset

__all__ = ["PHANTOM_SIZES", "case_ids", "make_case", "write_phantom_dataset"]
