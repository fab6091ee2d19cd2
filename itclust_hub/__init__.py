"""itclust-hub: pretrained ItClust reference models for single-cell RNA-seq.

>>> import itclust_hub as ih
>>> model = ih.ItClust.from_pretrained("pancreas-human")
>>> result = model.transfer(adata)
>>> result.labels
>>> ih.name_clusters(result, level="coarse").labels  # name again, without fine-tuning
"""

__version__ = "0.1.0"

from ._errors import ItClustError, ItClustWarning
from ._io import read_query
from ._model import ItClust
from ._naming import name_clusters
from ._preprocess import Recipe
from ._hub import list_references
from ._result import TransferResult
from ._train import train_reference
from ._transfer import FineTuning

__all__ = ["FineTuning", "ItClust", "ItClustError", "ItClustWarning", "Recipe", "TransferResult", "list_references", "name_clusters", "read_query", "train_reference", "__version__"]
