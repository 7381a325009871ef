"""The server: the watch loop, the config source, the store and what a run record keeps."""
