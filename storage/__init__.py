"""``securemesh.storage``: sharded, encrypted edge storage (ARCHITECTURE.md §5).

Objects are encrypted on the writer, erasure-coded k-of-n across edge nodes and
described by a signed manifest. This package is filled in by the storage issue;
it exists now so that the import name and packaging are fixed and tested.
"""

__all__: list[str] = []
