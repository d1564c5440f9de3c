"""Embeddings in and out in clip-retrieval's format (`img_emb/`, `text_emb/`, `metadata/`), the
format autofaiss, clip-retrieval and `embedding-reader` read: `writer.export_folder` and
`reader.import_folder`, behind `Engine.export_embeddings` and `Engine.import_embeddings`."""
