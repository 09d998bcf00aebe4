"""Audio where datasets keep it: inside Parquet shards (a binary `audio` column, or the Hugging
Face Audio struct {bytes, path}) and in WebDataset tar shards.

- refs.py: where such audio is (a Parquet cell, a tar member) and its text form in Item.path;
- files.py: embedded audio as a file for the decoders (bytes in memory, a member read in place);
- parquet_cells.py: the workers' reads of the cells a batch needs, by shard and row group;
- tar_index.py: a tar shard's samples, from its headers (WebDataset keys, json/txt metadata).
"""
