"""ETL: loaders, cleaning, token-aware chunking, tiktoken encodings, Parquet tables and storage URIs."""
