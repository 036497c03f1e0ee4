"""Feature code: the input contract, the synthetic world, and the feature functions of every model (no MLflow, no HTTP).

Arrow's default allocator (mimalloc) keeps the memory it has freed for reuse, so after loading millions of rows a
process stays gigabytes above what it holds (measured on 4.8M order lines: 2.64 GiB resident after loading, of
which 0.78 GiB were the tables). The system allocator gives it back (1.77 GiB, then 0.98 GiB after
``features.contract.release_memory``), so the feature code uses it unless ``ARROW_DEFAULT_MEMORY_POOL`` says
otherwise. Dask workers import this package too, so they use it as well.
"""

import os

if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
    import pyarrow as _pa

    _pa.set_memory_pool(_pa.system_memory_pool())
