"""Vector indexes: FAISS kinds, and the spaces (one per model x modality) kept in step
with the catalog."""
