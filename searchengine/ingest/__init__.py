"""Ingestion: folders -> changed files -> decode -> embed -> catalog + index, as stages.

Each stage is a function of a batch, so an engine can map it (`searchengine index` runs them
with the local backend; a cluster backend maps the same functions):

- `plan` (the driver): walk the roots and compare them with the catalog (`scan.plan`): files to
  embed, files gone, files already known to be bad;
- `decode` (CPU workers): file -> content hash, metadata and model pixels, or the reason it is
  not an image (`decode.decode_file`);
- `embed` (the model): decoded files -> unit vectors, reusing stored vectors by content hash
  (`commit.embed_batch`);
- `commit` (one writer): a batch -> one catalog transaction, then the vector space
  (`commit.commit_batch`), so an interrupted run resumes after its last finished batch.

`local.decoded_batches` is the local backend: DataLoader worker processes that decode beside
the model; `commit.embed_files` drives the decode, embed and commit stages over it.
"""
