"""Gradient aggregators: map the Gramian G = JJᵀ of m objective gradients to coefficients c (d = Σ_i c_i g_i).

```python
from mollm.aggregators import get
agg = get("ds_mgda")            # get("linear", weights=[0.5, 1, 1]); get("pcgrad", seed=0); get("cagrad", c=0.4)
c = agg(gramian)                # (m, m) symmetric PSD tensor -> (m,) tensor, same dtype and device
```
Available: ``linear``, ``mgda``, ``ds_mgda``, ``pcgrad``, ``cagrad``, ``upgrad`` (see each module's docstring), and
any TorchJD Gramian weighting as ``torchjd:NAME`` (``get("torchjd:UPGradWeighting")``, ``from_torchjd(weighting)``;
module ``mollm.aggregators.torchjd``, needs ``pip install mollm[torchjd]``).
"""

from mollm.aggregators import cagrad, ds_mgda, linear, mgda, pcgrad, upgrad  # noqa: F401  (registers them)
from mollm.aggregators.base import Aggregator, AggregatorOptions, available, get, register
from mollm.aggregators.cagrad import CAGrad
from mollm.aggregators.ds_mgda import DSMGDA
from mollm.aggregators.linear import Linear
from mollm.aggregators.mgda import MGDA
from mollm.aggregators.pcgrad import PCGrad
from mollm.aggregators.torchjd import TorchJD, from_torchjd
from mollm.aggregators.upgrad import UPGrad

__all__ = [
    "Aggregator",
    "AggregatorOptions",
    "CAGrad",
    "DSMGDA",
    "Linear",
    "MGDA",
    "PCGrad",
    "TorchJD",
    "UPGrad",
    "available",
    "from_torchjd",
    "get",
    "register",
]
