"""Gradient aggregators: map the Gramian G = JJᵀ of m objective gradients to coefficients c (d = Σ_i c_i g_i).

```python
from mollm.aggregators import get
agg = get("ds_mgda")            # get("linear", weights=[0.5, 1, 1]); get("pcgrad", seed=0); get("cagrad", c=0.4)
c = agg(gramian)                # (m, m) symmetric PSD tensor -> (m,) tensor, same dtype and device
state = agg.state_dict()        # JSON-safe; {} for stateless aggregators. agg.load_state_dict(state) resumes exactly
```
Available (see each module's docstring for the source and the exact formula):

* ``linear``, ``mgda``, ``ds_mgda``, ``pcgrad``, ``cagrad``, ``upgrad``;
* the conflict-aware unlearning family: ``gru`` (gradient-rectified unlearning, arXiv 2503.09117; stateful with
  ``ema_decay``), ``ngdiff`` (normalised gradient difference, arXiv 2410.22086);
* from multi-task learning: ``aligned_mtl`` (Senushkin et al. 2023), ``dualproj`` (TorchJD's DualProj),
  ``imtl_g`` (Liu et al. 2021), ``nash_mtl`` (Navon et al. 2022; stateful with ``update_weights_every`` > 1).

Stateful: ``gru`` (with ``ema_decay``), ``nash_mtl`` and ``pcgrad`` (its random generator).

Any TorchJD Gramian weighting works as ``torchjd:NAME`` (``get("torchjd:UPGradWeighting")``, ``from_torchjd(weighting)``;
module ``mollm.aggregators.torchjd``, needs ``pip install mollm[torchjd]``).
"""

from mollm.aggregators import (  # noqa: F401  (registers them)
    aligned_mtl,
    cagrad,
    ds_mgda,
    dualproj,
    gru,
    imtl_g,
    linear,
    mgda,
    nash_mtl,
    ngdiff,
    pcgrad,
    upgrad,
)
from mollm.aggregators.aligned_mtl import AlignedMTL
from mollm.aggregators.base import Aggregator, AggregatorOptions, available, get, register, seeded_options
from mollm.aggregators.cagrad import CAGrad
from mollm.aggregators.ds_mgda import DSMGDA
from mollm.aggregators.dualproj import DualProj
from mollm.aggregators.gru import GRU
from mollm.aggregators.imtl_g import IMTLG
from mollm.aggregators.linear import Linear
from mollm.aggregators.mgda import MGDA
from mollm.aggregators.nash_mtl import NashMTL
from mollm.aggregators.ngdiff import NGDiff
from mollm.aggregators.pcgrad import PCGrad
from mollm.aggregators.torchjd import TorchJD, from_torchjd
from mollm.aggregators.upgrad import UPGrad

__all__ = [
    "Aggregator",
    "AggregatorOptions",
    "AlignedMTL",
    "CAGrad",
    "DSMGDA",
    "DualProj",
    "GRU",
    "IMTLG",
    "Linear",
    "MGDA",
    "NGDiff",
    "NashMTL",
    "PCGrad",
    "TorchJD",
    "UPGrad",
    "available",
    "from_torchjd",
    "get",
    "register",
    "seeded_options",
]
